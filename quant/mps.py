"""Tensor-train weight matrices: MPS chains and the MPO (TT-matrix) baseline.

A matrix ``W`` of shape ``(M, N)`` (``y = W x``) with ``N = n_1 ... n_p`` and ``M = m_1 ... m_q``
(C order: ``n = (n_1, ..., n_p)`` with ``n_1`` the most significant digit, likewise ``m``):

- :class:`MpsLinear`, a matrix product state over the ``p + q`` modes ``(n_1 .. n_p, m_1 .. m_q)``:
  cores ``G_k`` of shape ``(r_{k-1}, s_k, r_k)``, ``r_0 = r_{p+q} = 1``, and

  ``W[m, n] = sum_a G_1[0, n_1, a_1] ... G_p[a_{p-1}, n_p, a_p] G_{p+1}[a_p, m_1, a_{p+1}] ...
  G_{p+q}[a_{p+q-1}, m_q, 0]``.

  ``y = W x`` is a chain of small contractions (:meth:`MpsLinear.forward`): ``x`` reshaped to
  ``(n_1, .., n_p)`` is contracted with ``G_1`` over ``n_1`` (giving ``(r_1, n_2 .. n_p)``), then
  with ``G_2`` over ``(r_1, n_2)``, ... until the input cores leave one bond vector ``v`` of
  length ``r_p``; the output cores then expand it: ``u_1 = v G_{p+1}`` is ``(m_1, r_{p+1})``,
  ``u_2 = u_1 G_{p+2}`` is ``(m_1, m_2, r_{p+2})``, ... ``u_q`` is ``y`` as ``(m_1, .., m_q)``.
  Storage is ``sum_k r_{k-1} s_k r_k`` numbers; the rank of ``W`` is at most ``r_p``.
- :class:`MpoLinear`, the TT-matrix (MPO) baseline: ``N = n_1 ... n_q`` and ``M = m_1 ... m_q``
  paired mode by mode, cores ``(r_{k-1}, m_k, n_k, r_k)``,
  ``W[m, n] = sum_a G_1[0, m_1, n_1, a_1] ... G_q[a_{q-1}, m_q, n_q, 0]``.

Both take a weight-quantizer factory (``quantizer(shape) -> WeightQuantizer``, e.g.
:data:`bitfab.quant.lstm.WEIGHTS` entries): each core is fake-quantized on its own (its own
scale ``alpha_k``), so the integer matrix is the exact contraction of the integer cores and the
real one is that times ``prod_k alpha_k``. :func:`tt_svd` / ``from_dense`` initialise a chain from a
dense matrix (exact at full rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bitfab.errors import BitfabError

__all__ = ["check_modes", "balanced_modes", "chain_ranks", "chain_params", "tt_svd",
           "contract_full", "MpsLinear", "MpoLinear", "rank_for_budget", "parse_compress"]


def _prod(values) -> int:
    return int(math.prod(values))


def check_modes(modes: Sequence[int], size: int, what: str) -> tuple[int, ...]:
    """Return ``modes`` as a tuple of positive ints multiplying to ``size``, or raise
    :class:`BitfabError` naming ``what``.

    >>> check_modes([4, 8], 32, "in_modes")
    (4, 8)
    """
    try:
        out = tuple(int(m) for m in modes)
    except (TypeError, ValueError):
        raise BitfabError(f"{what} must be a list of positive integers, not {modes!r}") from None
    if not out or min(out) < 1:
        raise BitfabError(f"{what} must be a list of positive integers, not {list(out)}")
    if _prod(out) != size:
        raise BitfabError(f"{what} {list(out)} multiply to {_prod(out)}, not {size}")
    return out


def balanced_modes(size: int, parts: int) -> tuple[int, ...]:
    """Split ``size`` into ``parts`` factors as equal as its prime factors allow (largest last).

    >>> balanced_modes(128, 3), balanced_modes(40, 2), balanced_modes(7, 2)
    ((4, 4, 8), (5, 8), (1, 7))
    """
    primes, n, p = [], int(size), 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    modes = [1] * parts
    for f in sorted(primes, reverse=True):
        modes[int(np.argmin(modes))] *= f
    return tuple(sorted(modes))


def chain_ranks(sizes: Sequence[int], rank) -> tuple[int, ...]:
    """Return the bond dimensions ``(r_0 = 1, r_1, .., r_L = 1)`` of a chain over mode ``sizes``:
    ``rank`` an int (every inner bond, capped at the largest useful value ``min(prod s_<=k,
    prod s_>k)``) or a sequence of the ``L - 1`` inner bonds."""
    sizes = tuple(sizes)
    cap = [min(_prod(sizes[:k]), _prod(sizes[k:])) for k in range(1, len(sizes))]
    if isinstance(rank, int | np.integer):
        if rank < 1:
            raise BitfabError(f"rank must be a positive integer, not {rank}")
        inner = [min(int(rank), c) for c in cap]
    else:
        inner = [int(r) for r in rank]
        if len(inner) != len(cap) or min(inner, default=1) < 1:
            raise BitfabError(f"ranks must be {len(cap)} positive integers, not {list(rank)}")
    return (1, *inner, 1)


def chain_params(sizes: Sequence[int], ranks: Sequence[int]) -> int:
    """Numbers stored by a chain: ``sum_k r_{k-1} s_k r_k``."""
    return sum(ranks[k] * s * ranks[k + 1] for k, s in enumerate(sizes))


def tt_svd(tensor: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """Return cores ``(r_{k-1}, s_k, r_k)`` of ``tensor`` (shape ``s_1 .. s_L``) by the TT-SVD
    (successive truncated SVDs, left to right; exact where ``ranks`` are the full ranks)."""
    sizes = tensor.shape
    cores, rest, r = [], tensor.reshape(1, -1).double(), 1
    for k, s in enumerate(sizes[:-1]):
        mat = rest.reshape(r * s, -1)
        u, sv, vh = torch.linalg.svd(mat, full_matrices=False)
        rk = min(int(ranks[k + 1]), sv.numel())
        cores.append(u[:, :rk].reshape(r, s, rk))
        rest = sv[:rk, None] * vh[:rk]
        r = rk
    cores.append(rest.reshape(r, sizes[-1], 1))
    return cores


def contract_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the full tensor ``(s_1, .., s_L)`` of a chain of cores ``(r_{k-1}, s_k, r_k)``."""
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for g in cores[1:]:
        out = (out @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    return out.reshape([g.shape[1] for g in cores])


def _default_quantizer(shape=None):
    from .quantizers import FloatWeight
    return FloatWeight()


class _Chain(nn.Module):
    """Cores as parameters, one weight quantizer each, and the chain's helpers."""

    def __init__(self, shapes, quantizer: Callable | None):
        super().__init__()
        quantizer = quantizer or _default_quantizer
        self.cores = nn.ParameterList(nn.Parameter(torch.zeros(s)) for s in shapes)
        self.quantizers = nn.ModuleList(quantizer(tuple(s)) for s in shapes)

    def _init_random(self, std: float) -> None:
        with torch.no_grad():
            # every entry of W sums prod(inner ranks) products of L core entries
            terms = _prod(g.shape[-1] for g in list(self.cores)[:-1])
            s = (std * std / terms) ** (1 / (2 * len(self.cores)))
            for g in self.cores:
                g.normal_(0.0, s)
        self._init_quantizers()

    def _init_quantizers(self) -> None:
        with torch.no_grad():
            for g, q in zip(self.cores, self.quantizers, strict=True):
                q.init_(g)

    def qcores(self) -> list[torch.Tensor]:
        """The (fake-)quantized cores."""
        return [q(g) for g, q in zip(self.cores, self.quantizers, strict=True)]

    def post_step(self) -> None:
        with torch.no_grad():
            for g, q in zip(self.cores, self.quantizers, strict=True):
                q.post_step(g)

    def integer_cores(self) -> tuple[list[np.ndarray], float, object]:
        """Return ``(integer cores, prod of the core scales, encoding)``."""
        ints, scale, encoding = [], 1.0, None
        for g, q in zip(self.cores, self.quantizers, strict=True):
            w_int, alpha, enc = q.integer(g.detach())
            if encoding is not None and enc != encoding:
                raise BitfabError(f"core encodings differ: {enc} vs {encoding}")
            encoding = enc
            ints.append(np.asarray(w_int, dtype=np.int64))
            scale *= float(alpha)
        return ints, scale, encoding

    @property
    def param_count(self) -> int:
        """Stored numbers (all cores)."""
        return sum(g.numel() for g in self.cores)


class MpsLinear(_Chain):
    """``y = W x`` with ``W`` (``out_features x in_features``) an MPS chain (module docstring).

    Parameters
    ----------
    out_features, in_features : int
    in_modes, out_modes : sequences of int
        ``n_1 .. n_p`` (multiplying to ``in_features``) and ``m_1 .. m_q`` (to ``out_features``).
    rank : int or sequence of int
        Every inner bond (capped where a bond cannot use more), or the ``p + q - 1`` bonds.
    quantizer : callable ``shape -> WeightQuantizer``, optional (float)
    """

    def __init__(self, out_features: int, in_features: int, in_modes: Sequence[int],
                 out_modes: Sequence[int], rank, quantizer: Callable | None = None,
                 std: float | None = None):
        self.in_modes = check_modes(in_modes, in_features, "in_modes")
        self.out_modes = check_modes(out_modes, out_features, "out_modes")
        self.sizes = self.in_modes + self.out_modes
        self.ranks = chain_ranks(self.sizes, rank)
        shapes = [(self.ranks[k], s, self.ranks[k + 1]) for k, s in enumerate(self.sizes)]
        super().__init__(shapes, quantizer)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_random(std if std is not None else 1 / math.sqrt(3 * in_features))

    @classmethod
    def from_dense(cls, w: torch.Tensor, in_modes, out_modes, rank,
                   quantizer: Callable | None = None) -> MpsLinear:
        """Return the chain of ``w`` (``(M, N)``) by the TT-SVD, truncated to ``rank``."""
        m, n = w.shape
        self = cls(m, n, in_modes, out_modes, rank, quantizer)
        tensor = w.detach().double().T.reshape(self.sizes)
        with torch.no_grad():
            for g, c in zip(self.cores, tt_svd(tensor, self.ranks), strict=True):
                g.zero_()
                g[:c.shape[0], :, :c.shape[2]] = c.to(g.dtype)
        self._init_quantizers()
        return self

    @staticmethod
    def assemble(cores: Sequence[torch.Tensor], in_features: int,
                 out_features: int) -> torch.Tensor:
        """Return ``W`` ``(M, N)`` of MPS ``cores`` (torch or numpy integer arrays both work)."""
        full = contract_full([torch.as_tensor(c) for c in cores])
        return full.reshape(in_features, out_features).T

    def matrix(self, quantized: bool = True) -> torch.Tensor:
        """Return ``W`` (``(out_features, in_features)``) of the (fake-quantized) cores."""
        cores = self.qcores() if quantized else list(self.cores)
        return self.assemble(cores, self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ W.T`` by the chain of contractions (``W`` is never built)."""
        return mps_apply(self.qcores(), x, len(self.in_modes))


def mps_apply(cores: Sequence, x, p: int):
    """Return ``x @ W.T`` for MPS ``cores`` whose first ``p`` are input cores (module docstring's
    order). Works on torch tensors and on numpy int64 arrays (then exactly, in integers)."""
    is_np = isinstance(x, np.ndarray)
    einsum = np.einsum if is_np else torch.einsum
    batch = x.shape[0]
    t = x.reshape(batch, 1, -1)  # (batch, r_{k-1}, remaining inputs)
    for g in cores[:p]:
        r, s, r2 = g.shape
        t = einsum("barc,ars->bsc", t.reshape(batch, r, s, -1), g)
    out = t.reshape(batch, 1, -1)  # (batch, outputs so far, r_p)
    for g in cores[p:]:
        r, s, r2 = g.shape
        out = einsum("bdr,rms->bdms", out, g).reshape(batch, -1, r2)
    return out.reshape(batch, -1)


class MpoLinear(_Chain):
    """``y = W x`` with ``W`` a TT-matrix (MPO): cores ``(r_{k-1}, m_k, n_k, r_k)``.

    ``in_modes`` and ``out_modes`` have the same length ``q`` (mode ``k`` of the chain is the
    pair ``(m_k, n_k)``).
    """

    def __init__(self, out_features: int, in_features: int, in_modes: Sequence[int],
                 out_modes: Sequence[int], rank, quantizer: Callable | None = None,
                 std: float | None = None):
        self.in_modes = check_modes(in_modes, in_features, "in_modes")
        self.out_modes = check_modes(out_modes, out_features, "out_modes")
        if len(self.in_modes) != len(self.out_modes):
            raise BitfabError(f"out_modes {list(self.out_modes)} must have as many modes as "
                              f"in_modes {list(self.in_modes)} (an MPO pairs them)")
        self.sizes = tuple(m * n for m, n in zip(self.out_modes, self.in_modes, strict=True))
        self.ranks = chain_ranks(self.sizes, rank)
        shapes = [(self.ranks[k], m, n, self.ranks[k + 1])
                  for k, (m, n) in enumerate(zip(self.out_modes, self.in_modes, strict=True))]
        super().__init__(shapes, quantizer)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_random(std if std is not None else 1 / math.sqrt(3 * in_features))

    @classmethod
    def from_dense(cls, w: torch.Tensor, in_modes, out_modes, rank,
                   quantizer: Callable | None = None) -> MpoLinear:
        """Return the TT-matrix of ``w`` (``(M, N)``) by the TT-SVD, truncated to ``rank``."""
        m, n = w.shape
        self = cls(m, n, in_modes, out_modes, rank, quantizer)
        q = len(self.in_modes)
        t = w.detach().double().reshape(self.out_modes + self.in_modes)
        t = t.permute([i for k in range(q) for i in (k, q + k)]).reshape(self.sizes)
        with torch.no_grad():
            for g, c in zip(self.cores, tt_svd(t, self.ranks), strict=True):
                g.zero_()
                g[:c.shape[0], :, :, :c.shape[2]] = c.reshape(
                    c.shape[0], g.shape[1], g.shape[2], c.shape[2]).to(g.dtype)
        self._init_quantizers()
        return self

    def matrix(self, quantized: bool = True, cores=None) -> torch.Tensor:
        """Return ``W`` (``(out_features, in_features)``) of the (fake-quantized) cores, or of
        ``cores`` given (e.g. the integer cores, as int64 tensors)."""
        if cores is None:
            cores = self.qcores() if quantized else list(self.cores)
        q = len(cores)
        full = contract_full([g.reshape(g.shape[0], -1, g.shape[-1]) for g in cores])
        full = full.reshape([d for m, n in zip(self.out_modes, self.in_modes, strict=True)
                             for d in (m, n)])
        full = full.permute(list(range(0, 2 * q, 2)) + list(range(1, 2 * q, 2)))
        return full.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ W.T`` core by core (``W`` is never built)."""
        batch = x.shape[0]
        t = x.reshape(batch, 1, 1, -1)  # (batch, outputs so far, r_{k-1}, remaining inputs)
        for g in self.qcores():
            r, m, n, r2 = g.shape
            t = torch.einsum("bdrnc,rmns->bdmsc", t.reshape(batch, t.shape[1], r, n, -1), g)
            t = t.reshape(batch, -1, r2, t.shape[-1])
        return t.reshape(batch, -1)


def rank_for_budget(sizes: Sequence[int], budget: int) -> int:
    """Return the largest uniform rank whose chain over ``sizes`` stores at most ``budget``
    numbers (at least 1)."""
    best, rank = 1, 1
    cap = max(min(_prod(sizes[:k]), _prod(sizes[k:])) for k in range(1, len(sizes)))
    while rank <= cap:
        if chain_params(sizes, chain_ranks(sizes, rank)) > budget:
            break
        best, rank = rank, rank + 1
    return best


def parse_compress(spec) -> tuple[str, int] | None:
    """Parse a ``compress`` option: ``None``/``"none"``/``"dense"``, ``"mps:R"`` or ``"mpo:R"``.

    >>> parse_compress("mps:6"), parse_compress(None)
    (('mps', 6), None)
    """
    if spec is None or spec in ("none", "dense"):
        return None
    kind, _, rank = str(spec).partition(":")
    if kind not in ("mps", "mpo") or not rank.isdigit() or int(rank) < 1:
        raise BitfabError(f"compress must be 'mps:RANK', 'mpo:RANK' or 'none', not {spec!r}")
    return kind, int(rank)
