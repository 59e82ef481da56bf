"""``bitfab synth`` and ``bitfab board run``."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from bitfab.errors import BitfabError, VerificationError

__all__ = ["synth", "board", "board_run", "compare_run"]


def _fold(text):
    from bitfab.hw.config import parse_fold
    return None if text is None else parse_fold(text)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", "board_name", required=True,
              help="icebreaker, ice40-hx8k, ulx3s or orangecrab.")
@click.option("--fold", help="PE,SIMD (default: the most parallel fold that fits the board).")
@click.option("--seed", type=int, default=0, show_default=True, help="nextpnr placement seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Build folder (default: build/synth/MODEL-BOARD).")
@click.option("--clock", "clock_mhz", type=float, default=None,
              help="Design clock in MHz through a PLL (default: the board oscillator).")
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option("--pipeline", type=click.IntRange(0, 64), default=2, show_default=True,
              help="Register stage every K adder levels (0: combinational sums).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def synth(model, board_name, fold, seed, out, clock_mhz, baud, pipeline, as_json):
    """Build a bitstream for a board and report resources and timing."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from bitfab.cli import emit_json, load_model

    from .build import synthesize
    from .report import report_table
    from .targets import get_board

    m = load_model(model)
    target = get_board(board_name)
    fold = _fold(fold)  # bad input fails before any progress display
    con = Console(stderr=as_json, highlight=False)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description:>9}"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=con,
                  transient=as_json) as progress:
        task = progress.add_task("start", detail="", total=None)

        def stage(name, detail=""):
            progress.update(task, description=name, detail=detail)
            if name == "refold":
                con.print(f"[yellow]does not fit:[/] {detail}")

        outcome = synthesize(m, target, fold=fold, seed=seed, out=out,
                             clock_hz=clock_mhz * 1e6 if clock_mhz else None, baud=baud,
                             pipeline=pipeline, progress=stage)
        progress.update(task, description="done", detail=str(outcome.bitstream))
    report = outcome.report
    if as_json:
        emit_json(report)
    else:
        con.print(report_table(report))
        colour = "green" if report["timing_met"] else "red"
        con.print(f"timing: [{colour}]{report['timing']}[/]")
        con.print(f"bitstream: {report['bitstream']} ({report['bitstream_bytes']} bytes)   "
                  f"report: {outcome.folder / 'report.json'}   wall {report['wall_s']:.1f} s")
    if not report["timing_met"]:
        raise BitfabError(f"timing {report['timing']}")


@click.group()
def board():
    """Talk to a board running a bitfab bitstream."""


def compare_run(model, x: np.ndarray, transport, *, window: int = 2, progress=None) -> dict:
    """Run ``x`` on a board through ``transport`` and compare with the golden model (and the torch
    reference when the model carries one); return the comparison as a JSON object."""
    from bitfab.sim.golden import compare_outputs, execute

    from .host import BoardClient
    client = BoardClient(transport, model, window=window)
    run = client.run(x, progress=progress)
    trace = execute(model, x)
    golden = trace.output
    mismatches, first = compare_outputs(run.outputs, golden)
    result = {
        "vectors": int(len(x)), "mismatches": mismatches, "first_mismatch": first,
        "seconds": run.seconds, "vectors_per_s": run.vectors_per_s,
        "bytes_sent": run.bytes_sent, "bytes_received": run.bytes_received,
        "torch_mismatches": None,
    }
    if model.layers[-1].output.kind == "none":
        board_pred = np.argmax(run.outputs, axis=1)
        result["golden_prediction_mismatches"] = int(np.count_nonzero(
            board_pred != np.argmax(golden, axis=1)))
        if model.metadata.get("producer") == "bitfab.quant":
            try:
                import torch

                from bitfab.quant.evaluate import rebuild
            except ImportError:
                result["torch"] = "not installed (pip install bitfab[train])"
            else:
                with torch.no_grad():
                    acc = rebuild(model).integer_forward(x)[0][-1].numpy()
                result["torch_mismatches"] = int(np.count_nonzero(
                    np.any(run.outputs != acc.astype(np.int64), axis=1)))
    return result


@board.command("run")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", help="Serial port of the board, e.g. /dev/ttyUSB1.")
@click.option("--simulate", is_flag=True,
              help="No board: run the board top-level in the Amaranth simulator instead.")
@click.option("--fold", help="PE,SIMD of the bitstream (with --simulate).")
@click.option("--inputs", type=click.Path(dir_okay=False),
              help="A .npy array of input values (default: 100 random vectors).")
@click.option("--vectors", type=click.IntRange(1, 10**7), default=100, show_default=True)
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for an answer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def board_run(model, port, simulate, fold, inputs, vectors, baud, timeout, seed, as_json):
    """Stream inputs to a board, read its results, compare with the golden model and torch."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from bitfab.cli import emit_json, load_array, load_model
    from bitfab.sim.cli import random_inputs
    from bitfab.sim.golden import check_inputs

    m = load_model(model)
    if inputs:
        x = check_inputs(m, load_array(inputs, "inputs"))
    else:
        x = random_inputs(m.layers[0].input, m.in_features, vectors, seed)
    if bool(port) == bool(simulate):
        raise BitfabError("give either --port (a board) or --simulate (the simulated board)")
    if simulate:
        from .simboard import simulated_board
        transport = simulated_board(m, _fold(fold))
    else:
        from .host import SerialTransport
        transport = SerialTransport(port, baud, timeout)
    con = Console(stderr=as_json, highlight=False)
    start = time.perf_counter()
    try:
        with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=con, transient=as_json) as progress:
            task = progress.add_task("board", total=len(x))
            result = compare_run(m, x, transport,
                                 progress=lambda k: progress.update(task, completed=k))
    finally:
        transport.close()
    result["wall_s"] = time.perf_counter() - start
    result["transport"] = "simulation" if simulate else port
    if simulate:
        # simulated wall time says nothing about a board: give the clock cycles it took
        result["simulated_cycles"] = transport.cycles
        result["cycles_per_vector"] = transport.cycles / max(len(x), 1)
    if as_json:
        emit_json(result)
    else:
        from rich.table import Table
        table = Table(title=f"bitfab board run — {model} on {result['transport']}")
        for col in ("vectors", "vs golden", "vs torch", "vectors/s", "bytes out/in"):
            table.add_column(col, justify="right")
        torch_txt = "-" if result["torch_mismatches"] is None else \
            f"{result['torch_mismatches']} differ"
        table.add_row(str(result["vectors"]),
                      f"[{'green' if not result['mismatches'] else 'red'}]"
                      f"{result['mismatches']} differ[/]", torch_txt,
                      f"{result['vectors_per_s']:.1f}",
                      f"{result['bytes_sent']}/{result['bytes_received']}")
        con.print(table)
        if simulate:
            con.print(f"simulated: {result['simulated_cycles']} clock cycles, "
                      f"{result['cycles_per_vector']:.0f} per vector (UART at 8 clocks per bit "
                      f"in simulation; vectors/s above is simulator speed)")
    if result["mismatches"] or result["torch_mismatches"]:
        raise VerificationError(f"the board disagrees with the reference on "
                                f"{max(result['mismatches'], result['torch_mismatches'] or 0)} "
                                f"of {result['vectors']} vectors; first: "
                                f"{result['first_mismatch']}")
