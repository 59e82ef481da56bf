"""The golden model of the ``lstm`` layer kind: one time step, whole sequences.

Pure numpy integer code that follows :mod:`bitfab.lstm` literally, registered with
:func:`bitfab.sim.golden.register`, so :func:`bitfab.sim.golden.execute` runs models with lstm
layers like any other. A batch of sequences is an array ``(batch, T, in_features)`` with a length
per sequence (``lengths``, default ``T``): steps at and after a sequence's length are padding,
never read, and their outputs are 0.
"""

from __future__ import annotations

import numpy as np

from bitfab.lstm import Lstm

from .golden import check_sequences, exact_matmul, register, threshold

__all__ = ["gate_mul", "table_lookup", "dense_gate_sums", "GATE_SUMS", "lstm_step",
           "lstm_direction", "lstm_layer", "lstm_golden"]


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


def dense_gate_sums(layer: Lstm, d: int, z: np.ndarray) -> np.ndarray:
    """Return ``W_d @ z`` (``(batch, 4 hidden)``, no bias) of an ``lstm`` layer, exactly."""
    return exact_matmul(z, layer.weights[d].reshape(4 * layer.hidden, -1))


#: How each lstm-like kind computes its gate sums ``W_d @ z`` (step 1 of :mod:`bitfab.lstm`;
#: steps 2-6 are shared): :mod:`bitfab.sim.lstm_mps` adds ``lstm_mps``.
GATE_SUMS = {"lstm": dense_gate_sums}


def lstm_step(layer: Lstm, d: int, x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """Run one time step of direction ``d`` for a batch: return ``(h, c, acc, q)``.

    ``acc`` is ``(batch, 4, hidden)`` (gate order i, f, g, o), ``q`` the gate codes
    ``(batch, 3, hidden)`` of i, f, o.
    """
    hidden = layer.hidden
    z = np.concatenate([x, h], axis=1)
    acc = (GATE_SUMS[layer.kind](layer, d, z) + layer.bias[d].reshape(-1)).reshape(-1, 4, hidden)
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


@register("lstm")
def lstm_golden(layer: Lstm, values: np.ndarray, lengths: np.ndarray):
    """The golden function of the lstm kind (:func:`bitfab.sim.golden.register`): return
    ``(outputs, (hidden, cells))``."""
    out, hs, cs = lstm_layer(layer, values, lengths)
    return out, (hs, cs)
