"""The golden model: the single definition of what the hardware computes.

Pure numpy, exact integer arithmetic, one function per datapath kind. Every function returns int64
arrays and is exact by construction:

- :func:`xnor_popcount_matmul` works on bit-packed words with ``np.bitwise_count``;
- the other matmuls reduce to :func:`exact_matmul`, which uses a BLAS float matmul only where every
  partial sum is an integer whose magnitude the float type holds exactly (float32 below ``2**24``,
  float64 below ``2**53``): every product and every intermediate sum is then representable, so no
  rounding ever happens, in any summation order. Larger bounds use int64. Where the bound leaves
  room, several outputs share one float column in fields ``2**shift`` apart
  (:func:`exact_plan`), so the matmul does a half or a quarter of the work;
- layers run through :func:`matrix_accumulate`: every datapath computes the integers ``x @ w.T``,
  so all take that fast path (:func:`bipolar_matmul` for the bits of a bipolar layer); the
  datapath kernels above spell out the hardware's way and the tests hold them equal
  (:func:`reference_accumulate`).

The model's declared widths are checked: a layer whose accumulator could leave its declared
``acc_bits`` is refused when the model is built (:class:`bitfab.model.Dense`), and the inputs given
here are checked against the input format, so the int64 arithmetic never overflows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from bitfab.errors import ModelRangeError
from bitfab.model import (
    Dense,
    IntegerModel,
)

__all__ = [
    "pack_bits", "xnor_popcount_matmul", "exact_plan", "exact_matmul", "bipolar_matmul",
    "ternary_matmul", "shift_add_matmul",
    "lut_matmul", "int_matmul", "threshold", "requant", "matrix_accumulate", "reference_accumulate",
    "dense_accumulate",
    "dense_forward", "stage_forward",
    "register", "layer_golden", "dense_layer", "Trace", "check_inputs", "check_sequences",
    "execute", "predict", "expected_rows", "compare_outputs",
]

_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53
_CHUNK = 128  # rows of the popcount kernel per block: keeps the working set in L2
_LANES_MIN_N = 128  # shorter rows: extracting the fields costs more than the matmul it saves
_MAX_LANES = 4


# --- datapath kernels -----------------------------------------------------------------------------


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a ``(rows, n)`` array of 0/1 into ``(rows, ceil(n/64))`` little-endian uint64 words.

    Padding bits are zero, so they never contribute to ``popcount(a ^ b)``.
    """
    bits = np.asarray(bits)
    rows, n = bits.shape
    words = (n + 63) // 64
    packed = np.packbits(bits.astype(np.uint8, copy=False), axis=1, bitorder="little")
    out = np.zeros((rows, words * 8), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)


def xnor_popcount_matmul(x_packed: np.ndarray, w_packed: np.ndarray, n: int) -> np.ndarray:
    """Return ``acc[b, o] = sum_i x[b, i] * w[o, i]`` for bipolar ``x`` and ``w`` (bit 1 = +1).

    Uses ``acc = 2 * popcount(xnor(x, w)) - n = n - 2 * popcount(x ^ w)``, where the popcount runs
    over the ``n`` valid bits of the :func:`pack_bits` words.

    Parameters
    ----------
    x_packed : uint64 array, shape ``(batch, words)``
    w_packed : uint64 array, shape ``(out, words)``
    n : int
        Number of valid bits (the vector length).
    """
    batch, words = x_packed.shape
    if w_packed.shape[1] != words:
        raise ValueError(f"w_packed must have {words} words per row, not {w_packed.shape[1]}")
    outs = w_packed.shape[0]
    wt = np.ascontiguousarray(w_packed.T)
    count_dtype = np.uint16 if n < 1 << 16 else np.uint32
    result = np.empty((batch, outs), dtype=np.int64)
    tmp = np.empty((_CHUNK, outs), dtype=np.uint64)
    pc = np.empty((_CHUNK, outs), dtype=np.uint8)
    for start in range(0, batch, _CHUNK):
        xs = x_packed[start:start + _CHUNK]
        b = xs.shape[0]
        acc = np.zeros((b, outs), dtype=count_dtype)
        for k in range(words):
            np.bitwise_xor(xs[:, k, None], wt[k][None, :], out=tmp[:b])
            np.bitwise_count(tmp[:b], out=pc[:b])
            np.add(acc, pc[:b], out=acc)
        result[start:start + b] = acc
    return n - 2 * result


