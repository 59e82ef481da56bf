"""Train the conv recipes against their float twins; write docs/results/conv-training.md.

Two parts, each trained *interleaved* (:func:`bitfab.quant.train.fit_interleaved`: every
minibatch is stepped by each network in turn, so step times are measured under the same load):

- ``fashion``: ``cnn-twobit`` and ``cnn-float`` on Fashion-MNIST (accuracy, step-time ratio);
- ``mnist1d``: ``resnet-float``, ``resnet-pow2`` and ``resnet-denseshift`` on mnist1d, per seed.

Every exported network is run by its torch integer forward and by the golden model on the whole
test split; any differing prediction or accumulator stops the run. Usage::

    .venv/bin/python bench/conv_results.py --part fashion --fashion DIR --epochs 10 --seeds 0 \\
        --json build/conv_fashion.json
    .venv/bin/python bench/conv_results.py --part mnist1d --epochs 60 --seeds 0,1,2 \\
        --json build/conv_mnist1d.json
    .venv/bin/python bench/conv_results.py --page build/conv_fashion.json build/conv_mnist1d.json

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


def page(rows: list, commands: list[str]) -> str:
    out = ["# Convolutional networks: training results", "",
           "Made by `bench/conv_results.py` (quantized network and float twin trained "
           "interleaved in one process: every minibatch stepped by each network in turn, "
           "each step timed on its own; one torch thread). Every quantized network was exported "
           "and its torch integer forward compared with the golden model on the whole test "
           "split: 0 differing predictions, 0 differing accumulators (the run stops otherwise).",
           "", "Commands:", "", "```"] + commands + ["```", ""]
    parts = {}
    for row in rows:
        parts.setdefault(row["part"], []).append(row)
    targets = {"fashion": ("cnn-float", {"cnn-twobit": 1.0}),
               "mnist1d": ("resnet-float", {"resnet-pow2": 0.5, "resnet-denseshift": 0.5})}
    for part, prow in parts.items():
        twin, goals = targets[part]
        seeds = [r["seed"] for r in prow]
        r0 = prow[0]
        out += [f"## {r0['dataset']} (seeds {', '.join(map(str, seeds))}; {r0['epochs']} "
                f"epochs, batch {r0['batch']}, widths {'-'.join(map(str, r0['hidden']))})", "",
                "| network | test accuracy (mean ± sd) | per seed | delta to float (points) "
                "| target | step time vs float | weight bits |",
                "|---|---|---|---|---|---|---|"]
        for recipe in PARTS[part]:
            accs = [r["runs"][recipe]["accuracy"] for r in prow]
            per = ", ".join(f"{100 * a:.2f}" for a in accs)
            if recipe == twin:
                out.append(f"| {recipe} | {_mean_sd(accs)} | {per} | - | "
                           f"{'>= 90 %' if part == 'mnist1d' else '-'} | x1.00 | "
                           f"{r0['runs'][[k for k in PARTS[part] if k != twin][0]]['fp32_bits']} "
                           f"(fp32) |")
                continue
            deltas = [r["runs"][recipe]["delta_points"] for r in prow]
            ratios = [r["runs"][recipe]["time_ratio"] for r in prow]
            dmean = statistics.mean(deltas)
            goal = goals[recipe]
            met = dmean >= -goal
            out.append(f"| {recipe} | {_mean_sd(accs)} | {per} | {dmean:+.2f} | "
                       f"within {goal} pt{'' if met else ' **missed**'} | "
                       f"x{statistics.mean(ratios):.2f} | {r0['runs'][recipe]['weight_bits']} |")
        out.append("")
    out += [f"Machine: {platform.processor() or platform.machine()}, torch "
            f"{torch.__version__}, shared with other jobs (step-time ratios are measured "
            f"interleaved for that reason).", ""]
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
    args = ap.parse_args(argv)
    if args.page:
        rows, commands = [], []
        for path in args.page:
            d = json.loads(path.read_text())
            rows += d["rows"]
            commands.append(d["command"])
        PAGE.write_text(page(rows, commands))
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
