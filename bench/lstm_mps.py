"""Rank sweep: LSTM gate matrices as MPS chains vs the MPO (TT-matrix) baseline vs dense.

For one task (``digits``: accuracy of a forward LSTM reading 8x8 images row by row; ``ner``:
entity F1 of the Bi-LSTM tagger) this trains, with the same seed, epochs, data split and core
quantizer (``--weights``, the gates quantized to {0, .5, 1} throughout):

- the dense gate-quantized LSTM (the reference),
- ``compress=mps:R`` for every ``--mps`` rank and ``compress=mpo:R`` for every ``--mpo`` rank,
  trained directly in chain form (``--init svd``: started from the TT-SVD of the trained dense
  network's latent weights instead, then fine-tuned for the same epochs).

Every network is scored through its exported integer model (torch integer eval); every exported
``lstm_mps`` model is also run through the golden model on ``--golden`` test sequences and must
match bit for bit (the run stops otherwise). "params" counts the LSTM's gate weights (cores for
chains; embeddings, biases and the head are the same for all and not counted).

Usage::

    .venv/bin/python bench/lstm_mps.py --task digits --epochs 10 --mps 2,4,6,8 --mpo 1,2,3,4 \\
        --json build/lstm_mps.json --table docs/results/lstm-mps.md --plot docs/results/lstm-mps.png
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
from lstm_results import check_golden  # the sibling script (bench/ is on the path)

from bitfab.quant.lstm_mps import dense_param_count
from bitfab.quant.lstm_train import LstmConfig, _load, fit_lstm

SETTINGS = {"ner": {"hidden": 32, "lr": 0.005}, "digits": {"hidden": 32, "lr": 0.01}}


def _svd_init(dense_net):
    def init(net):
        state = {k: v for k, v in dense_net.state_dict().items()
                 if not k.startswith("lstm.compressed")}
        net.load_state_dict(state, strict=False)
        net.lstm.compressed.from_dense(dense_net.lstm.weight.detach())
    return init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits", choices=sorted(SETTINGS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--weights", default="pow2", choices=["ternary", "pow2", "int8", "float"],
                    help="core / gate weight quantizer (float: scored in torch, no export)")
    ap.add_argument("--mps", default="2,4,6,8")
    ap.add_argument("--mpo", default="1,2,3,4")
    ap.add_argument("--init", default="direct", choices=["direct", "svd"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--golden", type=int, default=64, help="test sequences golden-checked")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--from-json", type=Path, nargs="+",
                    help="no training: combine these sweeps' JSON into --table and --plot")
    args = ap.parse_args()
    if args.from_json:
        sweeps = [json.loads(p.read_text()) for p in args.from_json]
        if args.table:
            args.table.write_text(seed_means(sweeps) + "\n".join(section(s) for s in sweeps))
        if args.plot:
            plot(sweeps, args.plot)
        return
    torch.set_num_threads(args.threads)
    st = SETTINGS[args.task]
    base = LstmConfig(args.task, True, args.weights, st["hidden"], epochs=args.epochs,
                      lr=st["lr"], seed=args.seed)
    data = _load(base)
    runs, started = [], time.time()
    plan = [(None, 0)] + [("mps", int(r)) for r in args.mps.split(",") if r] \
        + [("mpo", int(r)) for r in args.mpo.split(",") if r]
    dense_net = None
    for method, rank in plan:
        cfg = LstmConfig(**{**base.__dict__,
                            "compress": f"{method}:{rank}" if method else None})
        init = _svd_init(dense_net) if method and args.init == "svd" else None
        t0 = time.time()
        res = fit_lstm(cfg, data, init=init)
        lstm = res.net.lstm
        if method is None:
            dense_net = res.net
            params = dense_param_count(lstm.n_in, lstm.hidden, lstm.directions)
        else:
            params = lstm.compressed.param_count
        layer = res.model.layers[0] if res.model is not None else None
        steps = check_golden(res, args.golden) if layer and layer.kind == "lstm_mps" else 0
        run = {"method": method or "dense", "rank": rank, "params": params,
               "score": res.score, "train_seconds": res.seconds,
               "wall_seconds": time.time() - t0, "golden_steps": steps}
        if layer is not None:
            run.update(layer=layer.describe(), acc_bits=int(layer.acc_bits))
        if layer is not None and layer.kind == "lstm_mps":
            run["stage_bits"] = layer.stage_bits[0]
            run["ranks"] = list(layer.ranks)
            run["macs"] = layer.macs
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    out = {"task": args.task, "weights": args.weights, "epochs": args.epochs,
           "hidden": st["hidden"], "init": args.init, "seed": args.seed,
           "metric": "entity F1" if args.task == "ner" else "accuracy",
           "machine": platform.processor() or platform.machine(),
           "wall_seconds": time.time() - started, "command": " ".join(sys.argv), "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    if args.table:
        args.table.write_text(section(out))
    if args.plot:
        plot([out], args.plot)
    print(json.dumps(out))


def table(out: dict) -> str:
    """The markdown results table of one sweep."""
    dense = next(r for r in out["runs"] if r["method"] == "dense")
    lines = [f"| gate matrices | rank | params | x fewer | {out['metric']} | delta (points) "
             f"| train s | golden steps |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in out["runs"]:
        lines.append(f"| {r['method']} | {r['rank'] or '-'} | {r['params']} | "
                     f"{dense['params'] / r['params']:.1f} | {100 * r['score']:.2f} % | "
                     f"{100 * (r['score'] - dense['score']):+.2f} | {r['train_seconds']:.0f} | "
                     f"{r['golden_steps'] or '-'} |")
    return "\n".join(lines) + "\n"


def _name(out: dict) -> str:
    return (f"{out['task']}, {out['weights']} cores, {out['init']}, seed {out['seed']}")


def section(out: dict) -> str:
    """A markdown section: the sweep's settings, command, wall time and table."""
    return (f"### {_name(out)}\n\n{out['epochs']} epochs, hidden {out['hidden']}; "
            f"wall time {out['wall_seconds'] / 60:.1f} min (machine shared with other jobs); "
            f"command:\n\n    .venv/bin/python {out['command']}\n\n{table(out)}")


