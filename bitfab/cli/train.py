"""``bitfab train``: quantization-aware training with a recipe, export, float vs quantized."""

from __future__ import annotations

import re
from pathlib import Path

import click

from bitfab.errors import BitfabError

from .ui import SEED, FiniteFloat, check_output_file, emit_json, label, training_progress

__all__ = ["train"]

#: recipes of ``bitfab.quant.recipes`` (listed here so that ``--help`` needs no torch)
RECIPES = ("binary", "cnn-binary", "cnn-float", "cnn-ternary", "cnn-twobit", "denseshift",
           "float", "int8", "lutq", "pow2", "resnet-denseshift", "resnet-float", "resnet-pow2",
           "sparse-binary", "ternary", "twobit")
#: the convolutional recipes (bitfab.quant.conv) -> their float twin
FLOAT_TWIN = {r: f"{r.split('-')[0]}-float" for r in RECIPES if r.startswith(("cnn-", "resnet-"))}


def _options(pairs) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BitfabError(f"--option must be KEY=VALUE, not {pair!r}")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def _hidden(text: str | None) -> tuple:
    if text is None:
        return ()
    if not re.fullmatch(r"\s*\d+(\s*[,-]\s*\d+)*\s*", text):
        raise BitfabError(f"--hidden must be sizes like 256,256, not {text!r}")
    sizes = tuple(int(h) for h in re.split(r"[,-]", text))
    if min(sizes) < 1:
        raise BitfabError(f"--hidden must be positive sizes like 256,256, not {text!r}")
    return sizes


@click.command()
@click.option("--recipe", required=True, type=click.Choice(list(RECIPES) + ["lstm-gates"]),
              help="Quantization method.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits, mnist1d, fashion-mnist or idx:DIR (MNIST-format IDX files).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the exported model here (.bfm).")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=None,
              help="Epochs (default 30 on digits and mnist1d, else 10; lstm-gates 15).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed (split and training).")
@click.option("--hidden", default=None,
              help="Hidden sizes, e.g. 256,256 (cnn-/resnet-: channel widths; at most 16 Mi "
                   "weights in all; lstm-gates: one "
                   "size, at most 1024).")
@click.option("--act-bits", type=int, default=None, help="Activation bits, 1..8 (1 = bipolar).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help="Minibatch (64 digits, 128 else).")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Adam learning rate (default: the recipe's, 0.01; resnet-denseshift 0.02).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Quantizer option, e.g. constraint=pow2 (lutq), method=ttq (ternary).")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only this many training examples.")
@click.option("--act-stage", type=click.Choice(["threshold", "requant"]), default="threshold",
              show_default=True, help="Fold batchnorm into thresholds or a requant stage.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also train the float net of the same shape, for the comparison table.")
