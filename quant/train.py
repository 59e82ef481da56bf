"""Training loop, export with the state eval needs, and the ``bitfab train`` command."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from bitfab.errors import BitfabError
from bitfab.model import IntegerModel

from .data import Dataset, load_dataset
from .network import QuantMLP
from .recipes import RECIPES, TrainConfig, build_model

__all__ = ["TrainResult", "fit", "accuracy", "export", "train"]

#: metadata.format of models written by quant/ (bumped when the stored state changes meaning)
STATE_FORMAT = 1


@dataclass
class TrainResult:
    """A trained network and how it got there.

    Members
    -------
    config : TrainConfig
    model : QuantMLP
    history : list of dict
        Per epoch: ``loss``, ``accuracy`` (test, integer network), ``sparsity``, ``flips``
        (fraction of integer weights that changed during the epoch: the weight-freezing metric).
    seconds : float
        Wall time of the optimization steps (evaluation excluded).
    accuracy : float
        Final test accuracy (the integer network for quantized recipes).
    """

    config: TrainConfig
    model: QuantMLP
    history: list = field(default_factory=list)
    seconds: float = 0.0
    accuracy: float = 0.0


@torch.no_grad()
def predict(model: QuantMLP, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Return the eval-mode predictions (integer accumulators' argmax for quantized recipes)."""
    model.eval()
    preds = []
    for start in range(0, len(x), batch):
        out = model(torch.as_tensor(x[start:start + batch]))
        preds.append(out.argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def accuracy(model: QuantMLP, x: np.ndarray, y: np.ndarray) -> float:
    """Return the eval-mode test accuracy."""
    return float(np.mean(predict(model, x) == y)) if len(y) else 0.0


def _sparsity(weights: list[np.ndarray]) -> float:
    return float(sum(np.count_nonzero(w == 0) for w in weights) / sum(w.size for w in weights))


def fit(config: TrainConfig, data: Dataset | None = None, progress=None) -> TrainResult:
    """Train ``config`` on ``data`` (loaded from ``config.dataset`` when ``None``).

    ``progress`` is a rich ``Progress`` (or ``None`` for silence): one task per run, advanced per
    epoch, showing loss, accuracy and, where they apply, sparsity and weight-freezing.
    """
    data = data or load_dataset(config.dataset, config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config, data.features, data.classes, data.input_format, data.input_scale)
    result = TrainResult(config, model)
    x_train = torch.as_tensor(data.x_train[: config.limit], dtype=torch.float32)
    y_train = torch.as_tensor(data.y_train[: config.limit])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(y_train)
    steps = math.ceil(n / config.batch_size)
    task = progress.add_task(config.recipe, total=config.epochs, info="") if progress else None
    quantized = not model.is_float
    for epoch in range(config.epochs):
        for group in opt.param_groups:  # cosine schedule, per epoch
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
        model.set_progress(epoch / config.epochs)
        before = model.discrete() if quantized else None
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * config.batch_size:(s + 1) * config.batch_size]
            if len(idx) < 2:
                continue  # batchnorm needs two samples
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            reg = model.penalty() if quantized else 0.0
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            model.post_step()
            total += loss.item() * len(idx)
        result.seconds += time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "loss": total / n,
                 "accuracy": accuracy(model, data.x_test, data.y_test)}
        if quantized:
            after = model.discrete()
            entry["sparsity"] = _sparsity(after)
            entry["flips"] = float(sum(np.count_nonzero(a != b) for a, b in zip(after, before))
                                   / sum(a.size for a in after))
        result.history.append(entry)
        if progress is not None:
            info = f"loss {entry['loss']:.3f}  acc {100 * entry['accuracy']:.2f} %"
            if quantized:
                info += (f"  sparsity {100 * entry['sparsity']:.1f} %  "
                         f"changed {100 * entry['flips']:.2f} %")
            progress.update(task, advance=1, info=info)
    result.accuracy = result.history[-1]["accuracy"]
    return result


def export(result: TrainResult, data_name: str | None = None, extra_metadata: dict | None = None,
           ) -> IntegerModel:
    """Return the IntegerModel of a trained quantized network, with what eval needs to rebuild
    the torch reference: the config (recipe, dataset, split seed, hidden sizes, options) in
    ``metadata`` and the float state in ``extras``."""
    model = result.model
    if model.is_float:
        raise BitfabError("the float recipe is a reference and is not exportable")
    state = {f"state.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    meta = {
        "producer": "bitfab.quant", "format": STATE_FORMAT, "recipe": result.config.recipe,
        "dataset": data_name or result.config.dataset, "seed": result.config.seed,
        "hidden": list(result.config.hidden), "config": result.config.to_json(),
        "input_format": model.input_format.to_json(), "classes": model.sizes[-1],
        "features": model.sizes[0],
        "results": {"accuracy": result.accuracy, "train_seconds": result.seconds,
                    "history": result.history},
        **(extra_metadata or {}),
    }
    name = f"{result.config.recipe}-{result.config.dataset.split(':')[0]}"
    return model.export(name=name, metadata=meta, extras=state)


