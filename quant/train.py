"""Training loop and export with the state eval needs (the command is :mod:`bitfab.cli.train`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bitfab.errors import BitfabError
from bitfab.model import IntegerModel

from .data import Dataset, load_dataset
from .network import QuantMLP
from .recipes import TrainConfig, build_model

__all__ = ["TrainResult", "fit", "fit_interleaved", "accuracy", "export"]

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


def fit_interleaved(configs, data: Dataset, progress=None, eval_every: int = 1
                    ) -> list[TrainResult]:
    """Train ``configs`` on ``data`` in lockstep and return their results in order.

    Every minibatch is stepped by each network in turn (the order alternating per step), each
    step timed on its own, so that the step times of a quantized network and its float twin are
    measured under the same machine load: :attr:`TrainResult.seconds` of each is the sum of its
    own steps. Each network sees the minibatches of its own seed, as :func:`fit` does. The
    test accuracy is measured every ``eval_every`` epochs and after the last.
    """
    runs = []
    for config in configs:
        torch.manual_seed(config.seed)
        model = build_model(config, data.features, data.classes, data.input_format,
                            data.input_scale)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr,
                               weight_decay=config.weight_decay)
        gen = torch.Generator().manual_seed(config.seed)
        task = progress.add_task(config.recipe, total=config.epochs, info="") \
            if progress else None
        runs.append((config, TrainResult(config, model), opt, gen, task))
    if len({(c.epochs, c.batch_size, c.limit) for c in configs}) > 1:
        raise BitfabError("interleaved runs need the same epochs, batch size and limit")
    config0 = configs[0]
    x_train = torch.as_tensor(data.x_train[: config0.limit], dtype=torch.float32)
    y_train = torch.as_tensor(data.y_train[: config0.limit])
    n = len(y_train)
    steps = math.ceil(n / config0.batch_size)
    for epoch in range(config0.epochs):
        orders = []
        for config, result, opt, gen, _ in runs:
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
            result.model.set_progress(epoch / config.epochs)
            result.model.train()
            orders.append(torch.randperm(n, generator=gen))
        totals = [0.0] * len(runs)
        for s in range(steps):
            turn = range(len(runs)) if s % 2 == 0 else reversed(range(len(runs)))
            for k in turn:
                config, result, opt, _, _ = runs[k]
                idx = orders[k][s * config.batch_size:(s + 1) * config.batch_size]
                if len(idx) < 2:
                    continue
                model = result.model
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                reg = model.penalty() if not model.is_float else 0.0
                opt.zero_grad()
                (loss + reg).backward()
                opt.step()
                model.post_step()
                result.seconds += time.perf_counter() - t0
                totals[k] += loss.item() * len(idx)
        last = epoch + 1 == config0.epochs
        for k, (_, result, _, _, task) in enumerate(runs):
            entry = {"epoch": epoch + 1, "loss": totals[k] / n, "seconds": result.seconds}
            if last or (epoch + 1) % eval_every == 0:
                entry["accuracy"] = accuracy(result.model, data.x_test, data.y_test)
            result.history.append(entry)
            if progress is not None:
                acc = f"  acc {100 * entry['accuracy']:.2f} %" if "accuracy" in entry else ""
                progress.update(task, advance=1, info=f"loss {entry['loss']:.3f}{acc}")
    for _, result, _, _, _ in runs:
        result.accuracy = result.history[-1]["accuracy"]
    return [result for _, result, _, _, _ in runs]


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
