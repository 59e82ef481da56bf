"""Rebuild the torch reference of an exported model and compare it with the golden model.

A ``.bfm`` written by :func:`bitfab.quant.train.export` carries its training configuration in
``metadata`` and the float state in ``extras``. :func:`rebuild` turns them back into a
:class:`~bitfab.quant.network.QuantMLP`, whose eval-mode integer forward recomputes every integer
layer from the float state; :func:`compare` runs it and the golden model (on the *stored* layers)
over a dataset's test split and counts disagreements.
"""

from __future__ import annotations

import numpy as np
import torch

from bitfab.errors import BitfabError, ModelFormatError
from bitfab.model import IntegerModel

from .data import Dataset, load_dataset
from .network import QuantMLP
from .recipes import TrainConfig, build_model

__all__ = ["rebuild", "compare"]


def rebuild(model: IntegerModel) -> QuantMLP:
    """Return the torch network stored in ``model``'s metadata and extras (eval mode)."""
    meta = model.metadata
    if meta.get("producer") != "bitfab.quant" or "config" not in meta:
        raise BitfabError(f"{model.name}: the model carries no training state (it was not "
                          f"written by bitfab train), so there is no torch reference to compare")
    config = TrainConfig.from_json(dict(meta["config"]))
    try:
        from bitfab.model import InputFormat
        fmt = InputFormat(**meta["input_format"])
        net = build_model(config, int(meta["features"]), int(meta["classes"]), fmt,
                          model.input_scale)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"metadata: cannot rebuild the network ({exc})") from None
    state = {k[len("state."):]: torch.from_numpy(np.array(v)) for k, v in model.extras.items()
             if k.startswith("state.")}
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise ModelFormatError(f"extras: the float state lacks {sorted(missing)[:3]}")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFormatError(f"extras: the float state does not fit the network "
                               f"({str(exc).splitlines()[0][:160]})") from None
    return net.eval()


def compare(model: IntegerModel, data: Dataset | str | None = None) -> dict:
    """Run the golden model and the rebuilt torch reference on a test split.

    Returns ``n``, ``golden_accuracy``, ``torch_accuracy``, ``mismatches`` (disagreeing
    predictions) and ``accumulator_mismatches`` (test vectors whose last-layer accumulators
    differ anywhere); both counts must be 0.
    """
    from bitfab.sim.golden import execute

    net = rebuild(model)
    if data is None or isinstance(data, str):
        data = load_dataset(data or model.metadata["dataset"], int(model.metadata.get("seed", 0)))
    if data.features != model.in_features:
        raise BitfabError(f"dataset {data.name} has {data.features} features; the model takes "
                          f"{model.in_features}")
    x, y = data.x_test, data.y_test
    trace = execute(model, x)
    golden_acc = trace.accumulators[-1]
    acc = net.integer_forward(x)[0][-1]
    tp = torch.argmax(acc, dim=1).numpy()
    torch_acc = acc.numpy()
    if not np.all(torch_acc == np.round(torch_acc)):
        raise BitfabError("the torch reference produced non-integer accumulators")
    torch_acc = torch_acc.astype(np.int64)
    gp = np.argmax(golden_acc, axis=1)
    return {
        "n": int(len(y)), "dataset": data.name,
        "golden_accuracy": float(np.mean(gp == y)), "torch_accuracy": float(np.mean(tp == y)),
        "mismatches": int(np.count_nonzero(gp != tp)),
        "accumulator_mismatches": int(np.count_nonzero(np.any(golden_acc != torch_acc, axis=1))),
    }