# --- the command ----------------------------------------------------------------------------------


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    return Progress(TextColumn("[bold]{task.description:>13}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)


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
    if not text:
        return ()
    try:
        sizes = tuple(int(h) for h in text.replace("-", ",").split(",") if h)
    except ValueError:
        raise BitfabError(f"--hidden must be sizes like 256,256, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise BitfabError(f"--hidden must be positive sizes like 256,256, not {text!r}")
    return sizes


@click.command()
@click.option("--recipe", required=True, type=click.Choice(sorted(RECIPES) + ["lstm-gates"]),
              help="Quantization method.")
@click.option("--dataset", default="digits", show_default=True,
              help="digits, mnist1d or idx:DIR (MNIST-format IDX files).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the exported model here (.bfm).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 30 on digits, else 10).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (split and training).")
@click.option("--hidden", default=None, help="Hidden sizes, e.g. 256,256.")
@click.option("--act-bits", type=int, default=None, help="Activation bits (1 = bipolar).")
@click.option("--batch-size", type=int, default=None, help="Minibatch (64 digits, 128 else).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Adam learning rate.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Quantizer option, e.g. constraint=pow2 (lutq), method=ttq (ternary).")
@click.option("--limit", type=int, default=None, help="Use only this many training examples.")
@click.option("--act-stage", type=click.Choice(["threshold", "requant"]), default="threshold",
              show_default=True, help="Fold batchnorm into thresholds or a requant stage.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Also train the float net of the same shape, for the comparison table.")
@click.option("--threads", type=int, default=None, help="torch threads (default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def train(recipe, dataset, out, epochs, seed, hidden, act_bits, batch_size, lr, options, limit,
          act_stage, reference, threads, as_json):
    """Train a quantized MLP with a recipe, export it, report float vs quantized accuracy."""
    from rich.console import Console
    from rich.table import Table

    from bitfab.cli import emit_json

    # one thread by default: these small matmuls gain little from more, and on a shared machine
    # two threads were measured 20x slower than one
    torch.set_num_threads(threads or 1)
    if recipe == "lstm-gates":  # sequence models: bitfab.quant.lstm_train
        from .lstm_train import train_lstm
        train_lstm(dataset, out, epochs, seed, (_hidden(hidden) or (None,))[0],
                   {"lr": lr, **_options(options)}, limit, reference, as_json)
        return
    small = dataset in ("digits", "mnist1d")
    config = TrainConfig(recipe, dataset, _hidden(hidden), act_bits,
                         epochs or (30 if small else 10), batch_size or (64 if small else 128),
                         lr, 0.0, seed, _options(options), limit, act_stage)
    if recipe == "float" and out:
        raise BitfabError("the float recipe is a reference and is not exportable: drop --out")
    con = Console(stderr=as_json, highlight=False)
    data = load_dataset(dataset, seed)
    runs = {}
    with _progress(con) as progress:
        runs[recipe] = fit(config, data, progress)
        if reference and recipe != "float":
            ref = TrainConfig("float", dataset, config.hidden, None, config.epochs,
                              config.batch_size, lr, 0.0, seed, {}, limit)
            runs["float"] = fit(ref, data, progress)
    result = runs[recipe]
    summary = {"recipe": recipe, "dataset": dataset, "hidden": list(config.hidden),
               "act_bits": config.act_bits, "epochs": config.epochs, "accuracy": result.accuracy,
               "train_seconds": result.seconds}
    if "float" in runs and recipe != "float":
        summary["float_accuracy"] = runs["float"].accuracy
        summary["float_seconds"] = runs["float"].seconds
        summary["time_ratio"] = result.seconds / max(runs["float"].seconds, 1e-9)
    if recipe != "float":
        model = export(result, extra_metadata={"float_accuracy": summary.get("float_accuracy")})
        summary.update(weight_bits=model.weight_bits, fp32_bits=model.fp32_bits,
                       memory_reduction=model.memory_reduction,
                       sparsity=_sparsity([la.weights for la in model.layers]))
        if out:
            model.save(out)
            summary["out"] = str(out)
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"{recipe} on {dataset} ({'-'.join(map(str, result.model.sizes))})")
    for col in ("network", "test accuracy", "weight memory", "vs fp32", "train time"):
        table.add_column(col, justify="left" if col == "network" else "right")
    fp32 = 32 * sum(la.weight.numel() for la in result.model.layers)
    if "float" in runs:
        table.add_row("float32", f"{100 * runs['float'].accuracy:.2f} %", f"{fp32} b", "-",
                      f"{runs['float'].seconds:.1f} s")
    if recipe != "float":
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
        con.print(f"wrote {out}")
