"""``bitfab synth`` and ``bitfab board run``."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from bitfab.errors import BitfabError, VerificationError

from .ui import (
    SEED,
    FiniteFloat,
    Stages,
    check_output_folder,
    console,
    emit_json,
    hardware_options,
    label,
    load_array,
    load_lengths,
    load_model,
    parse_fold,
)

__all__ = ["synth", "board", "board_run", "board_selftest", "compare_run", "selftest_data"]


def selftest_data(model, vectors: int, seed: int = 0):
    """The on-board self-test's ROM contents for ``model``: ``vectors`` random inputs drawn with
    ``seed`` and the golden model's results (:func:`bitfab.sim.run.selftest_vectors`)."""
    from bitfab.boards.selftest import SelfTestData
    from bitfab.sim.run import selftest_vectors
    inputs, expected = selftest_vectors(model, vectors, seed)
    return SelfTestData(inputs, expected, seed)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", "board_name", required=True,
              help="icebreaker, ice40-hx8k, ulx3s or orangecrab.")
@hardware_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="nextpnr placement seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Build folder (default: build/synth/MODEL-BOARD): a new or empty one, or one "
                   "bitfab built in before (a build replaces its files there).")
@click.option("--clock", "clock_mhz", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Design clock in MHz through a PLL, made within 1 % (iCE40 16..275 MHz, "
                   "ECP5 3.125..400 MHz; the oscillator's frequency: no PLL). Default: chosen "
                   "from the Fmax of a first place and route on the oscillator, 15 % below it, "
                   "together with the baud rate (two passes).")
@click.option("--baud", type=click.IntRange(min=1), default=None,
              help="UART rate (default: the board's link rate, 3000000, where the clock makes "
                   "it within 2 %; at most what the board's USB bridge makes).")
@click.option("--selftest", "selftest", type=click.IntRange(1, 1 << 20), default=None,
              metavar="N", help="Build the on-board self-test: N random input vectors and their "
                                "golden results in block RAM (run it with bitfab board selftest).")
@click.option("--selftest-seed", type=SEED, default=0, show_default=True,
              help="Seed of the self-test's random inputs.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="With --fold auto: worker processes building candidate folds in parallel "
                   "(default: one per candidate, at most 8).")
@click.option("--candidates", type=click.IntRange(1, 16), default=3, show_default=True,
              help="With --fold auto: how many folds to build (the estimate's pick, one faster, "
                   "the next slower ones).")
@click.option("--weights-in", type=click.Choice(["auto", "bram", "spram"]), default="auto",
              show_default=True,
              help="Folded weight memories in block RAM, or in iCE40 UP SPRAM (icebreaker; "
                   "loaded over the UART before the first input); auto: SPRAM for the largest "
                   "ones when block RAM is short.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def synth(model, board_name, fold, seed, out, clock_mhz, baud, pipeline, workers, candidates,
          weights_in, selftest, selftest_seed, as_json):
    """Build a bitstream for a board and report resources and timing.

    --fold auto builds several candidate folds in parallel (Dask, as bitfab sweep) and keeps the
    fastest that fits and meets timing."""
    from bitfab.boards.build import synthesize
    from bitfab.boards.pll import plan
    from bitfab.boards.report import report_table
    from bitfab.boards.targets import get_board
    from bitfab.boards.uart import check_baud, link_baud

    if out is not None:
        check_output_folder(out)
    m = load_model(model)
    target = get_board(board_name)
    # a baud the bridge cannot make, or one the given clock cannot, fails before any work
    if baud is not None:
        check_baud(target, baud)
    clock_hz = clock_mhz * 1e6 if clock_mhz is not None else "auto"
    if clock_mhz is not None:
        link_baud(target, plan(target, clock_hz).f_out, baud)
    if fold == "auto":
        if weights_in != "auto":
            raise click.UsageError("--weights-in goes with a fold (--fold PE,SIMD or none)")
        if selftest is not None:
            raise click.UsageError("--selftest goes with one fold, not --fold auto")
        _synth_auto(model, m, target, out, seed, clock_hz, baud, pipeline, workers, candidates,
                    as_json)
        return
    if workers is not None or candidates != 3:
        raise click.UsageError("--workers and --candidates go with --fold auto")
    fold = parse_fold(fold, m, pipeline)  # bad input fails before any progress display
    if weights_in != "auto" or fold is not None:
        from bitfab.boards.build import plan_weights
        plan_weights(m, fold, target, weights_in)  # so does a weight placement that cannot be
    data = selftest_data(m, selftest, selftest_seed) if selftest else None
    if data is not None:  # the ROMs must fit beside the network, checked before any work
        from bitfab.boards.build import check_selftest, choose_fold, plan_weights
        at = choose_fold(m, target, weights_in=weights_in) if fold is None else \
            (None if fold == "unrolled" else fold)
        check_selftest(m, target, at, data, plan_weights(m, at, target, weights_in))
    con = console(stderr=as_json)
    with Stages(con, transient=as_json) as stages:
        def stage(name, detail=""):
            stages(name, detail)
            if name == "refold":
                con.print(f"[yellow]does not fit:[/] {label(detail)}")

        outcome = synthesize(m, target, fold=fold, seed=seed, out=out, clock_hz=clock_hz,
                             baud=baud, pipeline=pipeline, progress=stage,
                             weights_in=weights_in, selftest=data)
    report = outcome.report
    if as_json:
        emit_json(report)
    else:
        con.print(report_table(report))
        colour = "green" if report["timing_met"] else "red"
        con.print(f"timing: [{colour}]{report['timing']}[/]")
        choice = report["clock_choice"]
        con.print(f"clock: {report['clock']['clock_mhz']:g} MHz ({choice['mode']}"
                  + (f": {label(choice['reason'])}" if choice.get("reason") else "")
                  + f"); UART {report['uart']['baud']} baud, {report['uart']['divisor']} clocks "
                  f"per bit (give board run --baud {report['uart']['baud']})")
        if report["selftest"]:
            con.print(f"self-test: {report['selftest']['vectors']} vectors in "
                      f"{report['selftest']['rom_blocks']} block RAMs (bitfab board selftest)")
        con.print(f"bitstream: {label(report['bitstream'])} ({report['bitstream_bytes']} "
                  f"bytes)   report: {label(outcome.folder / 'report.json')}   "
                  f"wall {report['wall_s']:.1f} s")
    if not report["timing_met"]:
        raise BitfabError(f"timing {report['timing']}")


def _synth_auto(path, m, target, out, seed, clock_hz, baud, pipeline, workers, candidates,
                as_json):
    """``bitfab synth --fold auto``: :func:`bitfab.sweep.folds.search_folds`."""
    from rich.table import Table

    from bitfab.boards.build import synth_folder
    from bitfab.boards.pll import plan
    from bitfab.boards.report import report_table
    from bitfab.sweep.folds import search_folds

    if clock_hz != "auto":
        plan(target, clock_hz)
    folder = synth_folder(m, target, out)
    con = console(stderr=as_json)
    with con.status("building candidate folds in parallel"):
        def done(rec):
            if not as_json:
                con.print(f"  fold {rec['fold']}: "
                          f"{'ok' if rec['status'] == 'ok' else label(rec['reason'])}")

        search = search_folds(path, target, folder, count=candidates, workers=workers,
                              seed=seed, clock_hz=clock_hz, baud=baud, pipeline=pipeline,
                              progress=done)
    best = search.best
    if as_json:
        emit_json({"best": best and best["report"], "tried": [
            {k: v for k, v in r.items() if k != "report"} | (
                {"initiation_interval": r["report"]["initiation_interval"],
                 "lut4": r["report"]["resources"]["lut4"]["used"],
                 "fmax_mhz": r["report"]["fmax_mhz"]} if r["report"] else {})
            for r in search.tried], "wall_s": search.seconds})
    else:
        table = Table(title=f"--fold auto: {len(search.tried)} folds built in parallel "
                            f"({search.seconds:.1f} s)")
        for col in ("fold", "interval", "LUT4", "Fmax", "verdict"):
            table.add_column(col, justify="left" if col in ("fold", "verdict") else "right")
        for r in search.tried:
            rep = r["report"] or {}
            table.add_row(r["fold"], str(rep.get("initiation_interval", "-")),
                          str(rep.get("resources", {}).get("lut4", {}).get("used", "-")),
                          "-" if rep.get("fmax_mhz") is None else f"{rep['fmax_mhz']:.1f} MHz",
                          "[green]chosen[/]" if r is best else
                          ("ok" if r["status"] == "ok" else f"[red]{label(r['reason'])}[/]"))
        con.print(table)
        if best:
            con.print(report_table(best["report"]))
            con.print(f"bitstream: {label(best['report']['bitstream'])}")
    if best is None:
        raise BitfabError(f"no candidate fold of {m.name} fits {target.title} and meets timing: "
                          + "; ".join(f"{r['fold']}: {r['reason']}" for r in search.tried))


@click.group()
def board():
    """Talk to a board running a bitfab bitstream."""


def compare_run(model, x: np.ndarray, transport, *, lengths=None, window: int | None = None,
                progress=None, weights=None) -> dict:
    """Run ``x`` (vectors, or sequences with ``lengths``) on a board through ``transport`` and
    compare its answers with the golden model, and with the torch reference when the model
    carries one; return the comparison as a JSON object. ``weights``: the weight image a board
    with weights in SPRAM is loaded with first (:func:`bitfab.hw.layer.weight_image`)."""
    from bitfab.boards.host import BoardClient
    from bitfab.sim.golden import check_inputs, compare_outputs, execute

    x, lengths = check_inputs(model, x, lengths)
    client = BoardClient(transport, model, window=window, weights=weights)
    run = client.run(x, lengths, progress=progress)
    trace = execute(model, x, lengths)
    stream = model.out_stream
    golden = stream.code_rows(trace.output, lengths)
    mismatches, first = compare_outputs(run.codes, golden)
    result = {
        "vectors": int(len(golden)), "inputs": int(len(x)), "mismatches": mismatches,
        "first_mismatch": first, "seconds": run.seconds, "vectors_per_s": run.vectors_per_s,
        "bytes_sent": run.bytes_sent, "bytes_received": run.bytes_received,
        "torch_mismatches": None, "window": client.window,
    }
    if model.layers[-1].output.kind == "none" and \
            (not stream.framed or len(run.outputs) == len(golden)):
        # per vector, or per step of a tagger (its rows in stream order)
        board_values = run.outputs
        golden_values = stream.rows(trace.output, lengths)[0]
        result["golden_prediction_mismatches"] = int(np.count_nonzero(
            np.argmax(board_values, axis=1) != np.argmax(golden_values, axis=1)))
        if model.metadata.get("producer") == "bitfab.quant":
            try:
                from bitfab.quant.evaluate import torch_outputs
            except ImportError:
                result["torch"] = "not installed (pip install bitfab[train])"
            else:
                ref = stream.rows(torch_outputs(model, x, lengths), lengths)[0]
                result["torch_mismatches"] = int(np.count_nonzero(
                    np.any(board_values != ref, axis=1)))
    return result


def _weight_placement(m, fold, pipeline, weights_in: str, board_name):
    """``board run``/``board selftest --weights-in``: the ``weights`` placement of the
    bitstream's weight memories and the image a board with some in SPRAM is loaded with (None,
    None: all in block RAM)."""
    weights = None
    if weights_in == "auto":
        if board_name is None:
            raise BitfabError("--weights-in auto needs --board (the placement depends on it)")
        from bitfab.boards.build import plan_weights
        from bitfab.boards.targets import get_board
        weights = plan_weights(m, fold, get_board(board_name), "auto")
    elif weights_in == "spram":
        weights = "spram"
    image = None
    if weights is not None:
        from bitfab.hw.layer import network_configs, weight_image
        image = weight_image(network_configs(m, fold, pipeline, weights))
    return weights, image


def weights_options(fn):
    """``--weights-in`` and ``--board`` of ``board run`` and ``board selftest``."""
    fn = click.option("--board", "board_name", default=None,
                      help="With --weights-in auto: the board the bitstream was built for.")(fn)
    fn = click.option("--weights-in", type=click.Choice(["bram", "spram", "auto"]),
                      default="bram", show_default=True,
                      help="Where the bitstream keeps the folded weights, as given to bitfab "
                           "synth (with --fold): spram (or auto with --board) loads them over "
                           "the UART before the first input.")(fn)
    return fn


@board.command("run")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", help="Serial port of the board, e.g. /dev/ttyUSB1.")
@click.option("--simulate", is_flag=True,
              help="No board: run the board top-level in the Amaranth simulator instead.")
@hardware_options
@click.option("--inputs", type=click.Path(dir_okay=False),
              help="A .npy array of input values (default: random ones).")
@click.option("--lengths", type=click.Path(dir_okay=False),
              help="A .npy array of sequence lengths (sequence models; default all steps).")
@click.option("--vectors", type=click.IntRange(1, 10**7), default=20, show_default=True,
              help="Random inputs (ignored with --inputs); a simulated board runs a few frames "
                   "per second.")
@click.option("--baud", type=click.IntRange(min=1), default=3_000_000, show_default=True,
              help="UART rate: the one bitfab synth built for (it prints it). With --simulate, "
                   "the rate that the simulated cycles are converted to vectors/s at.")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=2.0,
              show_default=True, help="Seconds to wait for an answer.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@weights_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def board_run(model, port, simulate, fold, pipeline, inputs, lengths, vectors, baud, timeout,
              seed, weights_in, board_name, as_json):
    """Stream inputs to a board, read its results, compare with the golden model and torch."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bitfab.sim.golden import check_inputs
    from bitfab.sim.run import random_inputs

    m = load_model(model)
    if bool(port) == bool(simulate):
        raise BitfabError("give either --port (a board) or --simulate (the simulated board)")
    fold = parse_fold(fold, m, pipeline)
    if inputs:
        x, steps = check_inputs(m, load_array(inputs, "inputs"), load_lengths(lengths, m))
    else:
        if lengths:
            raise BitfabError("--lengths needs --inputs")
        x, steps = random_inputs(m, vectors, seed)
    weights, image = _weight_placement(m, fold, pipeline, weights_in, board_name)
    if simulate:
        from bitfab.boards.simboard import simulated_board
        transport = simulated_board(m, fold, pipeline, weights=weights)
    else:
        from bitfab.boards.host import SerialTransport
        transport = SerialTransport(port, baud, timeout)
    con = console(stderr=as_json)
    start = time.perf_counter()
    try:
        with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(),
                      TextColumn("left"), console=con, transient=as_json) as progress:
            answers = int(steps.sum()) if m.out_stream.framed else len(x)
            task = progress.add_task("board", total=answers)
            stamps = []  # simulated clock at each answer

            def answered(k):
                progress.update(task, completed=k)
                stamps.append(getattr(transport, "cycles", 0))

            result = compare_run(m, x, transport, lengths=steps, weights=image,
                                 progress=answered)
    finally:
        transport.close()
    result["wall_s"] = time.perf_counter() - start
    result["transport"] = "simulation" if simulate else port
    if simulate:
        # simulated wall time says nothing about a board: give the clock cycles it took
        result["simulated_cycles"] = transport.cycles
        result["cycles_per_vector"] = transport.cycles / max(len(x), 1)
        result.update(_link_measure(stamps, transport.divisor, baud))
    if as_json:
        emit_json(result)
    else:
        from rich.table import Table
        table = Table(title=f"bitfab board run — {label(model)} on "
                            f"{label(result['transport'])}")
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
            steady = result["steady_cycles_per_answer"]
            con.print(f"simulated: {result['simulated_cycles']} clock cycles, "
                      f"{result['cycles_per_vector']:.0f} per vector (UART at "
                      f"{transport.divisor} clocks per bit; vectors/s above is simulator speed)"
                      + ("" if steady is None else
                         f"; {steady:.0f} between answers, so {result['link_vectors_per_s']:,.0f}"
                         f" vectors/s at {baud} baud (window {result['window']})"))
    if result["mismatches"] or result["torch_mismatches"]:
        raise VerificationError(f"the board disagrees with the reference on "
                                f"{max(result['mismatches'], result['torch_mismatches'] or 0)} "
                                f"of {result['vectors']} vectors; first: "
                                f"{result['first_mismatch']}")


def _link_measure(stamps, divisor: int, baud: int) -> dict:
    """Steady-state clocks between answers of a simulated run (first answer to last) and what
    that is in answers per second on a line at ``baud`` (a clock of ``baud * divisor``)."""
    if len(stamps) < 2:
        return {"steady_cycles_per_answer": None, "link_vectors_per_s": None, "baud": baud}
    per = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"steady_cycles_per_answer": per, "baud": baud,
            "link_vectors_per_s": baud * divisor / per if per else None}


@board.command("selftest")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", help="Serial port of the board, e.g. /dev/ttyUSB1.")
@click.option("--simulate", is_flag=True,
              help="No board: build the board top-level with the self-test and run it in the "
                   "Amaranth simulator.")
@hardware_options
@click.option("--vectors", type=click.IntRange(1, 1 << 20), default=64, show_default=True,
              help="With --simulate: vectors in the self-test ROM (a board has what bitfab "
                   "synth --selftest N built in).")
@click.option("--selftest-seed", type=SEED, default=0, show_default=True,
              help="With --simulate: seed of the self-test's random inputs.")
@click.option("--clock", "clock_mhz", type=FiniteFloat(min=0, min_open=True), default=12.0,
              show_default=True, help="With --simulate: the clock (MHz) the counts are read at.")
@click.option("--baud", type=click.IntRange(min=1), default=3_000_000, show_default=True,
              help="UART rate of the board (--port).")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for the report.")
@weights_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def board_selftest(model, port, simulate, fold, pipeline, vectors, selftest_seed, clock_mhz,
                   baud, timeout, weights_in, board_name, as_json):
    """Run the on-board self-test: its ROM's vectors through the network at full clock, no host
    in the loop; print vectors/s at the board clock and the mismatches (any exits 1)."""
    from bitfab.boards.host import BoardClient

    m = load_model(model)
    if bool(port) == bool(simulate):
        raise BitfabError("give either --port (a board) or --simulate (the simulated board)")
    expected_clocks = None
    fold = parse_fold(fold, m, pipeline)
    weights, image = _weight_placement(m, fold, pipeline, weights_in, board_name)
    if simulate:
        from bitfab.boards.build import initiation_interval
        from bitfab.boards.simboard import SIM_DIVISOR, simulated_board
        data = selftest_data(m, vectors, selftest_seed)
        if m.sequential or getattr(m.layers[0], "frame_length", None):
            expected_clocks = None
        else:
            expected_clocks = initiation_interval(m, fold)
        # the report comes after the whole ROM has gone through: wait that long
        transport = simulated_board(
            m, fold, pipeline, weights=weights, selftest=data, clock_hz=clock_mhz * 1e6,
            timeout_bits=max(4000, 4 * vectors * (expected_clocks or 10_000) // SIM_DIVISOR))
    else:
        from bitfab.boards.host import SerialTransport
        transport = SerialTransport(port, baud, timeout)
    start = time.perf_counter()
    try:
        client = BoardClient(transport, m, weights=image)
        report = client.selftest()
    finally:
        transport.close()
    result = report.to_json() | {"transport": "simulation" if simulate else port,
                                 "wall_s": time.perf_counter() - start,
                                 "expected_clocks_per_vector": expected_clocks}
    if as_json:
        emit_json(result)
    else:
        con = console()
        colour = "green" if not report.mismatches else "red"
        per = report.clocks_per_vector
        con.print(f"self-test of {label(m.name)} on {label(result['transport'])}: "
                  f"{report.vectors} vectors, [{colour}]{report.mismatches} mismatches[/], "
                  f"{report.cycles} clocks"
                  + ("" if per is None else
                     f", {per:g} per vector: {report.vectors_per_s:,.0f} vectors/s at "
                     f"{report.clock_hz / 1e6:g} MHz"))
    if report.mismatches:
        raise VerificationError(f"the self-test found {report.mismatches} of {report.vectors} "
                                f"results that differ from the expected ones in its ROM")