def exact_plan(x_bound: int, w_bound: int, outs: int, n: int) -> tuple:
    """Return ``(dtype, lanes, shift)``: how :func:`exact_matmul` computes ``x @ w.T`` exactly.

    ``x_bound`` bounds ``|x|``, ``w_bound`` bounds every row's ``sum_i |w[o, i]|``, so
    ``S = x_bound * w_bound`` bounds every partial sum of every output. ``lanes`` outputs share
    one float column, ``lanes`` fields ``T = 2**shift`` apart (``T >= 2 S + 2``): the column's
    partial sums are then bounded by ``S * (1 + T + ... + T**(lanes - 1))``, and that bound is kept
    below ``2**24`` (float32) or ``2**53`` (float64), where every integer is exact: no product or
    sum of the BLAS matmul ever rounds, in any order, and each field is recovered exactly (it
    lies within ``T/2`` of zero). The cheapest exact choice wins: a float64 column costs three
    float32 ones (measured with ``bench/golden.py``: twice the multiplies, plus the wider
    conversions), so three float64 lanes lose to one float32 lane; ``dtype`` None means no float
    type is exact: int64.
    """
    s = x_bound * w_bound
    plan, cost = (None, 1, 0), float("inf")
    shift = (2 * s + 1).bit_length()  # the smallest T = 2**shift with T >= 2 S + 2
    for dtype, limit, unit in ((np.float32, _F32_EXACT, 1.0), (np.float64, _F64_EXACT, 3.0)):
        if s >= limit:
            continue
        if unit < cost:
            plan, cost = (dtype, 1, 0), unit
        if n < _LANES_MIN_N:
            continue
        for lanes in range(2, min(outs, _MAX_LANES) + 1):
            if s * sum(1 << (shift * f) for f in range(lanes)) >= limit:
                break
            if unit / lanes < cost:
                plan, cost = (dtype, lanes, shift), unit / lanes
    return plan


