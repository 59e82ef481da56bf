"""Train the LSTM variants side by side, check every export bit for bit, write the README table.

For each task (``ner``: entity-level F1 of a Bi-LSTM tagger; ``digits``: accuracy of a forward
LSTM reading 8x8 images row by row) this trains, with the same seed, epochs and data split:

- the float LSTM (sigmoid gates, float weights),
- gates quantized to {0, 0.5, 1} with float weights (torch only: float weights have no
  integer form),
- gates quantized with ternary and with pow2 weights, scored through the exported
  IntegerModel; the golden model (:mod:`bitfab.sim.lstm`) is run on the whole test set and must
  equal the torch integer eval bit for bit (the run stops otherwise).

Usage::

    .venv/bin/python bench/lstm_results.py [--tasks ner,digits] [--epochs 20] [--json PATH]
        [--table PATH]

Prints one JSON object on stdout; ``--table`` writes the markdown table of the README's ``## LSTM``
section.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bitfab.quant.lstm_data import Sentences
from bitfab.quant.lstm_train import LstmConfig, _load, fit_lstm, integer_forward, ner_inputs
from bitfab.sim.golden import execute

SETTINGS = {"ner": {"hidden": 48, "lr": 0.005}, "digits": {"hidden": 32, "lr": 0.01}}
VARIANTS = [(False, "float"), (True, "float"), (True, "ternary"), (True, "pow2")]


def _check_golden(result) -> int:
    """Run the golden model on the whole test set; return the number of steps compared."""
    model, data = result.model, result.data
    if isinstance(data, Sentences):
        words, shapes, _, lengths = data.batch(data.test)
        x = ner_inputs(model, words, shapes)
    else:
        x = data[2]
        lengths = np.full(len(x), data[4])
    h, logits = integer_forward(model, x, lengths)
    trace = execute(model, x, lengths)
    np.testing.assert_array_equal(trace.outputs[0], h.numpy())
    np.testing.assert_array_equal(trace.output, logits.numpy())
    return int(lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="ner,digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for task in args.tasks.split(","):
        base = LstmConfig(task, epochs=args.epochs, seed=args.seed, **SETTINGS[task])
        data = _load(base)
        float_score = None
        for gate_quant, weights in VARIANTS:
            cfg = LstmConfig(**{**base.__dict__, "gate_quant": gate_quant, "weights": weights})
            start = time.perf_counter()
            result = fit_lstm(cfg, data)
            row = {"task": task, "variant": cfg.label, "metric": "entity F1" if task == "ner"
                   else "accuracy", "score": result.score, "integer": cfg.exportable,
                   "train_seconds": round(result.seconds, 1),
                   "wall_seconds": round(time.perf_counter() - start, 1)}
            if not gate_quant:
                float_score = result.score
            row["delta_points"] = 100 * (result.score - float_score)
            if result.model is not None:
                row["golden_steps_checked"] = _check_golden(result)
                row["weight_bits"] = result.model.weight_bits
                row["fp32_bits"] = result.model.fp32_bits
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"epochs": args.epochs, "seed": args.seed, "settings": SETTINGS,
               "machine": platform.machine(), "torch_threads": 1, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    if args.table:
        lines = ["| task | network | score | delta to float | integer model, golden-checked |",
                 "| --- | --- | ---: | ---: | --- |"]
        for r in rows:
            checked = f"yes ({r['golden_steps_checked']} steps)" if r["integer"] else \
                "no (torch float)"
            lines.append(f"| {r['task']} ({r['metric']}) | {r['variant']} | "
                         f"{100 * r['score']:.2f} % | {r['delta_points']:+.2f} | {checked} |")
        args.table.write_text("\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