@click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="torch threads.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def train(recipe, dataset, out, epochs, seed, hidden, act_bits, batch_size, lr, options, limit,
          act_stage, reference, threads, as_json):
    """Train a quantized MLP, CNN or ResNet with a recipe, export it, report float vs quantized
    accuracy."""
    # everything a user can get wrong is refused here, before torch is imported
    if recipe.endswith("float") and out:
        raise BitfabError(f"the {recipe} recipe is a reference and is not exportable: drop --out")
    if recipe.startswith("cnn-") and dataset == "mnist1d":
        raise BitfabError(f"recipe {recipe} is a 2-D CNN and dataset mnist1d holds 1-D signals: "
                          f"use resnet-pow2 or resnet-denseshift")
    if out is not None:
        out = check_output_file(out)
    sizes, opts = _hidden(hidden), _options(options)
    if recipe == "lstm-gates" and len(sizes) > 1:
        raise BitfabError(f"lstm-gates takes one hidden size, not {hidden!r}")
    if recipe == "lstm-gates" and (act_bits is not None or batch_size is not None):
        raise BitfabError("lstm-gates takes no --act-bits or --batch-size (give "
                          "--option hidden_bits=N or --option batch_size=N)")

    import torch
    from rich.console import Console
    from rich.table import Table

    from bitfab.quant.data import load_dataset
    from bitfab.quant.recipes import TrainConfig
    from bitfab.quant.train import _sparsity, export, fit

    # one thread by default: these small matmuls gain little from more, and on a shared machine
    # two threads were measured 20x slower than one
    torch.set_num_threads(threads)
    if recipe == "lstm-gates":  # sequence models: bitfab.quant.lstm_train
        _train_lstm(dataset, out, epochs, seed, (sizes or (None,))[0],
                    {**({} if lr is None else {"lr": lr}), **opts}, limit, reference,
                    as_json)
        return
    small = dataset in ("digits", "mnist1d")
    config = TrainConfig(recipe, dataset, sizes, act_bits,
                         epochs if epochs is not None else (30 if small else 10),
                         batch_size if batch_size is not None else (64 if small else 128),
                         lr, 0.0, seed, opts, limit, act_stage)
    con = Console(stderr=as_json, highlight=False)
    data = load_dataset(dataset, seed)
    runs = {}
    twin = FLOAT_TWIN.get(recipe, "float")
    with training_progress(con) as progress:
        runs[recipe] = fit(config, data, progress)
        if recipe == twin:
            runs["float"] = runs[recipe]
        if reference and recipe != twin:
            ref = TrainConfig(twin, dataset, config.hidden, None, config.epochs,
                              config.batch_size, lr, 0.0, seed, {}, limit)
            runs["float"] = fit(ref, data, progress)
    result = runs[recipe]
    summary = {"recipe": recipe, "dataset": dataset, "hidden": list(config.hidden),
               "act_bits": config.act_bits, "epochs": config.epochs, "accuracy": result.accuracy,
               "train_seconds": result.seconds}
    if "float" in runs and recipe != twin:
        summary["float_accuracy"] = runs["float"].accuracy
        summary["float_seconds"] = runs["float"].seconds
        summary["time_ratio"] = result.seconds / max(runs["float"].seconds, 1e-9)
    if recipe != twin:
        model = export(result, extra_metadata={"float_accuracy": summary.get("float_accuracy")})
        summary.update(weight_bits=model.weight_bits, fp32_bits=model.fp32_bits,
                       memory_reduction=model.memory_reduction,
                       sparsity=_sparsity([la.weights for la in model.layers
                                           if getattr(la, "weights", None) is not None]))
        if out:
            _save(model, out)
            summary["out"] = str(out)
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"{recipe} on {label(dataset)} ({'-'.join(map(str, result.model.sizes))})")
    for col in ("network", "test accuracy", "weight memory", "vs fp32", "train time"):
        table.add_column(col, justify="left" if col == "network" else "right")
    fp32 = 32 * sum(la.weight.numel() for la in result.model.layers)
    if "float" in runs:
        table.add_row("float32", f"{100 * runs['float'].accuracy:.2f} %", f"{fp32} b", "-",
                      f"{runs['float'].seconds:.1f} s")
    if recipe != twin:
        ratio = f" (x{summary['time_ratio']:.2f})" if "time_ratio" in summary else ""
        table.add_row(f"{recipe} (integer)", f"{100 * result.accuracy:.2f} %",
                      f"{summary['weight_bits']} b",
                      f"-{100 * summary['memory_reduction']:.2f} %",
                      f"{result.seconds:.1f} s{ratio}")
    con.print(table)
    if "float_accuracy" in summary:
        con.print(f"delta to float: {100 * (result.accuracy - summary['float_accuracy']):+.2f} "
                  f"points")
    if out:
        con.print(f"wrote {label(out)}")


def _save(model, out: Path) -> None:
    try:
        model.save(out)
    except OSError as exc:
        raise BitfabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None


def _train_lstm(dataset: str, out, epochs: int | None, seed: int, hidden: int | None,
                options: dict, limit: int | None, reference: bool, as_json: bool) -> dict:
    """``bitfab train --recipe lstm-gates``: float vs gate-quantized score and the delta."""
    from rich.console import Console
    from rich.table import Table

    from bitfab.quant.lstm_train import LstmConfig, fit_lstm, load_task, lstm_config

    base = lstm_config(dataset, epochs, seed, hidden, options, limit)
    con = Console(stderr=as_json, highlight=False)
    data = load_task(base)
    metric = "entity F1" if dataset == "ner" else "accuracy"
    runs = {}
    with training_progress(con) as progress:
        runs["quant"] = fit_lstm(base, data, progress)
        if reference:
            runs["float"] = fit_lstm(LstmConfig(**{**base.__dict__, "gate_quant": False,
                                                   "weights": "float"}), data, progress)
    quant = runs["quant"]
    summary = {"recipe": "lstm-gates", "dataset": dataset, "metric": metric,
               "weights": base.weights, "hidden": base.hidden, "epochs": base.epochs,
               "score": quant.score, "train_seconds": quant.seconds}
    if "float" in runs:
        summary["float_score"] = runs["float"].score
        summary["delta_points"] = 100 * (quant.score - runs["float"].score)
    if quant.model is not None and out:
        _save(quant.model, out)
        summary["out"] = str(out)
    if as_json:
        emit_json(summary)
        return summary
    table = Table(title=f"lstm-gates on {label(dataset)} (hidden {base.hidden})")
    for col in ("network", metric, "train time"):
        table.add_column(col, justify="left" if col == "network" else "right")
    if "float" in runs:
        table.add_row("float LSTM", f"{100 * runs['float'].score:.2f} %",
                      f"{runs['float'].seconds:.1f} s")
    table.add_row(f"{base.label} (integer)", f"{100 * quant.score:.2f} %",
                  f"{quant.seconds:.1f} s")
    con.print(table)
    if "delta_points" in summary:
        con.print(f"delta to float: {summary['delta_points']:+.2f} points")
    if out:
        con.print(f"wrote {label(out)}")
    return summary
