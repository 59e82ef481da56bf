"""Batchnorm folding: float scale + batchnorm + activation quantizer -> integer thresholds.

A hidden layer computes, per channel, ``z = a * acc`` (``acc`` the exact integer accumulator,
``a > 0`` the product of the input unit and the weight scale), then batchnorm
``h = gamma * (z - mu) / sigma + beta`` with ``sigma = sqrt(var + eps)``, then an activation that
counts the offsets ``c_t`` it passes: ``y = #{t : h >= c_t}`` (one offset 0 for the bipolar
sign, ``step * (t - 1/2)`` for a ``bits``-bit unsigned activation). Solving ``h >= c_t`` for
``acc`` gives

``tau_t = (mu + (c_t - beta) * sigma / gamma) / a``

and, since ``acc`` is an integer, ``acc >= ceil(tau_t)`` where ``gamma > 0`` and
``acc <= floor(tau_t)`` (direction -1, the weights' sign flipped in effect) where ``gamma < 0``.
Both are exact, so ``>=`` on integers reproduces the float comparison. A channel with
``gamma == 0`` is constant; its thresholds are put just outside the reachable range.
"""

from __future__ import annotations

import numpy as np

from bitfab.model import Requant, Threshold

__all__ = ["fold_thresholds", "fold_requant", "float_reference"]


def fold_thresholds(a, mean, var, eps: float, gamma, beta, offsets, acc_lo, acc_hi) -> Threshold:
    """Return the integer :class:`~bitfab.model.Threshold` stage equivalent to
    ``y = #{t : gamma * (a * acc - mean) / sqrt(var + eps) + beta >= offsets[t]}``.

    Parameters
    ----------
    a : float or array ``(out,)``
        Positive real value of one accumulator unit.
    mean, var, gamma, beta : arrays ``(out,)``
        Batchnorm running statistics and affine parameters.
    eps : float
    offsets : sequence of float, ascending
    acc_lo, acc_hi : int arrays ``(out,)``
        Reachable accumulator range; thresholds are clamped to ``[lo, hi + 1]`` (direction +1)
        or ``[lo - 1, hi]`` (direction -1), which keeps them small without changing any output.

    Examples
    --------
    >>> t = fold_thresholds(1.0, np.array([2.0]), np.array([4.0]), 0.0, np.array([-1.0]),
    ...                     np.array([0.5]), [0.0], np.array([-10]), np.array([10]))
    >>> t.thresholds.tolist(), t.direction.tolist()
    ([[3]], [-1])
    """
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), np.shape(mean))
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    lo, hi = np.asarray(acc_lo, np.int64), np.asarray(acc_hi, np.int64)
    c = np.asarray(offsets, dtype=np.float64)[None, :]
    sigma = np.sqrt(var + eps)[:, None]
    g = gamma[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = (mean[:, None] + (c - beta[:, None]) * sigma / g) / a[:, None]
    up = gamma >= 0
    never_up = (hi + 1)[:, None]
    always_up = lo[:, None]
    t_up = np.clip(np.ceil(np.where(np.isfinite(tau), tau, 0)), lo[:, None], never_up)
    t_down = np.clip(np.floor(np.where(np.isfinite(tau), tau, 0)), (lo - 1)[:, None], hi[:, None])
    # gamma == 0: h = beta everywhere, so each threshold is always or never passed
    const = (gamma == 0)[:, None]
    t_const = np.where(beta[:, None] >= c, always_up, never_up)
    t = np.where(const, t_const, np.where(up[:, None], t_up, t_down))
    direction = np.where(up, 1, -1)
    return Threshold(t.astype(np.int64), direction)


def fold_requant(a, mean, var, eps: float, gamma, beta, step: float, bits: int, acc_lo, acc_hi,
                 ) -> tuple[np.ndarray, Requant]:
    """Return ``(bias, stage)``: an integer bias per channel and a :class:`~bitfab.model.Requant`
    stage approximating ``y = clamp(floor(h / step + 1/2), 0, 2**bits - 1)``.

    ``h / step = m * acc + c`` with ``m = gamma * a / (sigma * step)`` and
    ``c = (beta - gamma * mean / sigma) / step``, so ``y = floor(m * (acc + c / m) + 1/2)``:
    the bias is ``round(c / m)`` accumulator units and ``multiplier = round(m * 2**shift)`` with
    the largest shift that keeps ``|multiplier| < 2**31`` and ``|acc * multiplier| < 2**62``.
    Unlike thresholds this is an approximation of the float network (the bias is rounded to a
    whole accumulator unit, ``m`` to ``shift`` fractional bits); the integer semantics that the
    torch reference and the golden model share are exact. A negative ``gamma`` gives a negative
    multiplier; a zero ``gamma`` gives a zero multiplier (output 0).

    >>> b, r = fold_requant(0.5, np.array([1.0]), np.array([1.0]), 0.0, np.array([2.0]),
    ...                     np.array([0.75]), 0.25, 4, np.array([-100]), np.array([100]))
    >>> b.tolist(), r.multiplier.tolist(), r.shift
    ([-1], [536870912], 27)
    """
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    sigma = np.sqrt(var + eps)
    m = gamma * np.asarray(a, np.float64) / (sigma * step)
    c = (beta - gamma * mean / sigma) / step
    live = np.abs(m) > 1e-12
    bias = np.where(live, np.round(c / np.where(live, m, 1.0)), 0.0)
    bias = np.clip(bias, -(1 << 40), 1 << 40).astype(np.int64)
    m = np.where(live, m, 0.0)
    span = max(int(np.abs(np.asarray(acc_lo) + bias).max()),
               int(np.abs(np.asarray(acc_hi) + bias).max()), 1)
    top = float(np.abs(m).max()) if m.size else 0.0
    mag = int(np.ceil(np.log2(top))) + 1 if top > 0 else 0
    shift = int(np.clip(min(30 - mag, 61 - span.bit_length() - mag), 0, 62))
    mult = np.round(m * 2.0 ** shift).astype(np.int64)
    return bias, Requant(mult, shift, bits, signed=False, rounding="half_up")


def float_reference(acc, a, mean, var, eps: float, gamma, beta, offsets) -> np.ndarray:
    """Return ``#{t : h >= offsets[t]}`` computed in float64 without folding (the check)."""
    acc = np.asarray(acc, np.float64)
    h = np.asarray(gamma) * (np.asarray(a) * acc - np.asarray(mean)) \
        / np.sqrt(np.asarray(var) + eps) + np.asarray(beta)
    return sum((h >= c).astype(np.int64) for c in offsets)
