"""Simulation and verification: the numpy golden model, Amaranth and cocotb benches.

Importing the package registers the golden function of every layer kind (:mod:`.golden` for
dense, :mod:`.lstm` for lstm, :mod:`.lstm_mps` for lstm_mps,
:mod:`.conv` for conv, maxpool, avgpool, flatten and add).
"""

from . import conv, golden, lstm, lstm_mps  # noqa: F401  (registration of the golden layer kinds)
