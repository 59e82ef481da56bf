"""Weight encodings: each class owns every fact of its encoding.

An encoding knows its value set (:meth:`check`), its storage bits per weight, how it is stored in a
``.bfm`` file (:meth:`store` / :meth:`restore`), which datapath computes with it
(:meth:`datapath`), the codes of a folded weight memory (:attr:`code_bits`, :meth:`codes`), how to
draw random weights (:meth:`random`) and how it reads and writes its JSON description. Code
elsewhere asks the encoding; it never tests the encoding's type. A new encoding is one class here
and one entry in :data:`ENCODINGS`.

Datapaths (what :meth:`datapath` names):

- ``xnor_popcount``: binary weights on bipolar inputs, ``acc = 2 * popcount(xnor) - N``;
- ``ternary``: add / subtract / skip (ternary weights, and binary weights on integer inputs);
- ``shift_add``: power-of-two weights are shifts;
- ``lut``: a product per dictionary entry;
- ``int``: a multiplier per weight (the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np

from .errors import ModelFormatError
from .fileformat import field, smallest_int_dtype
from .formats import InputFormat, as_index, signed_bits, unsigned_bits

__all__ = ["Binary", "Ternary", "Pow2", "Lut", "IntWeights", "WeightEncoding", "ENCODINGS",
           "DATAPATHS", "encoding_from_json", "is_encoding"]

#: every datapath kind an encoding can name
DATAPATHS = ("xnor_popcount", "ternary", "shift_add", "lut", "int")
_BLOCK = 1 << 20  # weights per block of an elementwise pass: temporaries of a few MB


def _first_bad(w: np.ndarray, bad) -> int | None:
    """Return the first value of ``w`` (in C order) where ``bad(block)`` is true, or None; the
    weights go through in blocks, so no temporary is as large as ``w``."""
    flat = np.asarray(w).reshape(-1)
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK]
        hits = block[bad(block)]
        if hits.size:
            return int(hits[0])
    return None


def _blockwise(w: np.ndarray, fn, dtype) -> np.ndarray:
    """Return the elementwise ``fn`` of ``w`` as a ``dtype`` array of its shape, computed in
    blocks (no temporary as large as ``w``)."""
    flat = np.asarray(w).reshape(-1)
    out = np.empty(flat.size, dtype=dtype)
    for start in range(0, flat.size, _BLOCK):
        out[start:start + _BLOCK] = fn(flat[start:start + _BLOCK])
    return out.reshape(np.shape(w))


def _frozen_int64(w: np.ndarray) -> np.ndarray:
    """Return ``w`` as a read-only int64 array that a layer takes without copying
    (:func:`bitfab.formats.frozen`)."""
    w = np.asarray(w)
    if w.dtype != np.int64 or w.flags.writeable or w.base is not None:
        w = w.astype(np.int64)
        w.flags.writeable = False
    return w


class _Encoding:
    """What every encoding shares: storage as small integers, no dictionary."""

    kind: ClassVar[str]

    @property
    def table_bits(self) -> int:
        """Bits of a per-layer table beside the weights (the lut dictionary; 0 otherwise)."""
        return 0

    @property
    def has_zero(self) -> bool:
        """Whether 0 is a weight value (a zero weight costs no hardware)."""
        return True

    def stored_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """Shape of the stored array of a ``(rows, cols)`` weight matrix."""
        return rows, cols

    def store(self, w: np.ndarray) -> np.ndarray:
        """Return the array a ``.bfm`` file stores for the ``(rows, cols)`` weights ``w``."""
        return w.astype(smallest_int_dtype(w))

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        """Return the weight values (read-only int64) of a stored array (the inverse of
        :meth:`store`)."""
        return _frozen_int64(raw)

    def to_json(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, d: dict, where: str):
        return cls()


class _Coded(_Encoding):
    """An encoding stored as its codes (``encode`` / ``decode``), not as its values."""

    def store(self, w: np.ndarray) -> np.ndarray:
        return self.encode(w)

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        return self.decode(raw, what)


@dataclass(frozen=True)
class Binary(_Encoding):
    """Weights in {-1, +1}, one bit each (bit 1 = +1)."""

    kind: ClassVar[str] = "binary"

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: 1."""
        return 1

    @property
    def has_zero(self) -> bool:
        return False

    def check(self, w: np.ndarray, what: str) -> None:
        bad = _first_bad(w, lambda b: (b != 1) & (b != -1))
        if bad is not None:
            raise ModelFormatError(f"{what}: value {bad} is not binary (-1 or +1)")

    def datapath(self, input: InputFormat) -> str:
        """``xnor_popcount`` on bipolar inputs, ``ternary`` (add / subtract) on integers."""
        return "xnor_popcount" if input.kind == "bipolar" else "ternary"

    def stored_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, (cols + 7) // 8

    def store(self, w: np.ndarray) -> np.ndarray:
        return np.packbits(w > 0, axis=1)

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        bits = np.unpackbits(np.asarray(raw).astype(np.uint8), axis=1, count=cols)
        w = bits.astype(np.int64)
        del bits
        w *= 2
        w -= 1
        w.flags.writeable = False  # the layer takes it as it is (bitfab.formats.frozen)
        return w

    @property
    def code_bits(self) -> int:
        """Bits of one weight in a folded weight memory: 1 (1 = +1)."""
        return 1

    def codes(self, w: np.ndarray) -> np.ndarray:
        return (w > 0).astype(np.int64)

    def random(self, rng: np.random.Generator, shape, sparsity: float = 0.0) -> np.ndarray:
        """Draw weights (binary has no zero: ``sparsity`` is ignored)."""
        return rng.choice(np.array([-1, 1]), size=shape)

    def describe(self) -> str:
        return "binary"


