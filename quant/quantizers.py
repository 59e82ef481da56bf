"""Weight and activation quantizers: small ``nn.Module``s, one per method.

A weight quantizer maps a latent float weight tensor to the weights the layer uses. Every one
implements the same small contract, which :class:`bitfab.quant.network.QuantDense` and the
trainer call explicitly:

- ``forward(w)``: the fake-quantized weights (training), ``alpha * W_int`` with a surrogate
  gradient to ``w``;
- ``integer(w) -> (W_int, alpha, encoding)``: the integer weights the hardware stores, the positive
  per-layer scale that :mod:`bitfab.quant.fold` absorbs into the next output stage, and the
  :mod:`bitfab.model` encoding, such that ``forward(w) == alpha * W_int`` (up to float rounding);
- ``post_step(w)``: runs after every optimizer step (latent clamping, the LUT-Q k-means step,
  the sparse-binary mask);
- ``set_progress(frac, w)``: runs at the start of every epoch with the fraction of training done
  (schedules);
- ``penalty(w)``: a regularizer added to the loss (0 by default).

The activation quantizers produce integer *levels* times a fixed step; the step is the real value
of one unit of the next layer's input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bitfab.errors import BitfabError
from bitfab.model import Binary, InputFormat, IntWeights, Lut, Pow2, Ternary

from .ste import SignSTE, StepSTE, UniformSTE, pow2_round, round_half_up, sign, ste

__all__ = [
    "WeightQuantizer", "FloatWeight", "BinaryWeight", "SparseBinaryWeight", "TernaryWeight",
    "Pow2Weight", "DenseShiftWeight", "LutQWeight", "TwoBitWeight", "IntWeight",
    "BipolarActivation", "UniformActivation",
]


def _ints(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().round().astype(np.int64)


class WeightQuantizer(nn.Module):
    """Base of the weight quantizers: the default hooks do nothing."""

    def integer(self, w: torch.Tensor) -> tuple[np.ndarray, float, object]:
        raise NotImplementedError

    def scale(self, w: torch.Tensor) -> float:
        """Return ``alpha`` of :meth:`integer` (cheaper: no integer weights are built)."""
        return self.integer(w)[1]

    def post_step(self, w: torch.Tensor) -> None:
        """Run after each optimizer step (under ``torch.no_grad``)."""

    def set_progress(self, frac: float, w: torch.Tensor) -> None:
        """Run at the start of each epoch; ``frac`` is the fraction of training done."""

    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """Return the regularizer to add to the loss."""
        return w.new_zeros(())

    def init_(self, w: torch.Tensor) -> None:
        """Initialize the latent weights (and the quantizer's own state) in place."""

    def discrete(self, w: torch.Tensor) -> np.ndarray:
        """Return the integer weights (used for the weight-freezing metric)."""
        return self.integer(w)[0]


class FloatWeight(WeightQuantizer):
    """No quantization: the float reference.

    >>> FloatWeight()(torch.tensor([0.3])).tolist()
    [0.30000001192092896]
    """

    def __init__(self, shape=None):
        super().__init__()

    def forward(self, w):
        return w

    def integer(self, w):
        raise BitfabError("the float recipe has no integer weights: it is not exportable")


class BinaryWeight(WeightQuantizer):
    """BinaryConnect: ``sign(w)`` with the identity gradient masked to ``|w| <= 1``; the latent
    weights are clamped to [-1, 1] after each step.

    >>> q = BinaryWeight((1, 3))
    >>> q(torch.tensor([[-0.2, 0.0, 0.7]])).tolist()
    [[-1.0, 1.0, 1.0]]
    """

    def __init__(self, shape=None):
        super().__init__()

    def forward(self, w):
        return SignSTE.apply(w)

    def post_step(self, w):
        w.clamp_(-1, 1)

    def integer(self, w):
        return _ints(sign(w)), 1.0, Binary()

    def scale(self, w):
        return 1.0


class SparseBinaryWeight(WeightQuantizer):
    """Sparse-binary weights (Deep Adaptive Network): ``mask * sign(w)``, values in {-1, 0, +1}.

    The kept fraction follows a cubic magnitude schedule from 1 down to ``kept`` (reached at
    ``end`` of training); after each step the mask keeps the largest ``|w|`` of the layer. A
    reweighted L1 penalty ``lam * mean(|w| / (|w| + eps))`` drives the weights of negligible input
    features (those that receive little gradient) towards zero first, so the mask drops them.

    >>> q = SparseBinaryWeight((2, 4), kept=0.25)
    >>> w = torch.tensor([[0.9, -0.1, 0.2, -0.8], [0.05, 0.3, -0.6, 0.01]])
    >>> q.set_progress(1.0, w); q.post_step(w)
    >>> (q(w) + 0.0).tolist()
    [[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, shape, kept: float = 0.25, end: float = 0.6, lam: float = 1e-5,
                 eps: float = 0.05):
        super().__init__()
        if not 0 < kept <= 1:
            raise BitfabError(f"kept must be a fraction in (0, 1], not {kept!r}")
        self.kept, self.end, self.lam, self.eps = float(kept), float(end), float(lam), float(eps)
        self.kept_now = 1.0
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, w):
        return SignSTE.apply(w) * self.mask

    def set_progress(self, frac, w):
        ramp = min(frac / self.end, 1.0) if self.end > 0 else 1.0
        self.kept_now = self.kept + (1.0 - self.kept) * (1.0 - ramp) ** 3

    def post_step(self, w):
        w.clamp_(-1, 1)
        n = w.numel()
        keep = max(1, round(self.kept_now * n))
        if keep >= n:
            self.mask.fill_(1.0)
            return
        idx = torch.topk(w.abs().flatten(), keep, sorted=False).indices
        mask = torch.zeros(n, dtype=self.mask.dtype)
        mask[idx] = 1.0
        self.mask.copy_(mask.view_as(self.mask))

    def penalty(self, w):
        return self.lam * (w.abs() / (w.abs().detach() + self.eps)).mean()

    def integer(self, w):
        return _ints(sign(w) * self.mask), 1.0, Ternary()

    def scale(self, w):
        return 1.0


class TernaryWeight(WeightQuantizer):
    """Ternary weights: TWN or TTQ.

    TWN: ``delta = 0.7 * mean|w|``, ``t = sign(w) * (|w| > delta)``, ``alpha = mean |w|`` over
    ``|w| > delta``; the forward value is ``alpha * t`` with the identity gradient. TTQ: learned
    positive and negative scales ``wp``, ``wn`` (threshold ``0.05 * max|w|``); the latent
    gradient is scaled by ``wp`` / 1 / ``wn`` per region and the scales get the summed gradients
    of their regions.

    TWN exports {-1, 0, +1} with ``alpha`` absorbed downstream. TTQ's two scales cannot be
    absorbed into one threshold, so it exports a 3-entry integer dictionary ``(-N, 0, P)`` with
    ``P / N`` the nearest 4-bit ratio to ``wp / wn`` (plain ternary when the two agree).

    >>> q = TernaryWeight((1, 4))
    >>> q(torch.tensor([[1.0, -0.1, 0.0, -2.0]])).tolist()
    [[1.5, 0.0, 0.0, -1.5]]
    """

    def __init__(self, shape=None, method: str = "twn"):
        super().__init__()
        if method not in ("twn", "ttq"):
            raise BitfabError(f"ternary method must be 'twn' or 'ttq', not {method!r}")
        self.method = method
        if method == "ttq":
            self.wp = nn.Parameter(torch.tensor(1.0))
            self.wn = nn.Parameter(torch.tensor(1.0))

    def _delta(self, w):
        w = w.detach()
        return 0.7 * w.abs().mean() if self.method == "twn" else 0.05 * w.abs().max()

    def _regions(self, w):
        d = self._delta(w)
        return (w.detach() > d).to(w.dtype), (w.detach() < -d).to(w.dtype)

    def _alpha(self, w):
        pos, neg = self._regions(w)
        kept = pos + neg
        return (w.detach().abs() * kept).sum() / kept.sum().clamp_min(1.0)

    def init_(self, w):
        if self.method == "ttq":
            with torch.no_grad():
                a = self._alpha(w)
                self.wp.fill_(float(a))
                self.wn.fill_(float(a))

    def forward(self, w):
        pos, neg = self._regions(w)
        if self.method == "twn":
            return ste(w, self._alpha(w) * (pos - neg))
        scale = (pos * self.wp + neg * self.wn + (1 - pos - neg)).detach()
        return self.wp * pos - self.wn * neg + (w - w.detach()) * scale

    def scale(self, w):
        return float(self._alpha(w)) if self.method == "twn" else self.integer(w)[1]

    def integer(self, w):
        pos, neg = self._regions(w)
        t = _ints(pos - neg)
        if self.method == "twn":
            return t, float(self._alpha(w)), Ternary()
        wp, wn = abs(float(self.wp.detach())), abs(float(self.wn.detach()))
        alpha = max(wp, wn, 1e-12) / 15
        p, n = max(1, round(wp / alpha)), max(1, round(wn / alpha))
        if p == n:
            return t, alpha * p, Ternary()
        return np.where(t > 0, p, np.where(t < 0, -n, 0)), alpha, Lut((-n, 0, p))


class Pow2Weight(WeightQuantizer):
    """DeepShift-style power-of-two weights ``sign(w) * 2**p``, ``p`` in the ``levels`` exponents
    below the layer's largest, ``round(log2 max|w|)``; weights whose exponent rounds below the
    range become 0 (``zero=True``). Identity gradient.

    >>> q = Pow2Weight((1, 4), levels=3)
    >>> q(torch.tensor([[1.0, -0.3, 0.55, 0.05]])).tolist()
    [[1.0, -0.25, 0.5, 0.0]]
    """

    def __init__(self, shape=None, levels: int = 7, zero: bool = True):
        super().__init__()
        if not 1 <= levels <= 31:
            raise BitfabError(f"pow2 levels must be in 1..31, not {levels!r}")
        self.levels, self.zero = int(levels), bool(zero)

    def _range(self, w):
        top = int(torch.round(torch.log2(w.detach().abs().max().clamp_min(1e-30))))
        return top - self.levels + 1, top

    def forward(self, w):
        lo, hi = self._range(w)
        return ste(w, pow2_round(w.detach(), lo, hi, self.zero))

    def scale(self, w):
        return 2.0 ** self._range(w)[0]

    def integer(self, w):
        lo, hi = self._range(w)
        q = pow2_round(w.detach().double(), lo, hi, self.zero) * 2.0 ** -lo
        return _ints(q), 2.0 ** lo, Pow2(0, self.levels - 1, zero=self.zero)


class DenseShiftWeight(WeightQuantizer):
    """DenseShift: zero-free weights ``alpha * s * 2**p``, ``s`` in {-1, +1}, ``p`` in ``0..P``.

    Sign-scale decomposition: the layer's latent weight is the sign tensor (``s = sign(w)``), and
    ``P`` latent scale bits ``v`` per weight give ``p = sum_i step(v_i)``. The forward value is
    ``alpha * s * 2**p``; the gradient flows through the surrogate ``alpha * s * sqrt(p + 1)``
    (masked straight-through estimators for ``sign`` and ``step``). Low-variance random
    initialization: random signs, every scale bit off, so every weight starts at ``+-alpha``.
    No weight can be zero.

    >>> q = DenseShiftWeight((1, 3), P=2)
    >>> with torch.no_grad():
    ...     _ = q.bits.copy_(torch.tensor([[[1.0, -1.0, 1.0]], [[1.0, -1.0, -1.0]]]))
    >>> (q(torch.tensor([[0.5, -0.5, -0.1]])) / q.alpha).tolist()
    [[4.0, -1.0, -2.0]]
    """

    def __init__(self, shape, P: int = 3):
        super().__init__()
        if not 0 <= P <= 15:
            raise BitfabError(f"DenseShift P must be in 0..15, not {P!r}")
        self.P = int(P)
        self.bits = nn.Parameter(torch.full((self.P, *shape), -0.25))
        self.register_buffer("alpha", torch.tensor(1.0 / math.sqrt(shape[1])))

    def init_(self, w):
        with torch.no_grad():
            w.uniform_(-0.1, 0.1)
            self.bits.uniform_(-0.3, -0.05)

    def _sp(self, w):
        s = SignSTE.apply(w)
        p = StepSTE.apply(self.bits).sum(0) if self.P else torch.zeros_like(w)
        return s, p

    def forward(self, w):
        s, p = self._sp(w)
        surrogate = self.alpha * s * torch.sqrt(p + 1)
        true = self.alpha * s.detach() * torch.exp2(p.detach())
        return surrogate + (true - surrogate).detach()

    def post_step(self, w):
        w.clamp_(-1, 1)
        self.bits.clamp_(-1, 1)

    def scale(self, w):
        return float(self.alpha)

    def integer(self, w):
        s, p = self._sp(w.detach())
        return _ints(s * torch.exp2(p)), float(self.alpha), Pow2(0, self.P, zero=False)


_LUT_CONSTRAINTS = ("none", "pow2", "prune", "pow2+prune")


class LutQWeight(WeightQuantizer):
    """LUT-Q: a learned dictionary ``d`` of ``K`` values and an assignment ``A``; ``Q = d[A]``.

    Training takes a gradient step on the latent weights (identity gradient through ``Q``), then
    :meth:`kmeans_step`: reassign every weight to its nearest entry, set every entry to the mean of
    its weights, project onto the constraint: ``pow2`` (entries ``+-2**e``: multiplierless),
    ``prune`` (``d[0]`` fixed at 0 and the ``prune`` fraction of smallest ``|w|`` assigned to it),
    or both. At export the dictionary becomes integers: pow2 entries divided by the smallest one
    (exact), other entries rounded on a grid of ``entry_bits``-bit signed integers.

    >>> q = LutQWeight((1, 6), K=2)
    >>> w = torch.tensor([[-1.0, -0.8, -1.2, 1.0, 0.9, 1.1]])
    >>> q.init_(w); q(w).tolist()
    [[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]]
    >>> q.integer(w)[0].tolist(), q.integer(w)[2]
    ([[-127, -127, -127, 127, 127, 127]], Lut(dictionary=(-127, 127)))
    """

    def __init__(self, shape, K: int = 4, constraint: str = "none", prune: float = 0.5,
                 entry_bits: int = 8):
        super().__init__()
        if constraint not in _LUT_CONSTRAINTS:
            raise BitfabError(f"LUT-Q constraint must be one of {list(_LUT_CONSTRAINTS)}, "
                              f"not {constraint!r}")
        if not 2 <= K <= 256:
            raise BitfabError(f"LUT-Q K must be in 2..256, not {K!r}")
        if not 0 <= prune < 1:
            raise BitfabError(f"LUT-Q prune must be a fraction in [0, 1), not {prune!r}")
        self.K, self.constraint, self.prune_frac = int(K), constraint, float(prune)
        self.entry_bits = int(entry_bits)
        self.register_buffer("dictionary", torch.linspace(-1, 1, self.K))
        self.register_buffer("assign", torch.zeros(shape, dtype=torch.int64))

    @property
    def pruned(self) -> bool:
        return "prune" in self.constraint

    @property
    def pow2(self) -> bool:
        return "pow2" in self.constraint

    def init_(self, w):
        w = w.detach()
        flat = w.flatten()
        if self.pruned:
            n0 = round(self.prune_frac * flat.numel())
            rest = flat[torch.argsort(flat.abs())[n0:]]
            qs = torch.linspace(0, 1, self.K + 1)[1:-1]
            inner = torch.quantile(rest, qs) if rest.numel() else torch.zeros(self.K - 1)
            d = torch.cat([torch.zeros(1), inner])
        else:
            d = torch.quantile(flat, (torch.arange(self.K) + 0.5) / self.K)
        self.dictionary.copy_(self._project(d))
        for _ in range(5):
            self.kmeans_step(w)

    def _project(self, d):
        if self.pow2:
            nz = d.abs() > 0
            top = torch.round(torch.log2(d.abs().max().clamp_min(1e-30)))
            d = torch.where(nz, pow2_round(d, int(top) - 7, int(top), zero=False), d)
        if self.pruned:
            d = d.clone()
            d[0] = 0.0
        return d

    @staticmethod
    def _nearest(x, d):
        # sorted entries and their midpoints: O(n log K) instead of an (n, K) distance matrix,
        # since this runs after every optimizer step
        order = torch.argsort(d)
        mids = (d[order][1:] + d[order][:-1]) / 2
        return order[torch.bucketize(x, mids)]

    def _assign(self, w):
        flat = w.flatten()
        if not self.pruned:
            return self._nearest(flat, self.dictionary).view_as(w)
        n0 = round(self.prune_frac * flat.numel())
        a = self._nearest(flat, self.dictionary[1:]) + 1
        if n0:
            a[torch.topk(flat.abs(), n0, largest=False, sorted=False).indices] = 0
        return a.view_as(w)

    @torch.no_grad()
    def kmeans_step(self, w: torch.Tensor) -> None:
        """Reassign, re-centre, project (one Lloyd iteration under the constraint)."""
        w = w.detach()
        a = self._assign(w)
        flat = a.flatten()
        count = torch.bincount(flat, minlength=self.K).to(w.dtype)
        total = torch.zeros(self.K, dtype=w.dtype).index_add_(0, flat, w.flatten())
        d = torch.where(count > 0, total / count.clamp_min(1), self.dictionary)
        if self.pruned:
            d[0] = 0.0
        self.assign.copy_(a)
        self.dictionary.copy_(self._project(d))

    def error(self, w: torch.Tensor) -> float:
        """Return the quantization error ``sum (w - d[A])**2``."""
        return float(((w.detach() - self.dictionary[self.assign]) ** 2).sum())

    def forward(self, w):
        # the entries as exported (integers times alpha), so training sees the exported weights
        D, alpha = self.integer_dictionary()
        d = torch.as_tensor(D * alpha, dtype=w.dtype)
        return ste(w, d[self.assign])

    def post_step(self, w):
        self.kmeans_step(w)

    def integer_dictionary(self) -> tuple[np.ndarray, float]:
        """Return the integer entries ``D`` (one per ``K``, possibly repeated) and ``alpha``."""
        d = self.dictionary.detach().double()
        nz = d.abs() > 0
        if not bool(nz.any()):
            return np.zeros(self.K, dtype=np.int64), 1.0
        if self.pow2:
            alpha = float(d.abs()[nz].min())
            return _ints(d / alpha), alpha
        alpha = float(d.abs().max()) / ((1 << (self.entry_bits - 1)) - 1)
        return _ints(round_half_up(d / alpha)), alpha

    def scale(self, w):
        return self.integer_dictionary()[1]

    def discrete(self, w):
        # the assignment: the dictionary moves every step, so integer values would all "change"
        return self.assign.cpu().numpy().copy()

    def integer(self, w):
        D, alpha = self.integer_dictionary()
        return D[self.assign.cpu().numpy()], alpha, Lut(tuple(sorted(set(D.tolist()))))


class TwoBitWeight(WeightQuantizer):
    """Two-stage soft-to-hard 2-bit weights on the levels ``alpha * (-3, -1, 1, 3)``.

    Stage 1 (``frac < hard_from``): the forward is the float weight and :meth:`penalty` pulls each
    weight towards its nearest level with strength ``lam * (frac / hard_from)**2`` (quantization
    as a regularizer); ``alpha`` is refitted by least squares each epoch. Stage 2: the latent
    weights are projected onto the levels once and fine-tuned with the straight-through estimator.

    >>> q = TwoBitWeight((1, 4)); _ = q.alpha.fill_(0.5), q.hard.fill_(1.0)
    >>> q(torch.tensor([[-2.0, -0.1, 0.4, 9.0]])).tolist()
    [[-1.5, -0.5, 0.5, 1.5]]
    """

    LEVELS = (-3, -1, 1, 3)

    def __init__(self, shape=None, lam: float = 1.0, hard_from: float = 0.7):
        super().__init__()
        self.lam, self.hard_from, self.frac = float(lam), float(hard_from), 0.0
        self.register_buffer("levels", torch.tensor(self.LEVELS, dtype=torch.float32))
        self.register_buffer("alpha", torch.tensor(1.0))
        self.register_buffer("hard", torch.tensor(0.0))

    def _level(self, w):
        # nearest of the odd levels -3, -1, 1, 3 in closed form (no K-way argmin): every step
        # of stage 1 pays for it, and the published overhead is a few percent
        return torch.clamp(torch.floor(w.detach() / (2 * self.alpha)), -2, 1) * 2 + 1

    def _q(self, w):
        return self.alpha * self._level(w)

    def _fit_alpha(self, w):
        lv = self._level(w)
        self.alpha.fill_(float((w.detach() * lv).sum() / (lv * lv).sum()))

    def init_(self, w):
        self.alpha.fill_(float(0.5 * w.detach().std()))

    @torch.no_grad()
    def set_progress(self, frac, w):
        self.frac = frac
        if frac < self.hard_from:
            for _ in range(3):
                self._fit_alpha(w)
        elif not bool(self.hard):
            self.hard.fill_(1.0)
            w.copy_(self._q(w))

    def forward(self, w):
        return ste(w, self._q(w)) if bool(self.hard) else w

    def penalty(self, w):
        if bool(self.hard):
            return w.new_zeros(())
        strength = self.lam * min(self.frac / self.hard_from, 1.0) ** 2
        return strength * ((w - self._q(w)) ** 2).mean() / self.alpha ** 2

    def integer(self, w):
        return _ints(self._level(w)), float(self.alpha), Lut(self.LEVELS)

    def scale(self, w):
        return float(self.alpha)


class IntWeight(WeightQuantizer):
    """Symmetric ``bits``-bit integer weights: ``alpha = max|w| / (2**(bits-1) - 1)``,
    ``W_int = round(w / alpha)``, identity gradient.

    >>> IntWeight((1, 3), bits=2)(torch.tensor([[-0.6, 0.2, 1.0]])).tolist()
    [[-1.0, 0.0, 1.0]]
    """

    def __init__(self, shape=None, bits: int = 8):
        super().__init__()
        if not 2 <= bits <= 16:
            raise BitfabError(f"integer weight bits must be in 2..16, not {bits!r}")
        self.bits = int(bits)
        self.top = (1 << (self.bits - 1)) - 1

    def _alpha(self, w):
        return w.detach().abs().max().clamp_min(1e-12) / self.top

    def forward(self, w):
        a = self._alpha(w)
        return ste(w, torch.clamp(round_half_up(w.detach() / a), -self.top, self.top) * a)

    def scale(self, w):
        return float(self._alpha(w.double()))

    def integer(self, w):
        a = self._alpha(w.double())
        q = torch.clamp(round_half_up(w.detach().double() / a), -self.top, self.top)
        return _ints(q), float(a), IntWeights(self.bits)


# --- activations ----------------------------------------------------------------------------------


class BipolarActivation(nn.Module):
    """BNN activation ``sign(h)`` in {-1, +1} with the hardtanh gradient mask (``|h| <= 1``).

    In hardware this is one threshold: ``y = 1 if acc >= tau``, read as the next layer's
    bipolar code.

    >>> BipolarActivation()(torch.tensor([-0.1, 0.0, 4.0])).tolist()
    [-1.0, 1.0, 1.0]
    """

    step = 1.0
    levels = 1

    def forward(self, h):
        return SignSTE.apply(h)

    def offsets(self) -> list[float]:
        """Return the values of ``h`` at which the output steps (one: 0)."""
        return [0.0]

    def out_format(self) -> InputFormat:
        return InputFormat.bipolar()


class UniformActivation(nn.Module):
    """Unsigned ``bits``-bit activation: ``y = clamp(floor(h / step + 0.5), 0, 2**bits - 1)``
    levels, each worth ``step``; identity gradient inside the range, zero outside (FINN-style
    multi-threshold in hardware: ``y`` counts the thresholds ``h >= step * (t - 1/2)``).

    >>> UniformActivation(2, step=1.0)(torch.tensor([-1.0, 0.5, 1.2, 7.0])).tolist()
    [0.0, 1.0, 1.0, 3.0]
    """

    def __init__(self, bits: int, step: float | None = None):
        super().__init__()
        if not 2 <= bits <= 8:
            raise BitfabError(f"activation bits must be 1 (bipolar) or 2..8, not {bits!r}")
        self.bits = int(bits)
        self.levels = (1 << self.bits) - 1
        # BN output is roughly N(0, 1): the top level sits near 3 sigma
        self.step = float(step) if step is not None else 3.0 / self.levels

    def forward(self, h):
        return UniformSTE.apply(h, self.step, self.levels)

    def offsets(self) -> list[float]:
        return [self.step * (t - 0.5) for t in range(1, self.levels + 1)]

    def out_format(self) -> InputFormat:
        return InputFormat.int(self.bits, signed=False)
