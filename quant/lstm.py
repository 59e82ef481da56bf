"""A hand-written LSTM with gates quantized to {0, 0.5, 1} ("quantization loss re-learn").

torch's ``nn.LSTM`` cannot quantize its gates, so the cell is written out here. With
``gate_quant`` the input, forget and output gates are ``Q(z) = round_half_up(2 sigmoid(z)) / 2``
in the forward pass (equivalently two thresholds on the pre-activation, ``z >= -ln 3`` and
``z >= ln 3``) with the straight-through gradient of ``sigmoid``, so the weights learn to offset
the quantization loss. Then every gate product is a 3-way choice (zero, half, pass).

The input ``x`` and the hidden state ``h`` live on one fixed-point grid, ``step = 2**-(hb-1)``
(``hb`` the hidden width), so that one integer accumulator per gate sums both halves of
``[W U] @ [x; h]``. :meth:`QuantLstm.to_integer` exports an :class:`bitfab.lstm.Lstm`;
:func:`integer_lstm` runs it in torch integer arithmetic (the torch eval that the golden model
:mod:`bitfab.sim.lstm` must match bit for bit).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bitfab.errors import BitfabError
from bitfab.lstm import Lstm
from bitfab.model import InputFormat

from .mps import parse_compress
from .quantizers import FloatWeight, IntWeight, Pow2Weight, TernaryWeight
from .ste import round_half_up, ste

__all__ = ["gate_quant", "fake_fixed", "WEIGHTS", "QuantLstm", "integer_lstm",
           "reverse_padded"]

LN3 = math.log(3.0)
#: weight quantizers of the gate matrices, by name
WEIGHTS = {"float": FloatWeight, "ternary": TernaryWeight, "pow2": Pow2Weight,
           "int8": lambda shape=None: IntWeight(shape, bits=8)}


def gate_quant(z: torch.Tensor) -> torch.Tensor:
    """Return ``round_half_up(2 sigmoid(z)) / 2`` (values 0, 0.5, 1) with the gradient of
    ``sigmoid(z)`` (straight through the rounding).

    >>> z = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], requires_grad=True)
    >>> q = gate_quant(z); q.sum().backward()
    >>> q.tolist(), [round(g, 3) for g in z.grad.tolist()]
    ([0.0, 0.5, 0.5, 0.5, 1.0], [0.045, 0.197, 0.25, 0.197, 0.045])
    """
    s = torch.sigmoid(z)
    return ste(s, round_half_up(2 * s.detach()) / 2)


def fake_fixed(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` to the signed ``bits``-wide grid of step ``2**-(bits-1)`` (clamped to
    ``[-1, 1 - step]``) with the identity gradient.

    >>> fake_fixed(torch.tensor([0.3, -2.0, 0.999]), 3).tolist()
    [0.25, -1.0, 0.75]
    """
    scale = float(1 << (bits - 1))
    q = torch.clamp(round_half_up(x.detach() * scale), -scale, scale - 1) / scale
    return ste(x, q)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of every sequence ``x[b]`` (padding stays put)."""
    steps = x.shape[1]
    t = torch.arange(steps)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))


class QuantLstm(nn.Module):
    """A (bi)directional LSTM layer with optional gate quantization and weight quantizers.

    Parameters
    ----------
    n_in, hidden : int
    directions : 1 or 2
    gate_quant : bool
        Quantize i, f, o to {0, 0.5, 1} (and the hidden state to ``hidden_bits``).
    weights : str
        A key of :data:`WEIGHTS`: the quantizer of each gate's ``[W U]`` matrix.
    hidden_bits : int
        Width of the integer hidden state (and of the input grid).
    output : ``"sequence"`` or ``"last"``
    compress : None, ``"mps:R"`` or ``"mpo:R"``
        Tensor-train gate matrices (:mod:`bitfab.quant.lstm_mps`; ``weights`` quantizes the
        cores); the dense ``weight`` is then unused.
    """

    def __init__(self, n_in: int, hidden: int, directions: int = 1, gate_quant: bool = True,
                 weights: str = "float", hidden_bits: int = 8, output: str = "sequence",
                 compress: str | None = None):
        super().__init__()
        if weights not in WEIGHTS:
            raise BitfabError(f"lstm weights must be one of {sorted(WEIGHTS)}, not {weights!r}")
        if directions not in (1, 2):
            raise BitfabError(f"directions must be 1 or 2, not {directions!r}")
        self.n_in, self.hidden, self.directions = n_in, hidden, directions
        self.gate_quant, self.weights_kind, self.hidden_bits = gate_quant, weights, hidden_bits
        self.output = output
        bound = 1 / math.sqrt(hidden)
        self.weight = nn.Parameter(torch.empty(directions, 4, hidden, n_in + hidden)
                                   .uniform_(-bound, bound))
        bias = torch.zeros(directions, 4, hidden)
        bias[:, 1] = 1.0  # forget gate open at the start (the usual LSTM initialization)
        self.bias = nn.Parameter(bias)
        self.quantizers = nn.ModuleList(WEIGHTS[weights]((hidden, n_in + hidden))
                                        for _ in range(4 * directions))
        with torch.no_grad():
            for k, q in enumerate(self.quantizers):
                q.init_(self.weight[k // 4, k % 4])
        self.compressed = None
        if parse_compress(compress) is not None:
            from .lstm_mps import CompressedGates
            self.compressed = CompressedGates(compress, n_in, hidden, directions, weights)

    def qweight(self, d: int, k: int) -> torch.Tensor:
        """Return the (fake-)quantized ``[W U]`` of direction ``d``, gate ``k``."""
        return self.quantizers[4 * d + k](self.weight[d, k])

    def post_step(self) -> None:
        if self.compressed is not None:
            self.compressed.post_step()
        with torch.no_grad():
            for k, q in enumerate(self.quantizers):
                q.post_step(self.weight[k // 4, k % 4])

    def _direction(self, d: int, x: torch.Tensor, lengths: torch.Tensor):
        batch, steps, _ = x.shape
        w = torch.cat([self.qweight(d, k) for k in range(4)], dim=0) \
            if self.compressed is None else self.compressed.matrix(d)  # (4H, N)
        b = self.bias[d].reshape(-1)
        h = x.new_zeros(batch, self.hidden)
        c = x.new_zeros(batch, self.hidden)
        hs = []
        for t in range(steps):
            z = torch.cat([x[:, t], h], dim=1) @ w.T + b
            zi, zf, zg, zo = z.split(self.hidden, dim=1)
            gate = gate_quant if self.gate_quant else torch.sigmoid
            c_new = gate(zf) * c + gate(zi) * torch.tanh(zg)
            h_new = gate(zo) * torch.tanh(c_new)
            if self.gate_quant:
                h_new = fake_fixed(h_new, self.hidden_bits)
            live = (t < lengths)[:, None]
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
            hs.append(torch.where(live, h, torch.zeros_like(h)))
        return torch.stack(hs, dim=1), h

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Return ``(batch, T, hidden * directions)`` or ``(batch, hidden * directions)``."""
        outs, finals = [], []
        for d in range(self.directions):
            xd = reverse_padded(x, lengths) if d == 1 else x
            hs, h = self._direction(d, xd, lengths)
            outs.append(reverse_padded(hs, lengths) if d == 1 else hs)
            finals.append(h)
        if self.output == "last":
            return torch.cat(finals, dim=1)
        return torch.cat(outs, dim=2)

    @torch.no_grad()
    def to_integer(self, input_format: InputFormat, *, cell_bits: int = 16,
                   table_bits: tuple[int, int] = (8, 8), max_length: int = 64,
                   name: str = "lstm") -> Lstm:
        """Export the integer layer (gate weights must be quantized: not ``float``).

        Scales: one accumulator unit of gate ``k`` is ``alpha_k * step``; the thresholds are
        ``ceil(-+ln 3 / scale)``; the cell state has ``cell_bits - 4`` fraction bits (range
        +-8); each table covers +-4 (candidate pre-activation, cell state) at its midpoints.
        """
        if self.weights_kind == "float":
            raise BitfabError("gate weights 'float' have no integer form: use ternary, pow2 "
                              "or int8")
        hb = self.hidden_bits
        step = 2.0 ** -(hb - 1)
        frac = cell_bits - 4
        ws, biases, thresholds, cands, cells, cshifts, hshifts = [], [], [], [], [], [], []
        encoding = None
        for d in range(self.directions):
            wd, bd, td = [], [], []
            for k in range(4):
                w_int, alpha, enc = self.quantizers[4 * d + k].integer(self.weight[d, k]) \
                    if self.compressed is None else self.compressed.gate_integer(d, k)
                encoding = enc if encoding is None else encoding
                if enc != encoding:
                    raise BitfabError(f"gate encodings differ: {enc} vs {encoding}")
                scale = alpha * step
                wd.append(w_int)
                bd.append(np.round(self.bias[d, k].double().numpy() / scale).astype(np.int64))
                if k == 2:
                    size = 1 << table_bits[0]
                    shift = max(0, round(math.log2(8.0 / size / scale)))
                    k_idx = np.arange(size) - size // 2
                    mid = (k_idx * (1 << shift) + ((1 << shift) - 1) / 2) * scale
                    top = (1 << (cell_bits - 1)) - 1
                    cands.append(np.clip(np.round(np.tanh(mid) * (1 << frac)), -top, top))
                    cshifts.append(shift)
                else:
                    td.append(np.stack([np.full(self.hidden, math.ceil(-LN3 / scale)),
                                        np.full(self.hidden, math.ceil(LN3 / scale))], axis=1))
            size = 1 << table_bits[1]
            shift = frac - (table_bits[1] - 3)
            if shift < 0:
                raise BitfabError(f"cell_bits {cell_bits} leaves too few fraction bits for a "
                                  f"{size}-entry table")
            k_idx = np.arange(size) - size // 2
            mid = (k_idx * (1 << shift) + ((1 << shift) - 1) / 2) / (1 << frac)
            top = (1 << (hb - 1)) - 1
            cells.append(np.clip(np.round(np.tanh(mid) * (1 << (hb - 1))), -top, top))
            hshifts.append(shift)
            ws.append(np.stack(wd))
            biases.append(np.stack(bd))
            thresholds.append(np.stack(td))
        layer = Lstm(np.stack(ws), encoding, input_format, hb, cell_bits,
                     np.stack(thresholds).astype(np.int64), np.stack(cands).astype(np.int64),
                     np.array(cshifts), np.stack(cells).astype(np.int64), np.array(hshifts),
                     np.stack(biases), max_length, self.output, name=name)
        return layer if self.compressed is None else self.compressed.to_layer(layer)


