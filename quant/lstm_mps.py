"""Tensor-train gate matrices for :class:`bitfab.quant.lstm.QuantLstm` (``compress=mps:R``).

Per direction the stacked gate matrix ``[W U]`` (``4 hidden x (n_in + hidden)``, rows gate-major
``i, f, g, o``, columns ``x`` then ``h``: the input-to-hidden and hidden-to-hidden matrices of all
four gates side by side) is one chain: an :class:`~bitfab.quant.mps.MpsLinear` (``mps``) or the
:class:`~bitfab.quant.mps.MpoLinear` baseline (``mpo``). One chain for both halves keeps one
accumulator scale per gate sum (``prod_k alpha_k * step``), as the dense layer's. Each core has
its own weight quantizer (:data:`bitfab.quant.lstm.WEIGHTS`), so training sees exactly the
integer chain that is exported: ``mps`` as an :class:`~bitfab.lstm_mps.LstmMps` layer (whose
golden model contracts the chain), ``mpo`` as the equivalent dense :class:`~bitfab.lstm.Lstm`
(weights the exact contraction, ``int`` encoding; no layer kind of its own).

Modes: ``parts`` balanced factors of each side (:func:`~bitfab.quant.mps.balanced_modes`).
Core quantizers (:data:`CORE_WEIGHTS`): as the dense layer's, except ``pow2`` cores have 4
exponents (``0, +-1 .. +-8``) so that the product of the cores' integers, which the contraction
multiplies, stays within the 32-bit weights of the dense equivalent at useful ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bitfab.encodings import IntWeights
from bitfab.errors import BitfabError
from bitfab.formats import signed_bits
from bitfab.lstm import Lstm
from bitfab.lstm_mps import LstmMps, contract_cores

from .mps import MpoLinear, MpsLinear, balanced_modes, parse_compress
from .quantizers import FloatWeight, IntWeight, Pow2Weight, TernaryWeight

__all__ = ["CompressedGates", "dense_param_count", "CORE_WEIGHTS"]

#: the quantizer of each core, by the LSTM's ``weights`` name
CORE_WEIGHTS = {"float": FloatWeight, "ternary": TernaryWeight,
                "pow2": lambda shape=None: Pow2Weight(shape, levels=4),
                "int8": lambda shape=None: IntWeight(shape, bits=8)}


def dense_param_count(n_in: int, hidden: int, directions: int) -> int:
    """Weights of the dense gate matrices: ``directions * 4 hidden (n_in + hidden)``."""
    return directions * 4 * hidden * (n_in + hidden)


class CompressedGates(nn.Module):
    """One MPS or MPO chain per direction for the stacked gate matrix.

    Parameters
    ----------
    spec : ``"mps:R"`` or ``"mpo:R"``
    n_in, hidden, directions : int
    weights : str
        A key of :data:`CORE_WEIGHTS`.
    parts : int
        Modes per side (``in_modes`` and ``out_modes`` each have ``parts`` factors).
    """

    def __init__(self, spec: str, n_in: int, hidden: int, directions: int, weights: str,
                 parts: int = 2):
        super().__init__()
        parsed = parse_compress(spec)
        if parsed is None:
            raise BitfabError(f"compress must be 'mps:RANK' or 'mpo:RANK', not {spec!r}")
        self.method, self.rank = parsed
        self.n, self.m = n_in + hidden, 4 * hidden
        self.in_modes = balanced_modes(self.n, parts)
        self.out_modes = balanced_modes(self.m, parts)
        if weights not in CORE_WEIGHTS:
            raise BitfabError(f"core weights must be one of {sorted(CORE_WEIGHTS)}, "
                              f"not {weights!r}")
        quantizer = CORE_WEIGHTS[weights]
        self.quantizer = quantizer
        cls = MpsLinear if self.method == "mps" else MpoLinear
        self.chains = nn.ModuleList(
            cls(self.m, self.n, self.in_modes, self.out_modes, self.rank, quantizer)
            for _ in range(directions))
        self.hidden = hidden

    @property
    def param_count(self) -> int:
        """Stored core entries (all directions)."""
        return sum(c.param_count for c in self.chains)

    def matrix(self, d: int) -> torch.Tensor:
        """The (fake-quantized) ``(4 hidden, n_in + hidden)`` gate matrix of direction ``d``."""
        return self.chains[d].matrix()

    def post_step(self) -> None:
        for c in self.chains:
            c.post_step()

    @torch.no_grad()
    def from_dense(self, weight: torch.Tensor) -> None:
        """Replace every chain by the TT-SVD of ``weight[d]`` (``(directions, 4, hidden, n)``)
        at this rank (then fine-tune)."""
        cls = type(self.chains[0])
        for d in range(len(self.chains)):
            w = weight[d].reshape(self.m, self.n)
            new = cls.from_dense(w, self.in_modes, self.out_modes, self.rank, self.quantizer)
            self.chains[d].load_state_dict(new.state_dict())

    @torch.no_grad()
    def integer(self, d: int) -> tuple[list[np.ndarray], np.ndarray, float]:
        """Return ``(integer cores, contracted integer matrix, scale)`` of direction ``d``."""
        chain = self.chains[d]
        cores, scale, _ = chain.integer_cores()
        if self.method == "mps":
            w = contract_cores(cores, self.n, self.m)
        else:
            w = chain.matrix(cores=[torch.as_tensor(c) for c in cores]).numpy()
        return cores, w, scale

    def gate_integer(self, d: int, k: int) -> tuple[np.ndarray, float, object]:
        """Return ``(W_int rows of gate k, scale, encoding)`` as :meth:`QuantLstm.to_integer`
        reads a dense gate's quantizer: the exact integer contraction in an ``int`` encoding."""
        _, w, scale = self.integer(d)
        ws = [self.integer(e)[1] for e in range(len(self.chains))]
        bits = max(2, *(signed_bits(int(v.min()), int(v.max())) for v in ws))
        if bits > 32:
            raise BitfabError(f"the contracted {self.method} weights need {bits} bits (more "
                              f"than 32): use a smaller core encoding")
        return w[k * self.hidden:(k + 1) * self.hidden], scale, IntWeights(bits)

    def to_layer(self, dense: Lstm) -> Lstm | LstmMps:
        """Return the exported layer: an :class:`LstmMps` for ``mps`` (the fields other than the
        weights from ``dense``), ``dense`` itself for ``mpo``."""
        if self.method == "mpo":
            return dense
        cores, encoding = [], None
        for d in range(len(self.chains)):
            ints, _, enc = self.chains[d].integer_cores()
            encoding = enc if encoding is None else encoding
            if enc != encoding:
                raise BitfabError(f"core encodings differ: {enc} vs {encoding}")
            cores.append(ints)
        return LstmMps(cores, self.in_modes, self.out_modes, encoding, dense.hidden,
                       dense.in_features, dense.input,
                       dense.hidden_bits, dense.cell_bits, dense.gate_thresholds,
                       dense.cand_table, dense.cand_shift, dense.cell_table, dense.cell_shift,
                       dense.bias, dense.max_length, dense.returns, dense.name)

