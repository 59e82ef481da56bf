"""``bitfab sim``: prove the generated hardware bit-exact against the golden model.

Runs the chosen simulation (Amaranth, or the cocotb bench on Verilator / Icarus, optionally on the
synthesized iCE40 / ECP5 netlist) on random vectors or on real inputs, compares every output with
:mod:`bitfab.sim.golden`, prints a verdict table and exits non-zero on any mismatch, naming the
first mismatching vector with the expected and actual value of each output.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from bitfab.errors import BitfabError, VerificationError

__all__ = ["SimRun", "simulate_model", "sim"]

#: designs with more synapses than this default to Verilator (Amaranth's simulator is ~1000x
#: slower on them)
AMARANTH_MAX_SYNAPSES = 4096


@dataclass
class SimRun:
    """The outcome of :func:`simulate_model`."""

    simulator: str
    netlist: str | None
    vectors: int
    mismatches: int
    cycles: int
    cycles_per_s: float
    wall_s: float
    build_s: float
    first_mismatch: dict | None
    design: str
    vcd: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def random_inputs(fmt, n: int, count: int, seed: int) -> np.ndarray:
    """Draw ``count`` random input vectors of ``n`` values of format ``fmt`` (extremes included:
    the first two vectors are all-minimum and all-maximum)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(count, n))
    if fmt.kind == "bipolar":
        x = np.where(x > 0, 1, -1)
    if count >= 2:
        x[0], x[1] = fmt.min_value, fmt.max_value
    return x


def _generate(model, model_path, layer, fold, pipeline) -> Path:
    """Generate (or reuse) the Verilog and sidecar of the design under test; return the sidecar."""
    from bitfab.hw.verilog import generate
    from bitfab.toolchain import build_dir
    tag = f"{model.fingerprint()[:16]}-l{layer}-f{fold}-p{pipeline}".replace(" ", "")
    out = build_dir("sim", "designs", tag.replace("(", "").replace(")", "").replace(",", "x"))
    sidecars = sorted(out.glob("*.json"))
    if sidecars:
        return sidecars[0]
    facts = generate(model, out, layer=layer, fold=fold, pipeline=pipeline)
    return out / f"{facts['top']}.json"


def _values_mismatch(model, layer, first: dict | None) -> dict | None:
    """Turn a mismatch in hardware codes into one in values (what a user reads)."""
    if not first or not isinstance(first.get("expected"), list):
        return first
    fmt = (model.layers[layer] if layer is not None else model.layers[-1]).out_format
    want = fmt.from_codes(np.array(first["expected"]))
    got = fmt.from_codes(np.array(first["actual"]))
    diff = [int(k) for k in np.flatnonzero(want != got)]
    return {"vector": first["vector"], "outputs": diff,
            "expected": want.tolist(), "actual": got.tolist()}


def simulate_model(model_path, *, simulator: str = "auto", netlist: str | None = None,
                   vectors: int = 1000, inputs: np.ndarray | None = None,
                   layer: int | None = None, fold: tuple[int, int] | None = None,
                   pipeline: int = 1, stall: float = 0.2, seed: int = 0,
                   vcd: str | None = None, progress=None) -> SimRun:
    """Simulate a model (or one layer) and compare it with the golden model; see ``bitfab sim``."""
    from bitfab.model import IntegerModel
    from bitfab.sim import golden

    model = IntegerModel.load(model_path)
    if layer is not None and not 0 <= layer < len(model.layers):
        raise BitfabError(f"--layer must be in 0..{len(model.layers) - 1}, not {layer}")
    first = model.layers[layer if layer is not None else 0]
    if inputs is None:
        x = random_inputs(first.input, first.in_features, vectors, seed)
    else:
        x = golden.check_inputs(IntegerModel((first,)), inputs)
    if netlist and simulator == "amaranth":
        raise BitfabError("--netlist needs --simulator verilator or icarus")
    if simulator == "auto":
        layers = model.layers if layer is None else (first,)
        synapses = sum(la.weights.size for la in layers)
        simulator = "verilator" if netlist or synapses > AMARANTH_MAX_SYNAPSES else "amaranth"
    if simulator == "amaranth":
        return _simulate_amaranth(model, layer, fold, pipeline, x, stall, seed, vcd)
    if simulator not in ("verilator", "icarus"):
        raise BitfabError(f"--simulator must be auto, amaranth, verilator or icarus, "
                          f"not {simulator!r}")
    from .verilog import Design, run_bench
    start = time.perf_counter()
    sidecar = _generate(model, model_path, layer, fold, pipeline)
    gen_s = time.perf_counter() - start
    design = Design.from_sidecar(sidecar)
    result = run_bench(design, model_path, x, simulator=simulator, netlist=netlist,
                       p_bubble=stall, p_stall=stall, seed=seed, vcd=vcd)
    return SimRun(simulator, netlist, result.vectors, result.mismatches, result.cycles,
                  result.cycles_per_s, result.wall_s, gen_s + result.build_s,
                  _values_mismatch(model, layer, result.first_mismatch), design.top, result.vcd)


