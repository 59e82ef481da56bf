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
        """Return the weight values of a stored array (the inverse of :meth:`store`)."""
        return np.asarray(raw, dtype=np.int64)

    def to_json(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, d: dict, where: str):
        return cls()


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
        bad = w[np.abs(w) != 1]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} is not binary (-1 or +1)")

    def datapath(self, input: InputFormat) -> str:
        """``xnor_popcount`` on bipolar inputs, ``ternary`` (add / subtract) on integers."""
        return "xnor_popcount" if input.kind == "bipolar" else "ternary"

    def stored_shape(self, rows: int, cols: int) -> tuple[int, int]:
        return rows, (cols + 7) // 8

    def store(self, w: np.ndarray) -> np.ndarray:
        return np.packbits(w > 0, axis=1)

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        bits = np.unpackbits(np.asarray(raw).astype(np.uint8), axis=1, count=cols)
        return bits.astype(np.int64) * 2 - 1

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
        bad = w[np.abs(w) > 1]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} is not ternary (-1, 0 or +1)")

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
class Pow2(_Encoding):
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

    def check(self, w: np.ndarray, what: str) -> None:
        mag = np.abs(w)
        ok = (mag >= (1 << self.e_min)) & (mag <= (1 << self.e_max)) & ((mag & (mag - 1)) == 0)
        if self.zero:
            ok |= mag == 0
        bad = w[~ok]
        if bad.size:
            zero = "0 or " if self.zero else ""
            raise ModelFormatError(
                f"{what}: value {int(bad.flat[0])} is not {zero}+-2**e with e in "
                f"[{self.e_min}, {self.e_max}]")

    def datapath(self, input: InputFormat) -> str:
        """``shift_add``: every weight is a shift."""
        return "shift_add"

    def exponents(self, w: np.ndarray) -> np.ndarray:
        """Return ``e`` of every weight (``e_min`` where the weight is 0)."""
        mag = np.abs(w)
        return np.where(mag > 0, np.log2(np.maximum(mag, 1)).round(),
                        self.e_min).astype(np.int64)

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Return int8 codes: 0 for zero, ``sign * (e - e_min + 1)`` otherwise."""
        e = np.where(np.abs(w) > 0, self.exponents(w) - self.e_min + 1, 0)
        return (np.sign(w) * e).astype(np.int8)

    def decode(self, codes: np.ndarray, what: str) -> np.ndarray:
        c = np.asarray(codes, dtype=np.int64)
        top = self.e_max - self.e_min + 1
        bad = c[(np.abs(c) > top) | ((c == 0) & (not self.zero))]
        if bad.size:
            raise ModelFormatError(f"{what}: pow2 code {int(bad.flat[0])} is out of range")
        mag = np.where(c == 0, 0, np.left_shift(1, np.maximum(np.abs(c) - 1 + self.e_min, 0)))
        return np.sign(c) * mag

    def store(self, w: np.ndarray) -> np.ndarray:
        return self.encode(w)

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        return self.decode(raw, what)

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
class Lut(_Encoding):
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
        bad = w[~np.isin(w, np.array(self.dictionary, dtype=np.int64))]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} is not in the dictionary "
                                   f"{list(self.dictionary)}")

    def datapath(self, input: InputFormat) -> str:
        """``lut``: one product per dictionary entry, selected per weight."""
        return "lut"

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Return the dictionary index of every weight."""
        d = np.array(self.dictionary, dtype=np.int64)
        order = np.argsort(d)
        return order[np.searchsorted(d[order], w)].astype(np.uint8 if len(d) <= 256 else np.uint16)

    def decode(self, index: np.ndarray, what: str) -> np.ndarray:
        idx = np.asarray(index, dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(self.dictionary))]
        if bad.size:
            raise ModelFormatError(f"{what}: index {int(bad.flat[0])} is outside the dictionary "
                                   f"of {len(self.dictionary)} entries")
        return np.array(self.dictionary, dtype=np.int64)[idx]

    def store(self, w: np.ndarray) -> np.ndarray:
        return self.encode(w)

    def restore(self, raw: np.ndarray, cols: int, what: str) -> np.ndarray:
        return self.decode(raw, what)

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
        bad = w[(w < lo) | (w > hi)]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} does not fit int{self.bits}")

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