def _lane_weights(w: np.ndarray, plan: tuple, offset, cache: dict | None):
    """The ``(n, columns)`` float weights of ``plan`` (``lanes`` outputs per column) and the
    packed ``offset`` per column (or None), from ``cache`` where there."""
    key = ("lanes", np.dtype(plan[0]).char) + tuple(plan[1:])
    if cache is not None and key in cache:
        return cache[key]
    dtype, lanes, shift = plan
    outs, n = w.shape
    cols = -(-outs // lanes)
    full = np.zeros((lanes * cols, n), dtype=dtype)
    full[:outs] = w  # |w| <= w_bound < 2**mantissa: exact
    packed = full[:cols].copy()
    for f in range(1, lanes):  # integers below the plan's bound: exact
        packed += full[f * cols:(f + 1) * cols] * dtype(1 << (shift * f))
    const = None
    if offset is not None:
        lane_offset = np.zeros(lanes * cols, dtype=dtype)
        lane_offset[:outs] = offset
        const = sum(lane_offset[f * cols:(f + 1) * cols] * dtype(1 << (shift * f))
                    for f in range(lanes))
    prepared = (np.ascontiguousarray(packed.T), const)
    if cache is not None:
        cache[key] = prepared
    return prepared


def _lanes_matmul(xf: np.ndarray, w: np.ndarray, plan: tuple, offset=None,
                  cache: dict | None = None) -> np.ndarray:
    """``xf @ w.T - offset`` as int64 through the float BLAS matmul of ``plan``
    (:func:`exact_plan`), ``xf`` already in the plan's float type. Exact only within the plan's
    bound: the caller proves it."""
    dtype, lanes, shift = plan
    outs = w.shape[0]
    cols = -(-outs // lanes)
    packed, const = _lane_weights(w, plan, offset, cache)
    tot = xf @ packed
    if const is not None:
        tot -= const
    out = np.empty((len(xf), outs), dtype=np.int64)
    for f in range(lanes - 1, 0, -1):
        # the top field: the lower ones add less than 1/2 to tot / T**f (T >= 2 S + 2)
        scale = dtype(1 << (shift * f))
        top = np.rint(tot * (1 / scale))
        lo, hi = f * cols, min((f + 1) * cols, outs)
        out[:, lo:hi] = top[:, :hi - lo]
        top *= scale
        tot -= top
    out[:, :min(cols, outs)] = tot[:, :min(cols, outs)]
    return out


def _w_bound(w: np.ndarray, cache: dict | None) -> int:
    if cache is not None and "w_bound" in cache:
        return cache["w_bound"]
    bound = int(np.abs(w).sum(axis=1).max())
    if cache is not None:
        cache["w_bound"] = bound
    return bound


def exact_matmul(x: np.ndarray, w: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """Return ``x @ w.T`` exactly as int64 (``x``: ``(batch, n)``, ``w``: ``(out, n)``).

    The bound ``max|x| * max_o sum_i |w[o, i]|`` caps every partial sum; :func:`exact_plan`
    picks the float type (and the outputs per column) that holds every such integer exactly, else
    int64. ``cache`` (a dict kept with the weights) keeps their prepared float forms.
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if x.size == 0 or w.size == 0:
        return np.zeros((x.shape[0], w.shape[0]), dtype=np.int64)
    w_bound = _w_bound(w, cache)
    xf = x.astype(np.float32)
    top = max(float(xf.max()), -float(xf.min()))  # rounding is monotonic: >= 2**24 stays so
    x_bound = int(top) if top < _F32_EXACT else max(int(x.max()), -int(x.min()))
    plan = exact_plan(x_bound, w_bound, w.shape[0], w.shape[1])
    if plan[0] is None:
        return x @ w.T
    if plan[0] is np.float64:
        xf = x.astype(np.float64)
    return _lanes_matmul(xf, w, plan, cache=cache)


def bipolar_matmul(x: np.ndarray, w: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """Return what :func:`xnor_popcount_matmul` returns for bits ``x > 0`` and ``w > 0``, as
    ``(2a - 1) @ (2c - 1).T = a @ (2c - 1).T * 2 - rowsum(2c - 1)`` for 0/1 ``a``, ``c`` through
    the float BLAS matmul of :func:`exact_plan` (bound ``S = 2n``); beyond every float bound
    (``n >= 2**52``), through the popcount kernel."""
    x = np.asarray(x)
    w = np.asarray(w)
    n = w.shape[1]
    plan = exact_plan(1, 2 * n, w.shape[0], n)
    if plan[0] is None or x.size == 0 or w.size == 0:
        return xnor_popcount_matmul(pack_bits(x > 0), pack_bits(w > 0), n)
    weights = None if cache is None else cache.get("bipolar")
    if weights is None:
        signs = np.where(w > 0, 1, -1)
        weights = (2 * signs, signs.sum(axis=1), {})
        if cache is not None:
            cache["bipolar"] = weights
    return _lanes_matmul((x > 0).astype(plan[0]), weights[0], plan, weights[1], weights[2])


def ternary_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Add / subtract / skip: ``acc = sum_{w=+1} x - sum_{w=-1} x`` (``w`` in {-1, 0, +1})."""
    w = np.asarray(w)
    return exact_matmul(x, (w > 0).astype(np.int64)) - exact_matmul(x, (w < 0).astype(np.int64))


def shift_add_matmul(x: np.ndarray, sign: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Shift-add: ``acc = sum_e (sum_{i: e_i = e} sign_i * x_i) << e``.

    ``sign`` in {-1, 0, +1} (0 = zero weight), ``exponent`` >= 0, both shaped ``(out, n)``.
    """
    sign = np.asarray(sign, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    x = np.asarray(x, dtype=np.int64)
    acc = np.zeros((x.shape[0], sign.shape[0]), dtype=np.int64)
    for e in np.unique(exponent[sign != 0]):
        acc += exact_matmul(x, np.where(exponent == e, sign, 0)) << int(e)
    return acc


def lut_matmul(x: np.ndarray, index: np.ndarray, dictionary) -> np.ndarray:
    """Dictionary: ``acc = sum_k d[k] * (sum_{i: index_i = k} x_i)``: one product per entry."""
    index = np.asarray(index)
    x = np.asarray(x, dtype=np.int64)
    acc = np.zeros((x.shape[0], index.shape[0]), dtype=np.int64)
    for k, value in enumerate(dictionary):
        if value != 0:
            acc += int(value) * exact_matmul(x, (index == k).astype(np.int64))
    return acc


def int_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Multiply-accumulate: ``acc = x @ w.T`` (the baseline datapath)."""
    return exact_matmul(x, w)


def threshold(acc: np.ndarray, thresholds: np.ndarray, direction: np.ndarray | None = None,
              ) -> np.ndarray:
    """Count thresholds passed: ``y = #{t: acc >= T[o,t]}`` (direction +1) or
    ``#{t: acc <= T[o,t]}`` (direction -1). ``acc``: ``(batch, out)``; ``T``: ``(out, T)``."""
    acc = np.asarray(acc, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.int64)
    if direction is None:
        direction = np.ones(thresholds.shape[0], dtype=np.int64)
    up = np.asarray(direction) > 0
    y = np.zeros(acc.shape, dtype=np.int64)
    for t in range(thresholds.shape[1]):
        col = thresholds[:, t]
        y += np.where(up, acc >= col, acc <= col)
    return y


def requant(acc: np.ndarray, multiplier: np.ndarray, shift: int, lo: int, hi: int,
            offset: int = 0) -> np.ndarray:
    """Return ``clamp((acc * multiplier + offset) >> shift, lo, hi)`` with a floor shift."""
    acc = np.asarray(acc, dtype=np.int64)
    return np.clip((acc * np.asarray(multiplier, dtype=np.int64) + offset) >> shift, lo, hi)


# --- layers and networks --------------------------------------------------------------------------


def _cache(owner) -> dict:
    """The golden model's cache of prepared weights, kept beside a frozen layer's fields."""
    return owner.__dict__.setdefault("_golden_cache", {})


def matrix_accumulate(datapath: str, encoding, w: np.ndarray, x: np.ndarray,
                      cache: dict | None = None) -> np.ndarray:
    """Return ``x @ w.T`` exactly ``(batch, out)`` for the datapath ``datapath`` (the weights'
    encoding on the input format), for weight values ``w`` ``(out, n)`` of ``encoding`` and input
    values ``x`` ``(batch, n)``; ``cache`` (a dict kept with ``w``) keeps prepared weights.

    Every datapath computes the same integers ``x @ w.T`` (a bipolar layer on the bits
    ``x > 0``, ``w > 0``): its kernel above (:func:`xnor_popcount_matmul`, :func:`ternary_matmul`,
    ...) spells out how the hardware gets there, and the tests hold each equal to the fast path
    used here, :func:`bipolar_matmul` or :func:`exact_matmul` (one BLAS matmul within the float
    bound, see :func:`exact_plan`).
    """
    if datapath == "xnor_popcount":
        return bipolar_matmul(x, w, cache)
    return exact_matmul(x, w, cache)


def reference_accumulate(datapath: str, encoding, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`matrix_accumulate` through the datapath's own kernel (the popcount, add/subtract,
    shift-add or dictionary form), which the tests hold equal to the fast path."""
    if datapath == "xnor_popcount":
        return xnor_popcount_matmul(pack_bits(x > 0), pack_bits(w > 0), w.shape[1])
    if datapath == "ternary":
        return ternary_matmul(x, w)
    if datapath == "shift_add":
        exponent = np.where(w != 0, encoding.exponents(w), 0)
        return shift_add_matmul(x, np.sign(w), exponent)
    if datapath == "lut":
        return lut_matmul(x, encoding.encode(w), encoding.dictionary)
    return int_matmul(x, w)


def dense_accumulate(layer: Dense, x: np.ndarray) -> np.ndarray:
    """Return the exact accumulators ``(batch, out)`` of ``layer`` for input values ``x``."""
    return matrix_accumulate(layer.datapath, layer.encoding, layer.weights, x, _cache(layer)) \
        + layer.bias


def stage_forward(stage, acc: np.ndarray) -> np.ndarray:
    """Apply an output stage to accumulators ``(..., channels)`` (:data:`OUTPUT_STAGES`)."""
    acc = np.asarray(acc, dtype=np.int64)
    flat = acc.reshape(-1, acc.shape[-1])
    return OUTPUT_STAGES[stage.kind](stage, flat).reshape(acc.shape)


def dense_forward(layer: Dense, acc: np.ndarray) -> np.ndarray:
    """Apply ``layer``'s output stage to its accumulators (:data:`OUTPUT_STAGES`)."""
    return OUTPUT_STAGES[layer.output.kind](layer.output, acc)


#: output stage kind -> ``(stage, acc) -> values``
OUTPUT_STAGES = {
    "threshold": lambda stage, acc: threshold(acc, stage.thresholds, stage.direction),
    "requant": lambda stage, acc: requant(acc, stage.multiplier, stage.shift, stage.lo, stage.hi,
                                          stage.offset),
    "none": lambda stage, acc: acc,
}


#: layer kind -> its golden function ``(layer, values, lengths) -> (outputs, state)``
_KINDS: dict = {}


def register(kind: str):
    """Register the golden function of a layer kind (a decorator).

    The function takes the layer, its input values (``(batch, features)`` vectors, or
    ``(batch, T, features)`` sequences with ``lengths``; padding steps are 0) and returns the
    layer's output values in the same layout (padding 0) and its internal state for the trace.
    """
    def decorate(fn):
        _KINDS[kind] = fn
        return fn
    return decorate


def layer_golden(layer):
    """Return the golden function of ``layer``'s kind (:func:`register`)."""
    try:
        return _KINDS[layer.kind]
    except KeyError:
        raise ModelRangeError(f"the golden model has no {layer.kind!r} layers "
                              f"(it runs {sorted(_KINDS)})") from None


@register("dense")
def dense_layer(layer: Dense, values: np.ndarray, lengths: np.ndarray | None = None):
    """Run a dense layer on vectors, or on every valid step of sequences (0 at padding);
    return ``(outputs, accumulators)``."""
    flat = values.reshape(-1, values.shape[-1])
    acc = dense_accumulate(layer, flat)
    out = dense_forward(layer, acc)
    acc = acc.reshape(values.shape[:-1] + (-1,))
    out = out.reshape(values.shape[:-1] + (-1,))
    if values.ndim == 3:
        valid = (np.arange(values.shape[1])[None, :] < lengths[:, None])[..., None]
        acc, out = np.where(valid, acc, 0), np.where(valid, out, 0)
    return out, acc


@dataclass(frozen=True)
class Trace:
    """Everything the golden model computed for a batch.

    Members
    -------
    inputs : list of int64 arrays
        The values each layer read (bipolar layers: -1/+1).
    accumulators : list
        Each layer's internal state: a dense layer's accumulators ``(batch, out)`` (or
        ``(batch, T, out)``), an lstm layer's per-direction ``(hidden, cells)`` states.
    outputs : list of int64 arrays
        Each layer's output values (threshold counts, requantized values, accumulators, hidden
        states); ``(batch, T, features)`` per step of sequences (0 at padding).
    lengths : int64 array or None
        The sequence lengths (sequence models; every image's pixel count for image models),
        else None.
    out_lengths : int64 array or None
        Transfers per item of the last output where it is framed (a sequence's steps, an
        image's pixels), else None.
    """

    inputs: list
    accumulators: list
    outputs: list
    lengths: np.ndarray | None = None
    out_lengths: np.ndarray | None = None

    @property
    def output(self) -> np.ndarray:
        """The last layer's output."""
        return self.outputs[-1]


def _integers(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))].flat[0]
            raise ModelRangeError(f"{what} must be integers, not values such as {bad}")
    elif arr.dtype.kind not in "iu":
        raise ModelRangeError(f"{what} must be integers, not {arr.dtype}")
    return arr.astype(np.int64)


def check_sequences(layer, x, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, lengths)`` of sequences for ``layer`` (whose input is framed) as int64
    arrays with padding set to 0, or raise :class:`ModelRangeError`.

    ``x`` is ``(batch, T, in_features)`` (a 2-D array is one sequence); ``lengths`` defaults to
    ``T``. Refused, never truncated: a length of 0, a length above ``T`` or above the layer's
    ``max_length``, and a valid step's value outside the input format.
    """
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != layer.in_features:
        raise ModelRangeError(f"sequences must have shape (batch, steps, {layer.in_features}), "
                              f"not {np.shape(x)}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise ModelRangeError(f"sequences must hold integers, not {arr.dtype} values")
    arr = arr.astype(np.int64)
    batch, steps, _ = arr.shape
    if lengths is None:
        lengths = np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or lengths.dtype.kind not in "iu":
        raise ModelRangeError(f"lengths must be {batch} integers, not {lengths!r}"[:200])
    lengths = lengths.astype(np.int64)
    if batch and lengths.min() < 1:
        raise ModelRangeError(f"sequence {int(np.argmin(lengths))} has length "
                              f"{int(lengths.min())}: an empty sequence has no output")
    if batch and lengths.max() > steps:
        raise ModelRangeError(f"sequence {int(np.argmax(lengths))} has length "
                              f"{int(lengths.max())}, more than the {steps} steps given")
    max_length = getattr(layer, "max_length", None)
    if batch and max_length is not None and lengths.max() > max_length:
        raise ModelRangeError(f"sequence {int(np.argmax(lengths))} has length "
                              f"{int(lengths.max())}, more than the layer's max_length "
                              f"{max_length}")
    valid = np.arange(steps)[None, :] < lengths[:, None]
    fmt = layer.input
    bad = valid[..., None] & ((arr < fmt.min_value) | (arr > fmt.max_value)
                              | ((arr == 0) if fmt.kind == "bipolar" else False))
    if np.any(bad):
        b, t, i = np.argwhere(bad)[0]
        raise ModelRangeError(f"sequence {b}, step {t}, input {i}: value {int(arr[b, t, i])} "
                              f"is outside {fmt.describe()} [{fmt.min_value}, {fmt.max_value}]")
    return np.where(valid[..., None], arr, 0), lengths


def check_inputs(model: IntegerModel, x, lengths=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(x, lengths)`` checked for ``model``: ``(batch, in_features)`` vectors (a 1-D
    vector is a batch of one; ``lengths`` None) or, for a sequence model
    (:attr:`IntegerModel.sequential`), ``(batch, T, in_features)`` sequences
    (:func:`check_sequences`). Raise :class:`ModelRangeError` on anything else.

    An image model (whose first layer reads an image ``shape``, :attr:`IntegerModel.in_shape`)
    takes ``(batch, *shape)``, ``(batch, pixels, channels)`` or flat ``(batch, prod(shape))``
    inputs in stream order and returns them as ``(batch, pixels, channels)`` with every
    image's ``lengths`` its pixel count.

    Accepts integer arrays and float arrays that hold only integers.
    """
    if getattr(model.layers[0], "frame_length", None):
        return _check_images(model, x, lengths)
    if model.sequential:
        return check_sequences(model.layers[0], x, lengths)
    if lengths is not None:
        raise ModelRangeError("lengths apply to sequence models only; this model reads vectors")
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != model.in_features:
        raise ModelRangeError(f"inputs must have shape (batch, {model.in_features}), "
                              f"not {np.shape(x)}")
    arr = _integers(arr, f"inputs ({model.input.describe()})")
    model.input.check(arr, "inputs")
    return arr, None


def _check_images(model: IntegerModel, x, lengths) -> tuple[np.ndarray, np.ndarray]:
    shape = model.in_shape
    pixels, channels = int(np.prod(shape[:-1])), shape[-1]
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == pixels * channels:
        arr = arr.reshape(len(arr), pixels, channels)
    elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        arr = arr.reshape(len(arr), pixels, channels)
    elif not (arr.ndim == 3 and arr.shape[1:] == (pixels, channels)):
        raise ModelRangeError(f"images must have shape (batch, {', '.join(map(str, shape))}), "
                              f"(batch, {pixels}, {channels}) or (batch, {pixels * channels}), "
                              f"not {np.shape(x)}")
    arr = _integers(arr, f"inputs ({model.input.describe()})")
    model.input.check(arr, "inputs")
    full = np.full(len(arr), pixels, dtype=np.int64)
    if lengths is not None and not np.array_equal(np.asarray(lengths), full):
        raise ModelRangeError(f"an image has {pixels} pixels: lengths must all be {pixels} "
                              f"(or not given)")
    return arr, full


def _bipolar(values: np.ndarray, lengths) -> np.ndarray:
    """The 0/1 output codes of a layer as the -1/+1 values a bipolar layer reads (padding 0)."""
    values = 2 * values - 1
    if lengths is not None and values.ndim == 3:
        valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
        values = np.where(valid[..., None], values, 0)
    return values


def execute(model: IntegerModel, x, lengths=None) -> Trace:
    """Run ``model`` on input values ``x`` and return the full trace.

    ``x`` is ``(batch, in_features)`` vectors, or ``(batch, T, in_features)`` sequences (with
    ``lengths``, default ``T``) for a sequence model. Each layer runs through the golden function
    of its kind (:func:`register`).
    """
    values, lengths = check_inputs(model, x, lengths)
    trace = Trace([], [], [], lengths)
    out_lengths = []
    for i, layer in enumerate(model.layers):
        reads = []
        for k, src in enumerate(model.edges[i]):
            if src < 0:
                reads.append((values, lengths))
                continue
            v, n = trace.outputs[src], out_lengths[src]
            if k == 0 and layer.input.kind == "bipolar":
                v = _bipolar(v, n)  # the 0/1 output codes of a threshold stage, as -1/+1
            reads.append((v, n))
        layer_in = reads[0][0] if len(reads) == 1 else tuple(v for v, _ in reads)
        trace.inputs.append(layer_in)
        out, state = layer_golden(layer)(layer, layer_in, reads[0][1])
        trace.accumulators.append(state)
        trace.outputs.append(out)
        frame = getattr(layer, "out_frame_length", None)
        if frame:
            out_lengths.append(np.full(len(out), frame, dtype=np.int64))
        else:
            out_lengths.append(reads[0][1] if out.ndim == 3 else None)  # per step: as read
    return dataclasses.replace(trace, out_lengths=out_lengths[-1])


def predict(model: IntegerModel, x, lengths=None) -> np.ndarray:
    """Return the predicted class: the argmax of the last output (per vector, per sequence, or
    per valid step of a per-step model, where padding is -1). The first maximum wins ties
    (numpy's argmax): a tie between two classes always goes to the lower index."""
    trace = execute(model, x, lengths)
    pred = np.argmax(trace.output, axis=-1)
    if pred.ndim == 2:  # per step: padding steps have no class
        valid = np.arange(pred.shape[1])[None, :] < trace.out_lengths[:, None]
        pred = np.where(valid, pred, -1)
    return pred


def expected_rows(model: IntegerModel, x, lengths=None) -> np.ndarray:
    """Return the code rows the hardware of ``model`` must emit for inputs ``x``: one row per
    output transfer, in order (:meth:`bitfab.formats.StreamFormat.code_rows`)."""
    trace = execute(model, x, lengths)
    return model.out_stream.code_rows(trace.output, trace.out_lengths)


def compare_outputs(got, want) -> tuple[int, dict | None]:
    """Compare output vectors in order, bit for bit: return ``(mismatches, first)``.

    ``mismatches`` counts differing vectors plus lost or extra ones; ``first`` names the first
    differing vector (its index, the differing outputs, expected and actual values), or says how
    many vectors came where the counts differ, or is None when everything agrees.
    """
    got, want = np.asarray(got), np.asarray(want)
    n = min(len(got), len(want))
    bad = np.flatnonzero(np.any(got[:n] != want[:n], axis=1))
    mismatches = int(len(bad)) + abs(len(got) - len(want))
    if len(bad):
        i = int(bad[0])
        return mismatches, {"vector": i, "outputs": np.flatnonzero(got[i] != want[i]).tolist(),
                            "expected": want[i].tolist(), "actual": got[i].tolist()}
    if len(got) != len(want):
        return mismatches, {"vector": n, "expected": f"{len(want)} vectors",
                            "actual": f"{len(got)} vectors"}
    return mismatches, None
