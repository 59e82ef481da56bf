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

__all__ = ["pack", "unpack", "pack_codes", "unpack_codes", "payload_bits"]


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
    fmt.check(arr)
    return pack_codes(fmt.to_codes(arr), fmt.bits)


def pack_codes(codes, bits: int) -> list[int]:
    """Pack ``codes`` (``(n, count)`` hardware codes in ``[0, 2**bits)``) into payload integers."""
    codes = np.asarray(codes, dtype=np.int64)
    n, count = codes.shape
    bitmat = ((codes[:, :, None] >> np.arange(bits)) & 1).reshape(n, count * bits)
    packed = np.packbits(bitmat.astype(np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack_codes(payloads, count: int, bits: int) -> np.ndarray:
    """Return the ``(len(payloads), count)`` int64 codes held by payload integers."""
    width = count * bits
    nbytes = (width + 7) // 8
    mask = (1 << width) - 1
    raw = np.frombuffer(b"".join((int(p) & mask).to_bytes(nbytes, "little") for p in payloads),
                        dtype=np.uint8).reshape(len(payloads), nbytes)
    bitmat = np.unpackbits(raw, axis=1, count=width, bitorder="little").astype(np.int64)
    return (bitmat.reshape(len(payloads), count, bits) << np.arange(bits)).sum(axis=2)


def unpack(payloads, fmt: InputFormat, n: int) -> np.ndarray:
    """Return the ``(batch, n)`` int64 values of payload integers holding ``n`` codes of ``fmt``."""
    codes = unpack_codes(payloads, n, fmt.bits)
    return fmt.from_codes(codes)
