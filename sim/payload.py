"""Stream payloads as Python integers: how vectors of codes are packed for the hardware.

A payload of ``count`` elements of ``bits`` each holds element ``k`` at bits
``[k * bits, (k + 1) * bits)`` (element 0 in the least significant bits), as Amaranth lays out a
``data.ArrayLayout(unsigned(bits), count)``. Codes are the hardware bit patterns of values
(:meth:`bitfab.model.InputFormat.to_codes`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_payloads", "unpack_payloads"]


def pack_payloads(codes: np.ndarray, bits: int) -> list[int]:
    """Pack ``codes`` (``(n, count)``, each in ``[0, 2**bits)``) into ``n`` payload integers."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a (n, count) array, not shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, 2**{bits}), not [{codes.min()}, {codes.max()}]")
    n, count = codes.shape
    shifts = np.arange(bits, dtype=np.int64)
    bitmat = ((codes[:, :, None] >> shifts) & 1).reshape(n, count * bits).astype(np.uint8)
    packed = np.packbits(bitmat, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack_payloads(payloads, count: int, bits: int) -> np.ndarray:
    """Unpack payload integers into an ``(n, count)`` int64 array of codes."""
    width = count * bits
    nbytes = (width + 7) // 8
    raw = np.frombuffer(b"".join(int(p).to_bytes(nbytes, "little") for p in payloads),
                        dtype=np.uint8).reshape(len(payloads), nbytes)
    bitmat = np.unpackbits(raw, axis=1, count=width, bitorder="little").astype(np.int64)
    return (bitmat.reshape(len(payloads), count, bits) << np.arange(bits)).sum(axis=2)
