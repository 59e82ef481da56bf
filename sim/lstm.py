"""The golden model of the ``lstm`` layer kind: one time step, whole sequences, models.

Pure numpy integer code that follows :mod:`bitfab.lstm` literally. A batch of sequences is an
array ``(batch, T, in_features)`` with a length per sequence (``lengths``, default ``T``): steps
at and after a sequence's length are padding, never read, and their outputs are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitfab.errors import ModelRangeError
from bitfab.lstm import Lstm
from bitfab.model import Dense, IntegerModel

from .golden import dense_accumulate, dense_forward, exact_matmul, threshold

__all__ = ["gate_mul", "table_lookup", "lstm_step", "lstm_direction", "lstm_layer",
           "check_sequences", "SeqTrace", "execute_sequences", "predict_sequences"]


def gate_mul(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return the gate product ``0``, ``v >> 1`` (floor) or ``v`` for gate codes ``q = 0, 1, 2``.

    >>> gate_mul(np.array([0, 1, 1, 2]), np.array([5, 5, -5, -5])).tolist()
    [0, 2, -3, -5]
    """
    v = np.asarray(v, dtype=np.int64)
    return np.where(q == 0, 0, np.where(q == 1, v >> 1, v))


def table_lookup(table: np.ndarray, value: np.ndarray, shift: int) -> np.ndarray:
    """Return ``table[clamp(value >> shift, -S/2, S/2 - 1) + S/2]`` (``S = len(table)``)."""
    half = len(table) // 2
    idx = np.clip(np.asarray(value, dtype=np.int64) >> int(shift), -half, half - 1) + half
    return np.asarray(table)[idx]


