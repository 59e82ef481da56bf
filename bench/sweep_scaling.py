"""Benchmark a 16-point sweep on one Dask worker and on two, in one run; print one JSON object.

The sweep: 4 recipes (binary, ternary, pow2, denseshift) x hidden 16 or 32 x folds 1,16 and 4,16
on digits for iCEBreaker (``--epochs`` epochs each), steps train, eval and yosys (``--steps
synth`` places and routes too: minutes more per point). It runs twice from scratch on an embedded
LocalCluster, with ``--workers-a`` (1) and ``--workers-b`` (2) worker processes, each into a new
folder; the two tables are checked equal (the figures of a design do not depend on the cluster).
Reported: the wall time of each and their ratio, the points that failed, and the Pareto fronts
of the second run (accuracy vs LUT4 and accuracy vs images/s); ``--plot`` copies its plot there.

Usage: ``python bench/sweep_scaling.py [--epochs 10] [--steps yosys] [--plot FILE]``.
"""

import os

# one thread per worker process: pin BLAS and torch before they load
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

from bitfab.sweep.engine import VOLATILE, run_sweep
from bitfab.sweep.plots import pareto
from bitfab.sweep.spec import parse_spec


def spec_of(epochs: int, steps: str):
    return parse_spec({
        "steps": ["train", "eval", steps],
        "axes": {"recipe": ["binary", "ternary", "pow2", "denseshift"],
                 "dataset": ["digits"], "hidden": [[16], [32]], "epochs": [epochs],
                 "board": ["icebreaker"], "fold": ["1,16", "4,16"]},
    }, "bench")


def design(rows):
    return {r["key"]: {k: v for k, v in r.items()
                       if not any(k == c or k.startswith(c + ".") for c in VOLATILE)}
            for r in rows}


def fronts(rows):
    good = [r for r in rows if r["status"] == "ok"]
    out = {}
    for column, minimize in (("lut4", True), ("images_per_s", False)):
        pts = [(r[column], r["accuracy"]) for r in good]
        out[column] = [{"recipe": good[i]["recipe"], "hidden": json.loads(good[i]["hidden"]),
                        "fold": good[i]["fold"], "accuracy": round(good[i]["accuracy"], 4),
                        "lut4": good[i]["lut4"], "bram": good[i]["bram"],
                        "images_per_s": round(good[i]["images_per_s"], 1),
                        "fmax_mhz": good[i]["fmax_mhz"]}
                       for i in pareto(pts, minimize)]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", choices=("yosys", "synth"), default="yosys")
    parser.add_argument("--workers-a", type=int, default=1)
    parser.add_argument("--workers-b", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None,
                        help="copy the second run's plot here")
    args = parser.parse_args()
    spec = spec_of(args.epochs, args.steps)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (args.workers_a, args.workers_b):
            result = run_sweep(spec, Path(tmp) / f"w{workers}", workers=workers)
            runs[workers] = result
        a, b = runs[args.workers_a], runs[args.workers_b]
        same = design(a.rows) == design(b.rows)
        if args.plot and b.plots:
            shutil.copyfile(b.plots[0], args.plot)
    print(json.dumps({
        "points": len(b.rows), "steps": list(spec.steps), "epochs": args.epochs,
        "board": "icebreaker", "dataset": "digits",
        "wall_s": {str(args.workers_a): round(a.seconds, 1), str(args.workers_b):
                   round(b.seconds, 1)},
        "ratio": round(a.seconds / b.seconds, 3),
        "same_table": same,
        "failed": [{"recipe": r["recipe"], "hidden": json.loads(r["hidden"]), "fold": r["fold"],
                    "reason": r["reason"]} for r in b.rows if r["status"] != "ok"],
        "pareto": fronts(b.rows),
        "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
