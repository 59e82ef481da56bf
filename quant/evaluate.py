"""Rebuild the torch reference of an exported model and compare it with the golden model.

A ``.bfm`` written by :func:`bitfab.quant.train.export` carries its training configuration in
``metadata`` and the float state in ``extras``. :func:`rebuild` turns them back into a
:class:`~bitfab.quant.network.QuantMLP`, whose eval-mode integer forward recomputes every integer
layer from the float state; :func:`reference` runs it (or an lstm model's torch integer forward)
over a dataset's test split, which the shell compares with the golden model on the *stored*
layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bitfab.errors import BitfabError, ModelFormatError
from bitfab.model import IntegerModel

from .conv import QuantConvNet
from .data import Dataset, load_dataset
from .network import QuantMLP
from .recipes import TrainConfig, build_model

__all__ = ["rebuild", "reference", "torch_outputs", "Reference"]


def rebuild(model: IntegerModel) -> QuantMLP | QuantConvNet:
    """Return the torch network stored in ``model``'s metadata and extras (eval mode)."""
    meta = model.metadata
    if meta.get("producer") != "bitfab.quant" or "config" not in meta:
        raise BitfabError(f"{model.name}: the model carries no training state (it was not "
                          f"written by bitfab train), so there is no torch reference to compare")
    if not isinstance(meta["config"], dict):
        raise ModelFormatError(f"metadata.config must be a mapping, not {meta['config']!r}"[:200])
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


@dataclass
class Reference:
    """A test split and the torch reference's integer outputs on it (:func:`reference`)."""

    x: np.ndarray
    lengths: np.ndarray | None
    labels: np.ndarray
    outputs: np.ndarray
    dataset: str
    metric: str = "accuracy"


def _is_lstm(model: IntegerModel) -> bool:
    return model.metadata.get("recipe") == "lstm-gates"


def torch_outputs(model: IntegerModel, x, lengths=None, net: QuantMLP | None = None
                  ) -> np.ndarray:
    """Return the last layer's integer outputs of the torch reference a trained model carries
    (the dense MLP rebuilt from its float state, or ``net`` when it was rebuilt already; an lstm
    model's torch integer forward)."""
    if _is_lstm(model):
        from .lstm_train import integer_forward
        out = integer_forward(model, x, lengths)[1].numpy()
    else:
        with torch.no_grad():
            net = rebuild(model) if net is None else net
            # eval mode: the last layer's exact integer accumulators (an MLP or a conv net)
            out = net(torch.as_tensor(np.asarray(x))).numpy()
    if not np.all(out == np.round(out)):
        raise BitfabError("the torch reference produced non-integer outputs")
    return out.astype(np.int64)


def reference(model: IntegerModel, data: Dataset | str | None = None) -> Reference:
    """Return the test split of ``data`` (None: the dataset the model was trained on, with its
    split seed) and the torch reference's outputs on it."""
    if _is_lstm(model):
        from .lstm_train import test_split
        x, lengths, labels, name, metric = test_split(model, data)
        return Reference(x, lengths, labels, torch_outputs(model, x, lengths), name, metric)
    net = rebuild(model)  # refuses a model without training state before any data is read
    if data is None or isinstance(data, str):
        name, seed = data or model.metadata.get("dataset"), model.metadata.get("seed", 0)
        if not isinstance(name, str):
            raise ModelFormatError(f"metadata.dataset must be a dataset name, not {name!r}; "
                                   f"give --dataset")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelFormatError(f"metadata.seed must be an integer, not {seed!r}")
        data = load_dataset(name, seed)
    if data.features != math.prod(model.in_shape):
        raise BitfabError(f"dataset {data.name} has {data.features} features; the model takes "
                          f"{math.prod(model.in_shape)}")
    return Reference(data.x_test, None, data.y_test, torch_outputs(model, data.x_test, net=net),
                     data.name)