@dataclass(frozen=True)
class Ternary(_Encoding):
    """Weights in {-1, 0, +1} (sparse-binary is ternary with a sparsity target), two bits each."""

    kind: ClassVar[str] = "ternary"

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: 2 (three levels)."""
        return 2

    def check(self, w: np.ndarray, what: str) -> None:
        # compared, not np.abs: the absolute value of the int64 minimum is negative
        bad = _first_bad(w, lambda b: (b < -1) | (b > 1))
        if bad is not None:
            raise ModelFormatError(f"{what}: value {bad} is not ternary (-1, 0 or +1)")

    def datapath(self, input: InputFormat) -> str:
        """``ternary``: add, subtract or skip."""
        return "ternary"

    @property
    def code_bits(self) -> int:
        """Bits of one weight in a folded weight memory: 2 (bit 0 positive, bit 1 negative)."""
        return 2

    def codes(self, w: np.ndarray) -> np.ndarray:
        return (w > 0).astype(np.int64) | ((w < 0).astype(np.int64) << 1)

    def random(self, rng: np.random.Generator, shape, sparsity: float = 0.0) -> np.ndarray:
        w = rng.choice(np.array([-1, 1]), size=shape)
        return np.where(rng.random(shape) < sparsity, 0, w) if sparsity else w

    def describe(self) -> str:
        return "ternary"


@dataclass(frozen=True)
class Pow2(_Coded):
    """Weights ``s * 2**e``, ``s`` in {-1, +1}, ``e`` in ``[e_min, e_max]``, and 0 if ``zero``.

    ``zero=False`` is DenseShift's zero-free encoding. Exponents are non-negative: any scale below 1
    is absorbed into the following output stage by quant/.
    """

    e_min: int = 0
    e_max: int = 7
    zero: bool = True
    kind: ClassVar[str] = "pow2"

    def __post_init__(self):
        e_min = as_index(self.e_min, "encoding.e_min")
        e_max = as_index(self.e_max, "encoding.e_max")
        if not 0 <= e_min <= e_max <= 30:
            raise ModelFormatError(
                f"encoding.e_min/e_max must satisfy 0 <= e_min <= e_max <= 30, not {e_min}/{e_max}")
        if not isinstance(self.zero, (bool, np.bool_)):
            raise ModelFormatError(f"encoding.zero must be a bool, not {self.zero!r}")
        object.__setattr__(self, "e_min", e_min)
        object.__setattr__(self, "e_max", e_max)
        object.__setattr__(self, "zero", bool(self.zero))

    @property
    def levels(self) -> int:
        """Number of distinct weight values: ``2 * (e_max - e_min + 1) + zero``."""
        return 2 * (self.e_max - self.e_min + 1) + int(self.zero)

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: ``ceil(log2(levels))``."""
        return unsigned_bits(self.levels - 1)

    @property
    def has_zero(self) -> bool:
        return self.zero

    def _bad(self, block: np.ndarray) -> np.ndarray:
        mag = np.abs(block)  # the int64 minimum stays negative: refused below
        ok = (mag >= (1 << self.e_min)) & (mag <= (1 << self.e_max)) & ((mag & (mag - 1)) == 0)
        if self.zero:
            ok |= mag == 0
        return ~ok

    def check(self, w: np.ndarray, what: str) -> None:
        bad = _first_bad(w, self._bad)
        if bad is not None:
            zero = "0 or " if self.zero else ""
            raise ModelFormatError(
                f"{what}: value {bad} is not {zero}+-2**e with e in [{self.e_min}, {self.e_max}]")

    def datapath(self, input: InputFormat) -> str:
        """``shift_add``: every weight is a shift."""
        return "shift_add"

    def _exponents(self, block: np.ndarray) -> np.ndarray:
        mag = np.abs(block)
        return np.where(mag > 0, np.log2(np.maximum(mag, 1)).round(), self.e_min)

    def exponents(self, w: np.ndarray) -> np.ndarray:
        """Return ``e`` of every weight (``e_min`` where the weight is 0)."""
        return _blockwise(w, self._exponents, np.int64)

    def _encode(self, block: np.ndarray) -> np.ndarray:
        e = np.where(block != 0, self._exponents(block) - self.e_min + 1, 0)
        return np.sign(block) * e

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Return int8 codes: 0 for zero, ``sign * (e - e_min + 1)`` otherwise."""
        return _blockwise(w, self._encode, np.int8)

    def decode(self, codes: np.ndarray, what: str) -> np.ndarray:
        top = self.e_max - self.e_min + 1
        bad = _first_bad(codes, lambda c: (c > top) | (c < -top)
                         | ((c == 0) & (not self.zero)))
        if bad is not None:
            raise ModelFormatError(f"{what}: pow2 code {bad} is out of range")
        codes = np.asarray(codes)
        w = codes.astype(np.int64)  # |code| <= 31 after the check: np.abs cannot wrap
        np.abs(w, out=w)
        w += self.e_min - 1
        np.maximum(w, 0, out=w)
        np.left_shift(1, w, out=w)
        w[codes == 0] = 0
        np.negative(w, out=w, where=codes < 0)
        w.flags.writeable = False  # the layer takes it as it is (bitfab.formats.frozen)
        return w

    @property
    def code_bits(self) -> int:
        """Bits of one weight in a folded weight memory: ``2 + bit_length(e_max - e_min)``
        (bit 0 non-zero, bit 1 negative, then ``e - e_min``)."""
        return 2 + (self.e_max - self.e_min).bit_length()

    def codes(self, w: np.ndarray) -> np.ndarray:
        mag = np.abs(w)
        return ((mag > 0).astype(np.int64) | ((w < 0).astype(np.int64) << 1)
                | ((self.exponents(w) - self.e_min) << 2))

    def random(self, rng: np.random.Generator, shape, sparsity: float = 0.0) -> np.ndarray:
        e = rng.integers(self.e_min, self.e_max + 1, size=shape)
        w = rng.choice(np.array([-1, 1]), size=shape) << e
        if sparsity and self.zero:
            w = np.where(rng.random(shape) < sparsity, 0, w)
        return w

    def to_json(self) -> dict:
        return {"kind": self.kind, "e_min": self.e_min, "e_max": self.e_max, "zero": self.zero}

    @classmethod
    def from_json(cls, d: dict, where: str) -> Pow2:
        return cls(field(d, "e_min", int, where), field(d, "e_max", int, where),
                   field(d, "zero", bool, where))

    def describe(self) -> str:
        z = "" if self.zero else ", zero-free"
        return f"pow2 (2^{self.e_min}..2^{self.e_max}{z})"


@dataclass(frozen=True)
class Lut(_Coded):
    """Weights drawn from a small integer dictionary (LUT-Q): ``w = dictionary[index]``.

    Entries are distinct integers, so the index of every weight is determined by its value.
    """

    dictionary: tuple[int, ...] = (0, 1)
    kind: ClassVar[str] = "lut"

    def __post_init__(self):
        if isinstance(self.dictionary, (str, bytes)) or not hasattr(self.dictionary, "__iter__"):
            raise ModelFormatError(f"encoding.dictionary must be a list of integers, "
                                   f"not {self.dictionary!r}")
        d = tuple(as_index(v, "encoding.dictionary entry") for v in self.dictionary)
        if not 1 <= len(d) <= 256:
            raise ModelFormatError(f"encoding.dictionary must have 1..256 entries, not {len(d)}")
        if len(set(d)) != len(d):
            raise ModelFormatError(f"encoding.dictionary entries must be distinct, not {list(d)}")
        if max(abs(v) for v in d) >= 1 << 31:
            raise ModelFormatError("encoding.dictionary entries must fit 32 bits")
        object.__setattr__(self, "dictionary", d)

    @property
    def index_bits(self) -> int:
        """Bits of one index: ``ceil(log2(K))`` (at least 1)."""
        return unsigned_bits(len(self.dictionary) - 1)

    @property
    def entry_bits(self) -> int:
        """Signed width of one dictionary entry."""
        return signed_bits(min(self.dictionary), max(self.dictionary))

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: the index width (the dictionary is :attr:`table_bits`)."""
        return self.index_bits

    @property
    def table_bits(self) -> int:
        """The dictionary, once per layer: ``K * entry_bits``."""
        return len(self.dictionary) * self.entry_bits

    @property
    def has_zero(self) -> bool:
        return 0 in self.dictionary

    @property
    def is_pow2(self) -> bool:
        """Whether every entry is 0 or +-2**e (a multiplierless dictionary)."""
        return all(v == 0 or (abs(v) & (abs(v) - 1)) == 0 for v in self.dictionary)

    def check(self, w: np.ndarray, what: str) -> None:
        d = np.array(self.dictionary, dtype=np.int64)
        bad = _first_bad(w, lambda b: ~np.isin(b, d))
        if bad is not None:
            raise ModelFormatError(f"{what}: value {bad} is not in the dictionary "
                                   f"{list(self.dictionary)}")

    def datapath(self, input: InputFormat) -> str:
        """``lut``: one product per dictionary entry, selected per weight."""
        return "lut"

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Return the dictionary index of every weight."""
        d = np.array(self.dictionary, dtype=np.int64)
        order = np.argsort(d)
        return _blockwise(w, lambda b: order[np.searchsorted(d[order], b)],
                          np.uint8 if len(d) <= 256 else np.uint16)

    def decode(self, index: np.ndarray, what: str) -> np.ndarray:
        n = len(self.dictionary)
        bad = _first_bad(index, lambda i: (i < 0) | (i >= n))
        if bad is not None:
            raise ModelFormatError(f"{what}: index {bad} is outside the dictionary "
                                   f"of {n} entries")
        w = np.array(self.dictionary, dtype=np.int64)[np.asarray(index)]
        w.flags.writeable = False  # the layer takes it as it is (bitfab.formats.frozen)
        return w

    @property
    def code_bits(self) -> int:
        """Bits of one weight in a folded weight memory: the index width."""
        return self.index_bits

    def codes(self, w: np.ndarray) -> np.ndarray:
        return self.encode(w).astype(np.int64)

    def random(self, rng: np.random.Generator, shape, sparsity: float = 0.0) -> np.ndarray:
        """Draw dictionary entries uniformly (their frequency, zero's included, is the
        dictionary's: ``sparsity`` is ignored)."""
        return rng.choice(np.array(self.dictionary), size=shape)

    def to_json(self) -> dict:
        return {"kind": self.kind, "dictionary": list(self.dictionary)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> Lut:
        entries = field(d, "dictionary", list, where)
        if len(entries) > 256 or not all(isinstance(v, int) and not isinstance(v, bool)
                                         for v in entries):
            raise ModelFormatError(f"{where}.dictionary must be a list of at most 256 integers")
        return cls(tuple(entries))

    def describe(self) -> str:
        return f"lut ({len(self.dictionary)} entries{', pow2' if self.is_pow2 else ''})"


@dataclass(frozen=True)
class IntWeights(_Encoding):
    """Plain ``bits``-wide signed integer weights: the baseline the others are measured against."""

    bits: int = 8
    kind: ClassVar[str] = "int"

    def __post_init__(self):
        bits = as_index(self.bits, "encoding.bits")
        if not 2 <= bits <= 32:
            raise ModelFormatError(f"encoding.bits must be in 2..32, not {bits}")
        object.__setattr__(self, "bits", bits)

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: ``bits``."""
        return self.bits

    def check(self, w: np.ndarray, what: str) -> None:
        lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        bad = _first_bad(w, lambda b: (b < lo) | (b > hi))
        if bad is not None:
            raise ModelFormatError(f"{what}: value {bad} does not fit int{self.bits}")

    def datapath(self, input: InputFormat) -> str:
        """``int``: a multiplier per weight."""
        return "int"

    @property
    def code_bits(self) -> int:
        """Bits of one weight in a folded weight memory: ``bits`` (two's complement)."""
        return self.bits

    def codes(self, w: np.ndarray) -> np.ndarray:
        return w & ((1 << self.bits) - 1)

    def random(self, rng: np.random.Generator, shape, sparsity: float = 0.0) -> np.ndarray:
        half = 1 << (self.bits - 1)
        w = rng.integers(-half, half, size=shape)
        return np.where(rng.random(shape) < sparsity, 0, w) if sparsity else w

    def to_json(self) -> dict:
        return {"kind": self.kind, "bits": self.bits}

    @classmethod
    def from_json(cls, d: dict, where: str) -> IntWeights:
        return cls(field(d, "bits", int, where))

    def describe(self) -> str:
        return f"int{self.bits}"


WeightEncoding = Union[Binary, Ternary, Pow2, Lut, IntWeights]
#: kind -> encoding class
ENCODINGS: dict[str, type] = {c.kind: c for c in (Binary, Ternary, Pow2, Lut, IntWeights)}


def is_encoding(value: Any) -> bool:
    """Return whether ``value`` is an instance of a registered encoding."""
    return ENCODINGS.get(getattr(type(value), "kind", None)) is type(value)


def check_encoding(value: Any, what: str = "encoding") -> None:
    """Raise :class:`ModelFormatError` unless ``value`` is a registered encoding."""
    if not is_encoding(value):
        raise ModelFormatError(f"{what} must be one of {sorted(ENCODINGS)}, not {value!r}")


def encoding_from_json(d: Any, where: str):
    """Return the encoding a manifest entry describes (``{"kind": ..., ...}``)."""
    kind = field(d, "kind", str, where)
    if kind not in ENCODINGS:
        raise ModelFormatError(f"{where}.kind must be one of {sorted(ENCODINGS)}, "
                               f"not {kind!r}"[:300])
    return ENCODINGS[kind].from_json(d, where)
