"""The ``lstm_mps`` kind in hardware: the lstm cell over the chain's exact dense equivalent.

An :class:`~bitfab.lstm_mps.LstmMps` layer's gate sums are ``W_d z`` with ``W_d`` the exact
integer contraction of its cores (:attr:`~bitfab.lstm_mps.LstmMps.dense`), so the ``lstm``
kind's hardware (:mod:`bitfab.hw.lstm`: unrolled or folded cells, bidirectional layers) built
on that dense layer computes the same integers bit for bit. It stores the contracted matrix,
not the cores: the chain of small contractions in hardware (docs/lstm.md) is not built yet, so
the hardware keeps none of the chain's parameter saving.
"""

from __future__ import annotations

from bitfab.lstm_mps import LstmMps

from . import kinds
from .config import ConfigError
from .lstm import build_lstm, configure_lstm

__all__: list[str] = []


def _configure(layer: LstmMps, fold, pipeline: int, exact: bool):
    if not isinstance(layer, LstmMps):
        raise ConfigError(f"layer must be an LstmMps, not {type(layer).__name__}")
    return configure_lstm(layer.dense, fold, pipeline, exact)


kinds.register("lstm_mps", kinds.HwKind(_configure, build_lstm, foldable=True))