def lstm_step(layer: Lstm, d: int, x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """Run one time step of direction ``d`` for a batch: return ``(h, c, acc, q)``.

    ``acc`` is ``(batch, 4, hidden)`` (gate order i, f, g, o), ``q`` the gate codes
    ``(batch, 3, hidden)`` of i, f, o.
    """
    hidden = layer.hidden
    z = np.concatenate([x, h], axis=1)
    w = layer.weights[d].reshape(4 * hidden, -1)
    acc = (exact_matmul(z, w) + layer.bias[d].reshape(-1)).reshape(-1, 4, hidden)
    q = np.stack([threshold(acc[:, k], layer.gate_thresholds[d, j])
                  for j, k in enumerate((0, 1, 3))], axis=1)
    g = table_lookup(layer.cand_table[d], acc[:, 2], layer.cand_shift[d])
    lo, hi = layer.cell_range
    c = np.clip(gate_mul(q[:, 1], c) + gate_mul(q[:, 0], g), lo, hi)
    h = gate_mul(q[:, 2], table_lookup(layer.cell_table[d], c, layer.cell_shift[d]))
    return h, c, acc, q


def lstm_direction(layer: Lstm, d: int, x: np.ndarray, lengths: np.ndarray):
    """Run direction ``d`` over a batch of sequences.

    Returns ``(hs, cs, final)``: hidden and cell states ``(batch, T, hidden)`` at the step
    positions of the input (0 at padding), and the final hidden state ``(batch, hidden)``.
    A backward direction reads each sequence from its last valid step down to step 0.
    """
    batch, steps, _ = x.shape
    h = np.zeros((batch, layer.hidden), dtype=np.int64)
    c = np.zeros_like(h)
    hs = np.zeros((batch, steps, layer.hidden), dtype=np.int64)
    cs = np.zeros_like(hs)
    rows = np.arange(batch)
    for k in range(steps):
        live = k < lengths
        pos = np.where(live, lengths - 1 - k, 0) if d == 1 else np.full(batch, k)
        h_new, c_new, _, _ = lstm_step(layer, d, x[rows, pos], h, c)
        h = np.where(live[:, None], h_new, h)
        c = np.where(live[:, None], c_new, c)
        hs[rows[live], pos[live]] = h[live]
        cs[rows[live], pos[live]] = c[live]
    return hs, cs, h


def check_sequences(layer: Lstm, x, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, lengths)`` as int64 arrays, or raise :class:`ModelRangeError`.

    ``x`` is ``(batch, T, in_features)`` (a 2-D array is one sequence); ``lengths`` defaults to
    ``T``. Refused, never truncated: a length of 0, a length above ``T`` or above the layer's
    ``max_length``, and a valid step's value outside the input format.
    """
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != layer.in_features:
        raise ModelRangeError(f"sequences must have shape (batch, steps, {layer.in_features}), "
                              f"not {np.shape(x)}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise ModelRangeError(f"sequences must hold integers, not {arr.dtype} values")
    arr = arr.astype(np.int64)
    batch, steps, _ = arr.shape
    if lengths is None:
        lengths = np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or lengths.dtype.kind not in "iu":
        raise ModelRangeError(f"lengths must be {batch} integers, not {lengths!r}"[:200])
    lengths = lengths.astype(np.int64)
    if batch and lengths.min() < 1:
        raise ModelRangeError(f"sequence {int(np.argmin(lengths))} has length "
                              f"{int(lengths.min())}: an empty sequence has no output")
    if batch and lengths.max() > steps:
        raise ModelRangeError(f"sequence {int(np.argmax(lengths))} has length "
                              f"{int(lengths.max())}, more than the {steps} steps given")
    if batch and lengths.max() > layer.max_length:
        raise ModelRangeError(f"sequence {int(np.argmax(lengths))} has length "
                              f"{int(lengths.max())}, more than the layer's max_length "
                              f"{layer.max_length}")
    valid = np.arange(steps)[None, :] < lengths[:, None]
    fmt = layer.input
    bad = valid[..., None] & ((arr < fmt.min_value) | (arr > fmt.max_value))
    if np.any(bad):
        b, t, i = np.argwhere(bad)[0]
        raise ModelRangeError(f"sequence {b}, step {t}, input {i}: value {int(arr[b, t, i])} "
                              f"is outside {fmt.describe()} [{fmt.min_value}, {fmt.max_value}]")
    return np.where(valid[..., None], arr, 0), lengths


def lstm_layer(layer: Lstm, x, lengths=None):
    """Run every direction of ``layer``: return ``(out, hs, cs)``.

    ``out`` is ``(batch, T, hidden * directions)`` (``returns="sequence"``, 0 at padding) or
    ``(batch, hidden * directions)`` (``"last"``: each direction's final state); ``hs`` and
    ``cs`` list the per-direction states of :func:`lstm_direction`.
    """
    x, lengths = check_sequences(layer, x, lengths)
    hs, cs, finals = [], [], []
    for d in range(layer.directions):
        h, c, final = lstm_direction(layer, d, x, lengths)
        hs.append(h)
        cs.append(c)
        finals.append(final)
    if layer.returns == "last":
        return np.concatenate(finals, axis=1), hs, cs
    return np.concatenate(hs, axis=2), hs, cs


@dataclass(frozen=True)
class SeqTrace:
    """What :func:`execute_sequences` computed.

    Members
    -------
    lengths : int64 array ``(batch,)``
    outputs : list of int64 arrays
        Each layer's output: ``(batch, T, features)`` per step, or ``(batch, features)`` after an
        ``returns="last"`` layer. Padding steps are 0.
    hidden, cells : list of lists
        Per lstm layer, the per-direction hidden and cell states ``(batch, T, hidden)``.
    """

    lengths: np.ndarray
    outputs: list
    hidden: list
    cells: list

    @property
    def output(self) -> np.ndarray:
        return self.outputs[-1]


def execute_sequences(model: IntegerModel, x, lengths=None) -> SeqTrace:
    """Run a sequence model (lstm layers first, then dense layers) on ``(batch, T, in)`` values.

    A dense layer after a ``"sequence"`` lstm runs on every valid step (0 at padding).
    """
    first = model.layers[0]
    if not isinstance(first, Lstm):
        raise ModelRangeError("a sequence model starts with an lstm layer, this one starts "
                              f"with {first.describe()}")
    x, lengths = check_sequences(first, x, lengths)
    trace = SeqTrace(lengths, [], [], [])
    values = x
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Lstm):
            if values.ndim != 3:
                raise ModelRangeError(f"layers[{i}] is an lstm after a layer that gives one "
                                      f"vector per sequence")
            values, hs, cs = lstm_layer(layer, values, lengths)
            trace.hidden.append(hs)
            trace.cells.append(cs)
        else:
            assert isinstance(layer, Dense)
            flat = values.reshape(-1, values.shape[-1])
            out = dense_forward(layer, dense_accumulate(layer, flat))
            values = out.reshape(values.shape[:-1] + (out.shape[-1],))
            if values.ndim == 3:
                valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
                values = np.where(valid[..., None], values, 0)
        trace.outputs.append(values)
    return trace


def predict_sequences(model: IntegerModel, x, lengths=None) -> np.ndarray:
    """Return the argmax class per sequence (``"last"``) or per step (``"sequence"``)."""
    return np.argmax(execute_sequences(model, x, lengths).output, axis=-1)
