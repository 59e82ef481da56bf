"""``bitfab sim``: prove the generated hardware bit-exact against the golden model.

Runs :func:`bitfab.sim.run.simulate_model`, prints a verdict table and exits non-zero on any
mismatch, naming the first mismatching output with the expected and actual value of each element.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from bitfab.errors import BitfabError, VerificationError

from .ui import (
    SEED,
    Stages,
    check_output_file,
    console,
    emit_json,
    hardware_options,
    label,
    load_array,
    load_model,
    parse_fold,
)

__all__ = ["sim"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--simulator", type=click.Choice(["auto", "amaranth", "verilator", "icarus"]),
              default="auto", show_default=True,
              help="auto: Amaranth when it is estimated to take at most a minute, else "
                   "Verilator (a build of minutes, cached).")
@click.option("--netlist", type=click.Choice(["ice40", "ecp5"]),
              help="Synthesize with yosys and simulate the mapped netlist with the cell models.")
@click.option("--vectors", type=click.IntRange(1, 10**7), default=1000, show_default=True,
              help="Number of random input vectors (ignored with --inputs).")
@click.option("--inputs", type=click.Path(dir_okay=False),
              help="A .npy array of real input values (e.g. the test set).")
@click.option("--lengths", type=click.Path(dir_okay=False),
              help="A .npy array of sequence lengths (sequence models; default all steps).")
@click.option("--layer", type=click.IntRange(min=0),
              help="Simulate one layer instead of the whole network.")
@hardware_options
@click.option("--stall", type=click.FloatRange(0, 0.95), default=0.2, show_default=True,
              help="Chance per cycle of a producer bubble and of a consumer stall.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--bench", type=click.Choice(["auto", "fast", "cocotb"]), default="auto",
              show_default=True,
              help="Verilator/Icarus bench: fast (stimulus, stalls and capture inside the "
                   "simulator), cocotb (Python per cycle), auto: fast unless --vcd.")
@click.option("--vcd", type=click.Path(dir_okay=False), help="Write a waveform to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(model, simulator, netlist, vectors, inputs, lengths, layer, fold, pipeline, stall, seed,
        bench, vcd, as_json):
    """Simulate the generated hardware and compare it bit for bit with the golden model."""
    from bitfab.sim.run import simulate_model

    if vcd is not None:
        vcd = str(check_output_file(vcd, "--vcd"))
    x = load_array(inputs, "inputs") if inputs else None
    steps = load_array(lengths, "lengths") if lengths else None
    if steps is not None and x is None:
        raise BitfabError("--lengths needs --inputs")
    if fold is not None:  # a per-layer fold is checked against the model before any work
        fold = parse_fold(fold, load_model(model), pipeline, layer)
    con = console()
    # with --json the stages go to stderr: stdout carries the one JSON object only
    with Stages(console(stderr=as_json), transient=as_json) as stages:
        run = simulate_model(model, simulator=simulator, netlist=netlist, vectors=vectors,
                             inputs=x, lengths=steps, layer=layer, fold=fold, pipeline=pipeline,
                             stall=stall, seed=seed, vcd=vcd, bench=bench,
                             progress=stages)
    if as_json:
        emit_json(run.to_json())
    else:
        from rich.table import Table
        table = Table(title=f"bitfab sim — {label(model)}")
        for col in ("simulator", "design", "vectors", "mismatches", "cycles", "cycles/s",
                    "build s"):
            table.add_column(col, justify="left" if col in ("simulator", "design") else "right")
        table.add_row(run.simulator + (f" ({run.netlist} netlist, {run.flow})" if run.netlist
                                       else ""),
                      run.design, str(run.vectors),
                      f"[{'green' if run.mismatches == 0 else 'red'}]{run.mismatches}[/]",
                      str(run.cycles), f"{run.cycles_per_s:,.0f}", f"{run.build_s:.1f}")
        con.print(table)
        if run.vcd:
            con.print(f"waveform: {label(run.vcd)}")
    if run.mismatches:
        first = run.first_mismatch or {}
        detail = json.dumps(first)
        if not as_json and isinstance(first.get("expected"), list):
            from rich.table import Table
            table = Table(title=f"first mismatch: vector {first['vector']}")
            for col in ("output", "expected", "actual"):
                table.add_column(col, justify="right")
            for k in first["outputs"][:20]:
                table.add_row(str(k), str(first["expected"][k]), f"[red]{first['actual'][k]}[/]")
            con.print(table)
        raise VerificationError(f"{run.mismatches} of {run.vectors} vectors differ from the "
                                f"golden model; first: {detail}"[:2000])
