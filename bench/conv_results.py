"""Train the conv recipes against their float twins; write docs/results/conv-training.md.

Two parts, each trained *interleaved* (:func:`bitfab.quant.train.fit_interleaved`: every
minibatch is stepped by each network in turn, so step times are measured under the same load):

- ``fashion``: ``cnn-twobit`` and ``cnn-float`` on Fashion-MNIST (accuracy, step-time ratio);
- ``mnist1d``: ``resnet-float``, ``resnet-pow2`` and ``resnet-denseshift`` on mnist1d, per seed.

Every exported network is run by its torch integer forward and by the golden model on the whole
test split; any differing prediction or accumulator stops the run. Usage::

    .venv/bin/python bench/conv_results.py --part fashion --fashion DIR --epochs 15 --seeds 0 \\
        --json build/conv_fashion.json
    .venv/bin/python bench/conv_results.py --part mnist1d --epochs 30 --seeds 0,1,2 \\
        --json build/conv_mnist1d.json
    .venv/bin/python bench/conv_results.py --page docs/results/conv-training/*.json \\
        --notes docs/results/conv-training/notes.md

``--page`` (re)writes ``docs/results/conv-training.md`` from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bitfab.quant.conv import integer_forward
from bitfab.quant.data import FASHION_MNIST_DIR, load_dataset
from bitfab.quant.recipes import TrainConfig
from bitfab.quant.train import export, fit_interleaved
from bitfab.sim.golden import execute

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "results" / "conv-training.md"
PARTS = {"fashion": ("cnn-twobit", "cnn-float"),
         "mnist1d": ("resnet-pow2", "resnet-denseshift", "resnet-float")}


def check_exact(model, x: np.ndarray) -> None:
    """Torch integer forward == golden on every prediction and last-layer accumulator (the
    whole split, in chunks); raise AssertionError otherwise."""
    for start in range(0, len(x), 1000):
        chunk = x[start:start + 1000]
        accs, _ = integer_forward(model, chunk, keep_all=False)
        trace = execute(model, chunk)
        np.testing.assert_array_equal(accs[-1].numpy().astype(np.int64), trace.accumulators[-1])
        np.testing.assert_array_equal(accs[-1].numpy().argmax(1), trace.output.argmax(1))


def run(part: str, spec: str, epochs: int, seeds: list[int], batch: int, hidden, log,
        recipes=None, lrs=None, options=None) -> list:
    rows = []
    lrs, options = lrs or {}, options or {}
    for seed in seeds:
        data = load_dataset(spec, seed)
        configs = [TrainConfig(r, spec, hidden, None, epochs, batch, lrs.get(r), 0.0, seed,
                               options.get(r, {}))
                   for r in recipes or PARTS[part]]
        t0 = time.time()
        results = fit_interleaved(configs, data, eval_every=max(1, epochs // 3))
        wall = time.time() - t0
        row = {"part": part, "dataset": spec, "seed": seed, "epochs": epochs, "batch": batch,
               "hidden": list(configs[0].hidden), "wall_seconds": wall, "runs": {}}
        floats = [r for r in results if r.model.is_float][0]
        for r in results:
            entry = {"accuracy": r.accuracy, "step_seconds": r.seconds,
                     "history": r.history, "lr": r.config.lr, "options": r.config.options}
            if not r.model.is_float:
                model = export(r)
                t = time.time()
                check_exact(model, data.x_test)
                entry.update(weight_bits=model.weight_bits, fp32_bits=model.fp32_bits,
                             exact_test_vectors=len(data.x_test),
                             exact_check_seconds=time.time() - t,
                             time_ratio=r.seconds / floats.seconds,
                             delta_points=100 * (r.accuracy - floats.accuracy))
            row["runs"][r.config.recipe] = entry
            print(f"{part} seed {seed} {r.config.recipe}: acc {100 * r.accuracy:.2f} % "
                  f"steps {r.seconds:.1f} s", file=log, flush=True)
        rows.append(row)
    return rows


def _mean_sd(values) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f} %"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} %"


TWINS = {"fashion": "cnn-float", "mnist1d": "resnet-float"}
#: the issue's targets: points a quantized network may trail its float twin
GOALS = {"cnn-twobit": 1.0, "resnet-pow2": 0.5, "resnet-denseshift": 0.5}
#: the issue's targets: the least test accuracy
FLOORS = {"cnn-twobit": 0.90, "resnet-float": 0.90}


def _section(command: str, rows: list) -> list[str]:
    """One table: the runs of one command (one part, its seeds)."""
    part, r0 = rows[0]["part"], rows[0]
    twin = TWINS[part]
    recipes = list(r0["runs"])
    seeds = [r["seed"] for r in rows]
    out = [f"## {r0['dataset'].split('/')[-1]}: {', '.join(recipes)} (seeds "
           f"{', '.join(map(str, seeds))}; {r0['epochs']} epochs, batch {r0['batch']}, widths "
           f"{'-'.join(map(str, r0['hidden']))})", "", "```sh", command, "```", "",
           "| network | lr, options | test accuracy (mean ± sd) | per seed | delta to float "
           "(points) | target | step time vs float | weight bits |",
           "|---|---|---|---|---|---|---|---|"]
    for recipe in sorted(recipes, key=lambda r: r == twin):
        runs = [r["runs"][recipe] for r in rows]
        accs = [e["accuracy"] for e in runs]
        per = ", ".join(f"{100 * a:.2f}" for a in accs)
        opts = ", ".join(f"{k}={v}" for k, v in runs[0].get("options", {}).items())
        setting = f"{runs[0].get('lr', 0.01)}" + (f"; {opts}" if opts else "")
        goals = []
        if recipe in FLOORS:
            ok = statistics.mean(accs) >= FLOORS[recipe]
            goals.append(f">= {100 * FLOORS[recipe]:.0f} %{'' if ok else ' **missed**'}")
        if recipe == twin:
            fp32 = r0["runs"][[k for k in recipes if k != twin][0]]["fp32_bits"]
            out.append(f"| {recipe} | {setting} | {_mean_sd(accs)} | {per} | - | "
                       f"{'; '.join(goals) or '-'} | x1.00 | {fp32} (fp32) |")
            continue
        deltas = [e["delta_points"] for e in runs]
        dmean = statistics.mean(deltas)
        if recipe in GOALS:
            ok = dmean >= -GOALS[recipe]
            goals.append(f"within {GOALS[recipe]} pt{'' if ok else ' **missed**'}")
        if recipe == "cnn-twobit":
            ok = statistics.mean(e["time_ratio"] for e in runs) <= 1.10
            goals.append(f"step <= x1.10{'' if ok else ' **missed**'}")
        out.append(f"| {recipe} | {setting} | {_mean_sd(accs)} | {per} | {dmean:+.2f} | "
                   f"{'; '.join(goals) or '-'} | "
                   f"x{statistics.mean(e['time_ratio'] for e in runs):.2f} | "
                   f"{runs[0]['weight_bits']} |")
    return out + [""]


def page(files: list[tuple[str, list]], notes: str = "") -> str:
    out = ["# Convolutional networks: training results", "",
           "Made by `bench/conv_results.py` (quantized networks and their float twin trained "
           "interleaved in one process: every minibatch stepped by each network in turn, each "
           "step timed on its own; one torch thread; the page by `--page` from the runs' JSON). "
           "Every quantized network was exported and its torch integer forward compared with "
           "the golden model on the whole test split: 0 differing predictions, 0 differing "
           "last-layer accumulators (the run stops otherwise).", ""]
    for command, rows in files:
        out += _section(command, rows)
    out += [f"Machine: {platform.machine()}, torch {torch.__version__}, 2 cores shared with "
            f"other jobs (step times are wall clock under that load, hence measured "
            f"interleaved).", ""]
    if notes:
        out += [notes.strip(), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS))
    ap.add_argument("--fashion", default=FASHION_MNIST_DIR, help="Fashion-MNIST IDX folder.")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--hidden", default=None, help="Channel widths, e.g. 16,32.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipes", default=None, help="A subset of the part's recipes (with "
                    "its float twin).")
    ap.add_argument("--lr", action="append", default=[], metavar="RECIPE=LR")
    ap.add_argument("--option", action="append", default=[], metavar="RECIPE:KEY=VALUE")
    ap.add_argument("--json", type=Path, help="Write the rows here.")
    ap.add_argument("--page", nargs="+", type=Path, help="Write the results page from these "
                    "JSON files.")
    ap.add_argument("--notes", type=Path, help="Markdown appended to the page (analysis).")
    args = ap.parse_args(argv)
    if args.page:
        files = [(d["command"], d["rows"]) for d in
                 (json.loads(path.read_text()) for path in args.page)]
        PAGE.write_text(page(files, args.notes.read_text() if args.notes else ""))
        print(f"wrote {PAGE}")
        return 0
    torch.set_num_threads(args.threads)
    spec = f"idx:{args.fashion}" if args.part == "fashion" else "mnist1d"
    batch = args.batch or (128 if args.part == "fashion" else 64)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ()
    lrs = {k: float(v) for k, v in (item.split("=") for item in args.lr)}
    options: dict = {}
    for item in args.option:
        recipe, kv = item.split(":", 1)
        key, value = kv.split("=")
        options.setdefault(recipe, {})[key] = float(value) if "." in value else int(value)
    recipes = args.recipes.split(",") if args.recipes else None
    rows = run(args.part, spec, args.epochs, [int(s) for s in args.seeds.split(",")], batch,
               hidden, sys.stderr, recipes, lrs, options)
    command = "python bench/conv_results.py " + " ".join(argv or sys.argv[1:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print(json.dumps({"command": command, "rows": [
        {k: v for k, v in r.items() if k != "runs"} | {"acc": {k: e["accuracy"] for k, e in
                                                              r["runs"].items()}}
        for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