def _simulate_amaranth(model, layer, fold, pipeline, x, stall, seed, vcd) -> SimRun:
    from bitfab.hw.config import LayerConfig
    from bitfab.hw.layer import build_layer, build_network
    from bitfab.hw.packing import pack, unpack
    from bitfab.sim import golden

    from .amaranth_sim import run_stream

    start = time.perf_counter()
    if layer is None:
        component = build_network(model, fold, pipeline)
        fin, fout = model.layers[0].input, model.layers[-1].out_format
        expected = golden.execute(model, x).output
    else:
        dense = model.layers[layer]
        cfg = LayerConfig.unrolled(dense, pipeline) if fold is None else \
            LayerConfig.folded(dense, fold[0], fold[1], pipeline)
        component = build_layer(cfg)
        fin, fout = dense.input, dense.out_format
        expected = golden.dense_forward(dense, golden.dense_accumulate(dense, x))
    build_s = time.perf_counter() - start
    saved = os.environ.get("BITFAB_VCD")
    if vcd:
        os.environ["BITFAB_VCD"] = str(vcd)
    try:
        start = time.perf_counter()
        result = run_stream(component, pack(x, fin), stall=stall, bubble=stall, seed=seed)
        wall = time.perf_counter() - start
    finally:
        if vcd and saved is None:
            os.environ.pop("BITFAB_VCD", None)
        elif vcd:
            os.environ["BITFAB_VCD"] = saved
    got = unpack(result.outputs, fout, expected.shape[1])
    mismatches, first = golden.compare_outputs(got, expected)
    return SimRun("amaranth", None, len(expected), mismatches, result.cycles,
                  result.cycles / wall if wall else 0.0, wall, build_s, first,
                  type(component).__name__, str(vcd) if vcd else None)


def _fold(text):
    from bitfab.hw.config import parse_fold
    return None if text is None else parse_fold(text)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--simulator", type=click.Choice(["auto", "amaranth", "verilator", "icarus"]),
              default="auto", show_default=True,
              help="auto: Amaranth for small designs, Verilator for large ones.")
@click.option("--netlist", type=click.Choice(["ice40", "ecp5"]),
              help="Synthesize with yosys and simulate the mapped netlist with the cell models.")
@click.option("--vectors", type=click.IntRange(1, 10**7), default=1000, show_default=True,
              help="Number of random input vectors (ignored with --inputs).")
@click.option("--inputs", type=click.Path(dir_okay=False),
              help="A .npy array of real input values (e.g. the test set).")
@click.option("--layer", type=int, help="Simulate one layer instead of the whole network.")
@click.option("--fold", help="Folded architecture: PE,SIMD (default: unrolled).")
@click.option("--pipeline", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Register stage every K adder levels (0: combinational).")
@click.option("--stall", type=click.FloatRange(0, 0.95), default=0.2, show_default=True,
              help="Chance per cycle of a producer bubble and of a consumer stall.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--vcd", type=click.Path(dir_okay=False), help="Write a waveform to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(model, simulator, netlist, vectors, inputs, layer, fold, pipeline, stall, seed, vcd,
        as_json):
    """Simulate the generated hardware and compare it bit for bit with the golden model."""
    from bitfab.cli import console, emit_json, load_array

    x = load_array(inputs, "inputs") if inputs else None
    con = console()
    if as_json:
        run = simulate_model(model, simulator=simulator, netlist=netlist, vectors=vectors,
                             inputs=x, layer=layer, fold=_fold(fold), pipeline=pipeline,
                             stall=stall, seed=seed, vcd=vcd)
    else:
        with con.status(f"simulating {model} ({simulator}"
                        f"{', ' + netlist + ' netlist' if netlist else ''})..."):
            run = simulate_model(model, simulator=simulator, netlist=netlist, vectors=vectors,
                                 inputs=x, layer=layer, fold=_fold(fold), pipeline=pipeline,
                                 stall=stall, seed=seed, vcd=vcd)
    if as_json:
        emit_json(run.to_json())
    else:
        from rich.table import Table
        table = Table(title=f"bitfab sim — {model}")
        for col in ("simulator", "design", "vectors", "mismatches", "cycles", "cycles/s",
                    "build s"):
            table.add_column(col, justify="left" if col in ("simulator", "design") else "right")
        table.add_row(run.simulator + (f" ({run.netlist} netlist)" if run.netlist else ""),
                      run.design, str(run.vectors),
                      f"[{'green' if run.mismatches == 0 else 'red'}]{run.mismatches}[/]",
                      str(run.cycles), f"{run.cycles_per_s:,.0f}", f"{run.build_s:.1f}")
        con.print(table)
        if run.vcd:
            con.print(f"waveform: {run.vcd}")
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
