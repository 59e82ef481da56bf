"""Plain quantization functions and their straight-through estimators, kept apart.

The plain functions (:func:`sign`, :func:`round_half_up`, :func:`nearest`, ...) are what the
network computes; they have no useful gradient. The estimators (:class:`SignSTE`,
:class:`RoundSTE`, :func:`ste`) attach the surrogate gradients that training needs. The quantizer
modules in :mod:`bitfab.quant.quantizers` compose the two explicitly.
"""

from __future__ import annotations

import torch

__all__ = [
    "sign", "round_half_up", "nearest", "pow2_round", "SignSTE", "RoundSTE", "StepSTE",
    "UniformSTE", "ste",
]


# --- plain functions ------------------------------------------------------------------------------


def sign(x: torch.Tensor) -> torch.Tensor:
    """Return +1 where ``x >= 0`` and -1 elsewhere (zero maps to +1, as ``acc >= 0`` does).

    >>> sign(torch.tensor([-0.5, 0.0, 2.0])).tolist()
    [-1.0, 1.0, 1.0]
    """
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """Return ``floor(x + 0.5)``: ties go up, as a ``>=`` threshold does (``torch.round`` rounds
    ties to even, which no threshold can express).

    >>> round_half_up(torch.tensor([0.5, 1.5, -0.5, 2.4])).tolist()
    [1.0, 2.0, 0.0, 2.0]
    """
    return torch.floor(x + 0.5)


def nearest(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Return the index of the nearest entry of ``levels`` (1-D) for every element of ``x``.

    >>> nearest(torch.tensor([0.1, -0.9, 3.0]), torch.tensor([-1.0, 0.0, 1.0])).tolist()
    [1, 0, 2]
    """
    return torch.argmin((x.unsqueeze(-1) - levels).abs(), dim=-1)


def pow2_round(x: torch.Tensor, e_min: int, e_max: int, zero: bool) -> torch.Tensor:
    """Round ``x`` to ``sign(x) * 2**e`` with ``e = round(log2|x|)`` clamped to
    ``[e_min, e_max]``; with ``zero``, values whose exponent rounds below ``e_min`` become 0.

    >>> pow2_round(torch.tensor([0.3, -3.0, 100.0, 0.01]), -2, 3, True).tolist()
    [0.25, -4.0, 8.0, 0.0]
    """
    mag = x.abs()
    e = torch.round(torch.log2(mag.clamp_min(1e-30)))
    q = sign(x) * torch.exp2(e.clamp(e_min, e_max))
    if zero:
        q = torch.where(e < e_min, torch.zeros_like(q), q)
    return q


# --- straight-through estimators ------------------------------------------------------------------


class SignSTE(torch.autograd.Function):
    """:func:`sign` forward; backward passes the gradient where ``|x| <= 1`` and blocks it
    elsewhere (BinaryConnect's masked identity, the hardtanh gradient of BNN activations).

    >>> x = torch.tensor([-2.0, -0.5, 0.5, 3.0], requires_grad=True)
    >>> SignSTE.apply(x).sum().backward()
    >>> x.grad.tolist()
    [0.0, 1.0, 1.0, 0.0]
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class StepSTE(torch.autograd.Function):
    """Heaviside step ``1 if x > 0 else 0`` forward; masked identity (``|x| <= 1``) backward.

    >>> x = torch.tensor([-0.3, 0.2, 5.0], requires_grad=True)
    >>> y = StepSTE.apply(x); y.sum().backward()
    >>> y.tolist(), x.grad.tolist()
    ([0.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class RoundSTE(torch.autograd.Function):
    """:func:`round_half_up` forward, identity backward.

    >>> x = torch.tensor([0.4, 0.6], requires_grad=True)
    >>> RoundSTE.apply(x).sum().backward()
    >>> x.grad.tolist()
    [1.0, 1.0]
    """

    @staticmethod
    def forward(ctx, x):
        return round_half_up(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class UniformSTE(torch.autograd.Function):
    """``clamp(floor(h / step + 1/2), 0, levels) * step`` forward (the division as a product
    with ``1 / step``); backward passes the gradient where the rounded level is inside
    ``0..levels`` and blocks it elsewhere (the gradient of :class:`RoundSTE` then
    ``torch.clamp``).

    One fused function with in-place arithmetic and a one-byte mask: the activation runs on every
    element of every feature map, and as a chain of autograd ops it made a quantized CNN's
    training step ~1.4x its float twin's (ReLU is one op forward and one backward).

    >>> h = torch.tensor([-1.0, 0.2, 0.26, 1.3, 9.0], requires_grad=True)
    >>> y = UniformSTE.apply(h, 0.5, 7); y.sum().backward()
    >>> (y / 0.5).tolist(), h.grad.tolist()
    ([0.0, 0.0, 1.0, 3.0, 7.0], [0.0, 1.0, 1.0, 1.0, 0.0])
    """

    @staticmethod
    def forward(ctx, h, step: float, levels: int):
        r = h.mul(1.0 / step).add_(0.5).floor_()  # the levels before clamping
        ctx.save_for_backward(r)
        ctx.levels = levels
        return r.clamp(0, levels).mul_(step)

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        # hardtanh's backward is one native pass: the gradient where -1/2 < r < levels + 1/2,
        # which for integer r is 0 <= r <= levels
        return torch.ops.aten.hardtanh_backward(grad, r, -0.5, ctx.levels + 0.5), None, None


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return ``q`` in the forward pass with the gradient of ``x`` (identity straight-through).

    >>> x = torch.tensor([0.3], requires_grad=True)
    >>> y = ste(x, torch.tensor([1.0])); y.backward()
    >>> y.item(), x.grad.item()
    (1.0, 1.0)
    """
    # q + (x - x): the forward value is q exactly (x + (q - x) would round)
    return q.detach() + (x - x.detach())
