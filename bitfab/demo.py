"""``bitfab demo``: the whole pipeline on the bundled default, ending in one summary table.

Train a binary MLP (64-64-32-10, BNN activations) on the embedded ``digits`` dataset with the
``binary`` recipe (the fastest recipe that meets its accuracy target: ~2 s of training), export
it, compare the golden model with the torch reference on the test split, generate the Verilog,
simulate it with Verilator on every test vector (bit-exact against the golden model), and build
the iCEBreaker bitstream (fold chosen to fit the UP5K). Every number in the table is measured in
this run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .errors import BitfabError, VerificationError
from .toolchain import mark_output, output_folder

#: the bundled default: recipe, dataset, board
RECIPE, DATASET, BOARD = "binary", "digits", "icebreaker"


def build_dir() -> Path:
    """Return bitfab's build folder (``$BITFAB_BUILD_DIR``, default ``./build``)."""
    return Path(os.environ.get("BITFAB_BUILD_DIR", "build"))


def _progress(console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("[bold]{task.description:>13}"), BarColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)


def run_demo(out: Path, seed: int = 0, epochs: int = 30, console=None) -> dict:
    """Run every stage; return the summary (what the table shows) as a JSON object."""
    try:
        import torch

        from .quant.data import load_dataset
        from .quant.recipes import TrainConfig
        from .quant.train import export, fit
    except ImportError as exc:
        raise BitfabError(f"the demo trains a network and needs bitfab[train] ({exc})") from None
    from .boards.build import synthesize
    from .cli.evaluate import compare
    from .hw.verilog import generate
    from .model import IntegerModel
    from .sim.run import simulate_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    summary = {"recipe": RECIPE, "dataset": DATASET, "board": BOARD, "seed": seed}
    torch.set_num_threads(1)  # small matmuls on a shared machine: one thread is fastest
    say = console.print if console is not None else (lambda *a, **k: None)

    # 1. train (quantized and the float reference of the same shape)
    t0 = time.perf_counter()
    data = load_dataset(DATASET, seed)
    config = TrainConfig(RECIPE, DATASET, epochs=epochs, seed=seed)
    reference = TrainConfig("float", DATASET, config.hidden, None, epochs, config.batch_size,
                            config.lr, 0.0, seed)
    with _progress(console) as progress:
        result = fit(config, data, progress)
        floating = fit(reference, data, progress)
    times["train"] = time.perf_counter() - t0
    summary.update(float_accuracy=floating.accuracy, hidden=list(config.hidden))

    # 2. export and reload (everything after this reads the file only)
    t0 = time.perf_counter()
    path = out / "demo.bfm"
    export(result, extra_metadata={"float_accuracy": floating.accuracy}).save(path)
    model = IntegerModel.load(path)
    times["export"] = time.perf_counter() - t0
    summary["model"] = str(path)

    # 3. eval: golden model vs the torch reference rebuilt from the file
    t0 = time.perf_counter()
    cmp = compare(model, data)
    times["eval"] = time.perf_counter() - t0
    summary.update(quantized_accuracy=cmp["torch_accuracy"],
                   golden_accuracy=cmp["golden_accuracy"],
                   golden_torch_mismatches=cmp["mismatches"] + cmp["accumulator_mismatches"])
    say(f"eval: golden {100 * cmp['golden_accuracy']:.2f} %, torch "
        f"{100 * cmp['torch_accuracy']:.2f} %, {cmp['mismatches']} disagreeing predictions")

    # 4. synth first decides the fold that fits the board; the RTL simulated is that design
    t0 = time.perf_counter()
    with console.status("synthesizing for the iCEBreaker (yosys, nextpnr)...") \
            if console is not None else _Null() as status:
        def stage(name, detail=""):
            if status is not None:
                status.update(f"synth: {name} {detail}")
        # the synth folder is the demo's own: a build replaces what the previous one wrote
        (out / "synth").mkdir(exist_ok=True)
        synth = synthesize(model, BOARD, out=mark_output(out / "synth"), seed=seed,
                           progress=stage)
    times["synth"] = time.perf_counter() - t0
    report = synth.report
    fold = tuple(report["fold"]) if report["fold"] else None
    summary.update(fold=report["fold"], luts=report["resources"]["lut4"]["used"],
                   logic_cells=report["resources"]["logic_cells"]["used"],
                   luts_available=report["resources"]["lut4"]["available"],
                   bram=report["resources"]["bram"]["used"],
                   fmax_mhz=report["fmax_mhz"], timing=report["timing"],
                   timing_met=report["timing_met"], bitstream=report["bitstream"])

    # 5. verilog of the same network (same fold, same pipeline)
    t0 = time.perf_counter()
    facts = generate(model, out / "verilog", fold=fold, pipeline=report["pipeline"])
    times["verilog"] = time.perf_counter() - t0
    summary["verilog"] = str(out / "verilog" / facts["verilog"])

    # 6. Verilator on every test vector (random bubbles and stalls), bit-exact against the golden
    # model: the cocotb bench of bitfab sim on the Verilog of the same fold
    t0 = time.perf_counter()
    with console.status("Verilator: building and simulating the test set...") \
            if console is not None else _Null():
        sim = simulate_model(path, simulator="verilator", inputs=data.x_test, fold=fold,
                             pipeline=report["pipeline"], stall=0.1, seed=seed)
    times["sim"] = time.perf_counter() - t0
    # every RTL output vector equal to the golden one means the RTL's predictions, hence its
    # accuracy, are the golden model's
    summary.update(rtl_vectors=sim.vectors, rtl_mismatches=sim.mismatches,
                   rtl_accuracy=cmp["golden_accuracy"] if sim.mismatches == 0 else None)
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    summary["total_s"] = round(sum(times.values()), 1)
    return summary


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _ok(n) -> str:
    return f"[{'green' if n == 0 else 'red'}]{n}[/]"


