"""Run the hardware LSTM cell as a pure function: sequences in, hidden states out.

:func:`rtl_lstm` streams every sequence of a batch through :class:`bitfab.hw.lstm.LstmCell` in
the Amaranth simulator (one payload per time step, ``last`` on each sequence's final step),
optionally with a producer that idles and a consumer that stalls at random, and returns the
hidden states in the layout of :func:`bitfab.sim.lstm.lstm_direction`, so tests compare the two
with ``np.testing.assert_array_equal``.
"""

from __future__ import annotations

import numpy as np

from bitfab.errors import VerificationError
from bitfab.lstm import Lstm

from .lstm import check_sequences

__all__ = ["step_payloads", "hidden_values", "rtl_lstm", "unstream"]


def step_payloads(layer: Lstm, x: np.ndarray, lengths: np.ndarray, direction: int = 0) -> list:
    """Return the input payloads (ints) of every valid step of every sequence, in stream order.

    A backward direction gets each sequence reversed (its last valid step first).
    """
    bits, n = layer.input.bits, layer.in_features
    codes = layer.input.to_codes(x)
    out = []
    for b, length in enumerate(lengths):
        steps = range(length - 1, -1, -1) if direction == 1 else range(length)
        for k, t in enumerate(steps):
            word = 0
            for i in range(n):
                word |= int(codes[b, t, i]) << (i * bits)
            out.append(word | (int(k == length - 1) << (n * bits)))
    return out


def hidden_values(layer: Lstm, words: list) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(h values (steps, hidden), last flags (steps,))`` of output payloads."""
    hb, hidden = layer.hidden_bits, layer.hidden
    mask = (1 << hb) - 1
    codes = np.array([[(int(w) >> (j * hb)) & mask for j in range(hidden)] for w in words],
                     dtype=np.int64).reshape(-1, hidden)
    last = np.array([(int(w) >> (hidden * hb)) & 1 for w in words], dtype=np.int64)
    return layer.hidden_format.from_codes(codes), last


def unstream(layer: Lstm, words: list, shape: tuple, lengths: np.ndarray,
             direction: int = 0) -> np.ndarray:
    """Return the ``(batch, T, hidden)`` hidden states of a stream of output payloads, checking
    the ``last`` flags (raise :class:`VerificationError` on a misplaced one)."""
    values, last = hidden_values(layer, words)
    expected = np.concatenate([np.arange(n) == n - 1 for n in lengths]).astype(np.int64)
    if last.shape != expected.shape:
        raise VerificationError(f"{len(last)} hidden states for {len(expected)} steps")
    if not np.array_equal(last, expected):
        k = int(np.argmax(last != expected))
        raise VerificationError(f"output {k}: last flag {int(last[k])}, expected "
                                f"{int(expected[k])}")
    hs = np.zeros((shape[0], shape[1], layer.hidden), dtype=np.int64)
    k = 0
    for b, n in enumerate(lengths):
        seq = values[k:k + n]
        hs[b, :n] = seq[::-1] if direction == 1 else seq
        k += n
    return hs


def rtl_lstm(layer: Lstm, x, lengths=None, *, direction: int = 0, pipeline: int = 0,
             stall: float = 0.0, bubble: float = 0.0, seed: int = 0) -> np.ndarray:
    """Return the hidden states ``(batch, T, hidden)`` of one direction computed by the RTL in
    the Amaranth simulator (0 at padding), in input step order."""
    from bitfab.hw.lstm import LstmCell

    from .amaranth_sim import run_stream

    x, lengths = check_sequences(layer, x, lengths)
    dut = LstmCell(layer, direction, pipeline)
    payloads = step_payloads(layer, x, lengths, direction)
    result = run_stream(dut, payloads, stall=stall, bubble=bubble, seed=seed)
    return unstream(layer, result.outputs, x.shape, lengths, direction)
