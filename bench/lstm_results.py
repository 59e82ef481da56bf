"""Train the LSTM variants side by side over seeds, check every export bit for bit, write the
results table.

For each task (``ner``: entity-level F1 of a Bi-LSTM tagger; ``digits``: accuracy of a forward
LSTM reading 8x8 images row by row) and each seed this trains, with the same seed, epochs and
data split:

- the float LSTM (sigmoid gates, float weights),
- gates quantized to {0, 0.5, 1} with float weights (torch only: float weights have no
  integer form),
- gates quantized with ternary and with pow2 weights, scored through the exported
  IntegerModel; the golden model (:mod:`bitfab.sim.lstm`) is run on the whole test set and must
  equal the torch integer eval bit for bit (the run stops otherwise).

``ner`` uses the ``bitfab train --recipe lstm-gates --dataset ner`` defaults
(:func:`bitfab.quant.lstm_train.lstm_config`); ``--epochs`` overrides their epochs. The table
gives, per network, the mean score over the seeds, its sample standard deviation and range, and
the mean of the per-seed deltas to the float network of the same seed.

Usage::

    .venv/bin/python bench/lstm_results.py [--tasks ner,digits] [--seeds 0,1,2] [--epochs N]
        [--json PATH] [--table [docs/results/lstm.md]]

Prints one JSON object per run and a summary on stdout; ``--table`` writes the markdown table,
with the command that made it, to ``docs/results/lstm.md`` (or the page given).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bitfab.quant.lstm_data import Sentences
from bitfab.quant.lstm_train import (
    CHAR_FEATURES,
    LstmConfig,
    _load,
    fit_lstm,
    integer_forward,
    lstm_config,
    ner_inputs,
)
from bitfab.sim.golden import execute

#: digits rows: the settings of the first table (``ner``: the recipe's defaults)
DIGITS = {"hidden": 32, "lr": 0.01, "epochs": 20}
#: (gate_quant, weights, changes to the base configuration, label suffix); the delta of each is
#: to the first (the float network of the task's settings)
VARIANTS = [(False, "float", {}, ""), (True, "float", {}, ""), (True, "ternary", {}, ""),
            (True, "pow2", {}, "")]
#: ``ner`` also trains the float tagger with the hashed character features
NER_VARIANTS = VARIANTS[:1] + [(False, "float", {"features": CHAR_FEATURES},
                                ", + character features (pre3, suf3, pattern)")] + VARIANTS[1:]
#: the page ``--table`` writes
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "lstm.md"


def base_config(task: str, seed: int, epochs: int | None) -> LstmConfig:
    """Return the float-network configuration of a task and seed (the table's settings)."""
    if task == "ner":
        cfg = lstm_config("ner", epochs, seed, None, {}, None)
        return LstmConfig(**{**cfg.__dict__, "gate_quant": False, "weights": "float"})
    return LstmConfig(task, False, "float", seed=seed,
                      **{**DIGITS, **({"epochs": epochs} if epochs else {})})


def check_golden(result, count: int | None = None) -> int:
    """Run the golden model on the first ``count`` test sequences (None: the whole test set)
    and compare it with the torch integer eval; return the number of steps compared."""
    model, data = result.model, result.data
    if isinstance(data, Sentences):
        ids, _, lengths = data.batch(data.test[:count])
        x = ner_inputs(model, ids)
    else:
        x = data[2][:count]
        lengths = np.full(len(x), data[4])
    h, logits = integer_forward(model, x, lengths)
    trace = execute(model, x, lengths)
    np.testing.assert_array_equal(trace.outputs[0], h.numpy())
    np.testing.assert_array_equal(trace.output, logits.numpy())
    return int(lengths.sum())


def summarize(rows: list[dict]) -> list[dict]:
    """Group the runs by task and network: mean, sample std and range of the score (points),
    mean and std of the per-seed delta to float, golden-checked steps in all."""
    out = []
    for key in dict.fromkeys((r["task"], r["variant"]) for r in rows):
        group = [r for r in rows if (r["task"], r["variant"]) == key]
        scores = np.array([100 * r["score"] for r in group])
        deltas = np.array([r["delta_points"] for r in group])
        ddof = 1 if len(group) > 1 else 0
        out.append({"task": key[0], "variant": key[1], "metric": group[0]["metric"],
                    "seeds": [r["seed"] for r in group], "scores": scores.round(2).tolist(),
                    "mean": float(scores.mean()), "std": float(scores.std(ddof=ddof)),
                    "min": float(scores.min()), "max": float(scores.max()),
                    "delta_mean": float(deltas.mean()), "delta_std": float(deltas.std(ddof=ddof)),
                    "integer": group[0]["integer"],
                    "golden_steps_checked": sum(r.get("golden_steps_checked", 0) for r in group),
                    "train_seconds": round(sum(r["train_seconds"] for r in group), 1)})
    return out


def table_lines(groups: list[dict], command: str) -> list[str]:
    lines = ["# Measured results: LSTM", "",
             "Generated by `bench/lstm_results.py --table` (do not edit by hand); command:", "",
             f"    {command}", "",
             "Mean over the seeds, sample standard deviation, range; the delta is the mean of "
             "each seed's difference to the float network of that seed (its standard deviation "
             "in brackets).", "",
             "| task | network | seeds | mean | std | min .. max | delta to float | "
             "integer model, golden-checked |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for g in groups:
        checked = f"yes ({g['golden_steps_checked']} steps)" if g["integer"] else \
            "no (torch float)"
        lines.append(f"| {g['task']} ({g['metric']}) | {g['variant']} | {len(g['seeds'])} | "
                     f"{g['mean']:.2f} % | {g['std']:.2f} | {g['min']:.2f} .. {g['max']:.2f} | "
                     f"{g['delta_mean']:+.2f} ({g['delta_std']:.2f}) | {checked} |")
    return lines


def run_seed(task: str, seed: int, epochs: int | None) -> list[dict]:
    """Train the four networks of one task and seed; return their rows."""
    torch.set_num_threads(1)
    base = base_config(task, seed, epochs)
    data = _load(base)
    rows, float_score = [], None
    for gate_quant, weights, changes, suffix in NER_VARIANTS if task == "ner" else VARIANTS:
        cfg = LstmConfig(**{**base.__dict__, "gate_quant": gate_quant, "weights": weights,
                            **changes})
        start = time.perf_counter()
        result = fit_lstm(cfg, data if not changes else None)
        row = {"task": task, "seed": seed, "variant": cfg.label + suffix,
               "metric": "entity F1" if task == "ner" else "accuracy",
               "score": result.score, "integer": cfg.exportable,
               "train_seconds": round(result.seconds, 1),
               "wall_seconds": round(time.perf_counter() - start, 1)}
        if float_score is None:
            float_score = result.score
        row["delta_points"] = 100 * (result.score - float_score)
        if result.model is not None:
            row["golden_steps_checked"] = check_golden(result)
            row["weight_bits"] = result.model.weight_bits
            row["fp32_bits"] = result.model.fp32_bits
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="ner,digits")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the epochs (ner: the recipe's, digits: 20)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train this many (task, seed) groups in parallel processes")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, nargs="?", const=RESULTS, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = args.tasks.split(",")
    begin = time.perf_counter()
    work = [(task, seed, args.epochs) for task in tasks for seed in seeds]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(args.jobs) as pool:
            parts = list(pool.map(run_seed, *zip(*work)))
    else:
        parts = [run_seed(*w) for w in work]
    rows = [r for part in parts for r in part]  # in (task, seed, network) order either way
    configs = {task: {k: v for k, v in base_config(task, 0, args.epochs).__dict__.items()
                      if k not in ("gate_quant", "weights", "seed")} for task in tasks}
    groups = summarize(rows)
    summary = {"seeds": seeds, "configs": configs, "machine": platform.machine(),
               "torch_threads": 1, "jobs": args.jobs,
               "wall_seconds": round(time.perf_counter() - begin, 1), "rows": rows,
               "groups": groups}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=list))
    if args.table:
        command = "python bench/lstm_results.py " + " ".join(sys.argv[1:])
        args.table.write_text("\n".join(table_lines(groups, command)) + "\n")
    print(json.dumps(summary, default=list))


if __name__ == "__main__":
    main()
