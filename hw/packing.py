"""Pack input values into stream payloads and unpack output payloads into values.

Pure numpy and Python integers (no amaranth import), so host code, benches and board drivers can
use it. The packing rule of every bitfab stream (see the README, "Hardware interface"): element
``k`` of a vector is the hardware *code* of its value (:meth:`bitfab.model.InputFormat.to_codes`:
bipolar 1 = +1 and 0 = -1, signed integers in two's complement) at payload bits
``[k*bits, (k+1)*bits)``; the payload is one unsigned integer of ``n * bits`` bits.
"""

from __future__ import annotations

import numpy as np

from bitfab.errors import ModelRangeError
from bitfab.model import InputFormat

__all__ = ["pack", "unpack", "payload_bits"]


def payload_bits(fmt: InputFormat, n: int) -> int:
    """Width of the payload of ``n`` elements of format ``fmt``: ``n * fmt.bits``."""
    return n * fmt.bits


def pack(values, fmt: InputFormat) -> list[int]:
    """Return one payload integer per row of ``values`` (``(batch, n)`` values of ``fmt``).

    Raises
    ------
    ModelRangeError
        A value that ``fmt`` cannot hold (e.g. 0 for a bipolar input, 16 for uint4).
    """
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise ModelRangeError(f"values must be a (batch, n) integer array, not {arr.dtype} "
                              f"of shape {arr.shape}")
    arr = arr.astype(np.int64)
    if not fmt.contains(arr):
        bad = arr[(arr < fmt.min_value) | (arr > fmt.max_value)
                  | ((arr == 0) if fmt.kind == "bipolar" else False)]
        raise ModelRangeError(f"values must be {fmt.describe()} values in "
                              f"[{fmt.min_value}, {fmt.max_value}], not {int(bad.flat[0])}")
    codes = fmt.to_codes(arr)
    shifts = [k * fmt.bits for k in range(arr.shape[1])]
    return [sum(int(c) << s for c, s in zip(row, shifts)) for row in codes]


def unpack(payloads, fmt: InputFormat, n: int) -> np.ndarray:
    """Return the ``(batch, n)`` int64 values of payload integers holding ``n`` codes of ``fmt``."""
    mask = (1 << fmt.bits) - 1
    codes = np.array([[(int(p) >> (k * fmt.bits)) & mask for k in range(n)] for p in payloads],
                     dtype=np.int64).reshape(len(payloads), n)
    return fmt.from_codes(codes)