def _points(group: list, method: str) -> dict:
    """``{rank: [runs]}`` of ``method`` over the sweeps of ``group`` (one run per seed: a point
    rerun with the same seed, e.g. the dense reference of every sweep, counts once)."""
    out: dict = {}
    for s in group:
        for r in s["runs"]:
            if r["method"] == method:
                out.setdefault(r["rank"], {}).setdefault(s["seed"], r)
    return {rank: list(by_seed.values()) for rank, by_seed in sorted(out.items())}


def seed_means(sweeps: list) -> str:
    """Mean and spread over the seeds of sweeps with the same task, cores, init and epochs (the
    (method, rank) points every seed has), as markdown; empty when no setting has two seeds."""
    groups: dict = {}
    for s in sweeps:
        groups.setdefault((s["task"], s["weights"], s["init"], s["epochs"]), []).append(s)
    text = ""
    for (task, weights, init, epochs), group in groups.items():
        if len(group) < 2:
            continue
        points = {(m, rank): rs for m in ("dense", "mps", "mpo")
                  for rank, rs in _points(group, m).items() if len(rs) > 1}
        keys = set(points)
        seeds = ", ".join(sorted({str(s["seed"]) for s in group}))
        text += (f"### Mean over seeds {seeds}: {task}, {weights} cores, {init}, {epochs} epochs"
                 f" (points run more than once)\n\n| gate matrices | rank | params | runs | "
                 f"mean {group[0]['metric']} | min .. max | mean delta to dense (points) |\n"
                 f"| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
        dense = [r["score"] for r in _points(group, "dense")[0]]
        for method, rank in sorted(keys, key=lambda k: (k[0] != "dense", points[k][0]["params"])):
            rs = points[(method, rank)]
            sc = np.array([r["score"] for r in rs]) * 100
            text += (f"| {method} | {rank or '-'} | {rs[0]['params']} | {len(rs)} | "
                     f"{sc.mean():.2f} % | "
                     f"{sc.min():.2f} .. {sc.max():.2f} | "
                     f"{round(sc.mean() - 100 * np.mean(dense), 2) + 0.0:+.2f} |\n")
        text += "\n"
    return text


def plot(sweeps: list, path: Path) -> None:
    """One panel per task; sweeps of the same cores, init and epochs are averaged over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(s["task"] for s in sweeps))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks, strict=True):
        groups: dict = {}
        for s in sweeps:
            if s["task"] == task:
                groups.setdefault((s["weights"], s["init"], s["epochs"]), []).append(s)
        for i, ((weights, init, epochs), group) in enumerate(groups.items()):
            color = colors[i % len(colors)]
            name = f"{weights} cores, {init}, {epochs} epochs, " + (
                "mean over the seeds run" if len(group) > 1 else f"seed {group[0]['seed']}")
            for method, style in (("dense", "*"), ("mps", "o-"), ("mpo", "s--")):
                pts = [(rs[0]["params"], 100 * np.mean([r["score"] for r in rs]))
                       for rs in _points(group, method).values()]
                pts.sort()
                ax.plot([p for p, _ in pts], [v for _, v in pts], style, color=color,
                        ms=10 if method == "dense" else 6, label=f"{method.upper()}: {name}")
        dense = next(r for s in sweeps if s["task"] == task for r in s["runs"]
                     if r["method"] == "dense")
        ax.axvline(dense["params"] / 10, color="gray", lw=0.7, ls="-.", label="10x fewer")
        ax.set_xscale("log")
        ax.set_xlabel("LSTM gate weight parameters (cores, or the dense matrices)")
        metric = next(s["metric"] for s in sweeps if s["task"] == task)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{task}: gate matrices as MPS / MPO chains vs dense")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