def summary_table(s: dict):
    """Return the one table the demo ends with."""
    from rich.table import Table
    table = Table(title=f"bitfab demo — {s['recipe']} MLP "
                        f"{'-'.join(map(str, [64, *s['hidden'], 10]))} on {s['dataset']}, "
                        f"{s['board']}")
    table.add_column("what")
    table.add_column("result", justify="right")
    table.add_row("accuracy float32 (torch)", _pct(s["float_accuracy"]))
    table.add_row("accuracy quantized (torch)", _pct(s["quantized_accuracy"]))
    table.add_row("accuracy golden model", _pct(s["golden_accuracy"]))
    table.add_row(f"accuracy RTL (Verilator, {s['rtl_vectors']} test vectors)",
                  _pct(s["rtl_accuracy"]))
    table.add_row("mismatches golden vs torch", _ok(s["golden_torch_mismatches"]))
    table.add_row("mismatches RTL vs golden", _ok(s["rtl_mismatches"]))
    fold = s["fold"]
    table.add_row("fold (PE,SIMD)", "unrolled" if fold is None else f"{fold[0]},{fold[1]}")
    table.add_row("LUT4 / logic cells (of available)",
                  f"{s['luts']} / {s['logic_cells']} (of {s['luts_available']})")
    table.add_row("block RAM", str(s["bram"]))
    colour = "green" if s["timing_met"] else "red"
    table.add_row("Fmax", f"[{colour}]{s['fmax_mhz']:.1f} MHz[/] ({s['timing'].split(':')[0]})")
    table.add_row("bitstream", s["bitstream"])
    table.add_row("wall time", f"{s['total_s']:.0f} s ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()) + ")")
    return table


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the demo's files (default: build/demo): a new or empty one, or "
                   "one the demo wrote before.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Random seed.")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=30, show_default=True,
              help="Training epochs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(out, seed, epochs, as_json):
    """Train on digits, export, eval, verilog, Verilator on the test set, synth for iCEBreaker."""
    from rich.console import Console

    from .cli.ui import emit_json
    if out is None:  # bitfab's own build folder
        out = build_dir() / "demo"
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out)
    else:
        out = output_folder(out)
    con = Console(stderr=as_json, highlight=False)
    summary = run_demo(out, seed, epochs, con)
    if as_json:
        emit_json(summary)
    else:
        con.print(summary_table(summary))
    if summary["rtl_mismatches"] or summary["golden_torch_mismatches"]:
        raise VerificationError("the demo found mismatches (see the table)")
