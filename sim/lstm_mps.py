"""The golden model of the ``lstm_mps`` layer kind: the MPS chain contracted in integers.

The gate sums ``W_d @ z`` of one step are the chain of small exact contractions of
:mod:`bitfab.lstm_mps` (input cores to one bond vector, output cores expanding it), never the
contracted matrix; everything after them is :func:`bitfab.sim.lstm.lstm_step`'s (the ``lstm``
kind's steps 2-6), so the two kinds share their cell semantics by construction.
"""

from __future__ import annotations

import numpy as np

from bitfab.lstm_mps import LstmMps, chain_stages

from .golden import register
from .lstm import GATE_SUMS, lstm_layer

__all__ = ["mps_gate_sums", "lstm_mps_golden"]


def mps_gate_sums(layer: LstmMps, d: int, z: np.ndarray) -> np.ndarray:
    """Return ``W_d @ z`` (``(batch, 4 hidden)``) by the chain of direction ``d``, exactly."""
    return chain_stages(layer.cores[d], layer.p, np.asarray(z, dtype=np.int64))[-1]


GATE_SUMS["lstm_mps"] = mps_gate_sums


@register("lstm_mps")
def lstm_mps_golden(layer: LstmMps, values: np.ndarray, lengths: np.ndarray):
    """The golden function of the lstm_mps kind: return ``(outputs, (hidden, cells))``."""
    out, hs, cs = lstm_layer(layer, values, lengths)
    return out, (hs, cs)