def _gate_mul(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.where(q == 0, torch.zeros_like(v), torch.where(q == 1, v >> 1, v))


def _lookup(table: torch.Tensor, value: torch.Tensor, shift: int) -> torch.Tensor:
    half = table.shape[0] // 2
    return table[torch.clamp(value >> shift, -half, half - 1) + half]


@torch.no_grad()
def integer_lstm(layer: Lstm, x, lengths) -> torch.Tensor:
    """Run ``layer`` in torch int64 arithmetic (the integer eval of a trained network).

    ``x``: ``(batch, T, in_features)`` integer values, ``lengths``: ``(batch,)``. Returns what
    :func:`bitfab.sim.lstm.lstm_layer` returns as its first value.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.int64)
    lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
    batch, steps, _ = x.shape
    lo, hi = layer.cell_range
    outs, finals = [], []
    for d in range(layer.directions):
        w = torch.tensor(layer.weights[d].reshape(4 * layer.hidden, -1))
        b = torch.tensor(layer.bias[d].reshape(-1))
        t_gate = torch.tensor(layer.gate_thresholds[d])  # (3, H, 2)
        cand = torch.tensor(layer.cand_table[d])
        cell = torch.tensor(layer.cell_table[d])
        xd = reverse_padded(x, lengths) if d == 1 else x
        h = torch.zeros(batch, layer.hidden, dtype=torch.int64)
        c = torch.zeros_like(h)
        hs = []
        for t in range(steps):
            acc = (torch.cat([xd[:, t], h], dim=1) @ w.T + b).reshape(batch, 4, -1)
            q = [(acc[:, k, :, None] >= t_gate[j]).sum(-1) for j, k in enumerate((0, 1, 3))]
            g = _lookup(cand, acc[:, 2], int(layer.cand_shift[d]))
            c_new = torch.clamp(_gate_mul(q[1], c) + _gate_mul(q[0], g), lo, hi)
            h_new = _gate_mul(q[2], _lookup(cell, c_new, int(layer.cell_shift[d])))
            live = (t < lengths)[:, None]
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
            hs.append(torch.where(live, h, torch.zeros_like(h)))
        hs = torch.stack(hs, dim=1)
        outs.append(reverse_padded(hs, lengths) if d == 1 else hs)
        finals.append(h)
    if layer.returns == "last":
        return torch.cat(finals, dim=1)
    return torch.cat(outs, dim=2)

