"""The IntegerModel: the one contract between quant/, sim/, hw/ and boards/.

A network is a tuple of layers. Every number in it is an integer except the input scale (and an
optional output scale): quant/ writes it, everything else only reads it. The semantics of every
layer are defined by :mod:`bitfab.sim.golden`; this module defines the data and checks that it is
well formed, so that a model that constructs is a model that the golden model and the hardware
generators can execute without overflow.

Values and codes
----------------
Activations travel between layers as integer *values*. An ``int`` input format holds values in
``[min_value, max_value]``; a ``bipolar`` input holds ``-1`` and ``+1``. In hardware a bipolar value
is one bit (the *code*): ``1`` means ``+1`` and ``0`` means ``-1``. A one-threshold output stage
produces ``0``/``1``, which the next layer reads as the code of a bipolar value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Union

import numpy as np

from .errors import ModelFormatError, ModelRangeError

__all__ = [
    "InputFormat",
    "Binary", "Ternary", "Pow2", "Lut", "IntWeights", "WeightEncoding",
    "Threshold", "Requant", "NoOutput", "OutputStage",
    "Dense", "Layer", "IntegerModel",
    "signed_bits", "unsigned_bits", "MAX_ELEMENTS",
]

#: The largest array (in elements) that a model may hold: refused before any allocation.
MAX_ELEMENTS = 1 << 27
#: Accumulators and requant products must stay below this magnitude so that int64 never overflows.
_INT64_SAFE = 1 << 62


def signed_bits(lo: int, hi: int) -> int:
    """Return the width of the smallest two's complement integer that holds ``[lo, hi]``.

    ``bits = 1 + max(bit_length(hi), bit_length(-lo - 1))`` (at least 1).
    """
    lo, hi = int(lo), int(hi)
    return 1 + max(hi.bit_length() if hi > 0 else 0, (-lo - 1).bit_length() if lo < 0 else 0)


def unsigned_bits(hi: int) -> int:
    """Return the width of the smallest unsigned integer that holds ``[0, hi]`` (at least 1)."""
    return max(1, int(hi).bit_length())


def _index(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ModelFormatError(f"{what} must be an integer, not {value!r}") from None


def _int_array(value: Any, what: str, ndim: int) -> np.ndarray:
    """Coerce to a read-only int64 array of ``ndim`` dimensions, refusing non-integer data."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and arr.max() >= 1 << 63:
        raise ModelFormatError(f"{what} must fit int64, not {int(arr.max())}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)) and np.all(np.abs(arr) < 2.0 ** 62):
            pass  # integral floats (e.g. from torch) are accepted as integers
        else:
            raise ModelFormatError(f"{what} must hold integers, not {arr.dtype} values")
    if arr.ndim != ndim:
        raise ModelFormatError(f"{what} must have {ndim} dimension(s), not shape {arr.shape}")
    if arr.size > MAX_ELEMENTS:
        raise ModelFormatError(f"{what} has {arr.size} elements, more than the limit "
                               f"{MAX_ELEMENTS}")
    arr = np.array(arr, dtype=np.int64)  # a private copy that nobody else can mutate
    arr.flags.writeable = False
    return arr


# --- activation formats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFormat:
    """The format of the integers a layer reads.

    Members
    -------
    kind : ``"bipolar"`` or ``"int"``
        ``bipolar`` values are -1 / +1, one bit each (code 1 = +1); ``int`` values are ``bits``
        wide.
    bits : int
        Width of one value in hardware (1 for bipolar).
    signed : bool
        Two's complement (``int`` only; bipolar is reported as signed).
    """

    kind: Literal["bipolar", "int"] = "int"
    bits: int = 8
    signed: bool = False

    def __post_init__(self):
        if self.kind not in ("bipolar", "int"):
            raise ModelFormatError(f"input.kind must be 'bipolar' or 'int', not {self.kind!r}")
        bits = _index(self.bits, "input.bits")
        if self.kind == "bipolar":
            object.__setattr__(self, "bits", 1)
            object.__setattr__(self, "signed", True)
            return
        if not 1 <= bits <= 32:
            raise ModelFormatError(f"input.bits must be in 1..32, not {bits}")
        if not isinstance(self.signed, (bool, np.bool_)):
            raise ModelFormatError(f"input.signed must be a bool, not {self.signed!r}")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "signed", bool(self.signed))

    @classmethod
    def bipolar(cls) -> InputFormat:
        """Return the 1-bit bipolar format (values -1, +1)."""
        return cls("bipolar")

    @classmethod
    def int(cls, bits: int, signed: bool = False) -> InputFormat:
        """Return a ``bits``-wide integer format."""
        return cls("int", bits, signed)

    @property
    def min_value(self) -> int:
        """Smallest value: -1 (bipolar), ``-2**(bits-1)`` (signed) or 0 (unsigned)."""
        if self.kind == "bipolar":
            return -1
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        """Largest value: +1 (bipolar), ``2**(bits-1) - 1`` (signed) or ``2**bits - 1``."""
        if self.kind == "bipolar":
            return 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def contains(self, values: np.ndarray) -> bool:
        """Return whether every value is one this format can hold."""
        values = np.asarray(values)
        if values.size == 0:
            return True
        if self.kind == "bipolar":
            return bool(np.all(np.abs(values) == 1))
        return bool(values.min() >= self.min_value and values.max() <= self.max_value)

    def check(self, values: np.ndarray, what: str = "values") -> None:
        """Raise :class:`ModelRangeError` naming the first value this format cannot hold."""
        values = np.asarray(values)
        if self.contains(values):
            return
        bad = int(values[(values < self.min_value) | (values > self.max_value)
                         | ((values == 0) if self.kind == "bipolar" else False)].flat[0])
        raise ModelRangeError(f"{what} must be {self.describe()} values in "
                              f"[{self.min_value}, {self.max_value}], not {bad}"
                              f"{' (bipolar has no 0)' if self.kind == 'bipolar' else ''}")

    def to_codes(self, values: np.ndarray) -> np.ndarray:
        """Return the hardware bit patterns (non-negative, ``bits`` wide) of ``values``."""
        values = np.asarray(values, dtype=np.int64)
        if self.kind == "bipolar":
            return (values > 0).astype(np.int64)
        return values & ((1 << self.bits) - 1)

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Return the values of hardware bit patterns (the inverse of :meth:`to_codes`)."""
        codes = np.asarray(codes, dtype=np.int64)
        if self.kind == "bipolar":
            return 2 * (codes & 1) - 1
        codes = codes & ((1 << self.bits) - 1)
        if self.signed:
            return np.where(codes >> (self.bits - 1) != 0, codes - (1 << self.bits), codes)
        return codes

    def describe(self) -> str:
        """Return a short human description, e.g. ``bipolar`` or ``uint8``."""
        if self.kind == "bipolar":
            return "bipolar"
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def to_json(self) -> dict:
        if self.kind == "bipolar":
            return {"kind": "bipolar"}
        return {"kind": "int", "bits": self.bits, "signed": self.signed}


# --- weight encodings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Binary:
    """Weights in {-1, +1}, one bit each (bit 1 = +1)."""

    kind: ClassVar[str] = "binary"

    @property
    def bits_per_weight(self) -> int:
        """Storage bits per weight: 1."""
        return 1

    def check(self, w: np.ndarray, what: str) -> None:
        bad = w[np.abs(w) != 1]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} is not binary (-1 or +1)")

    def to_json(self) -> dict:
        return {"kind": self.kind}

    def describe(self) -> str:
        return "binary"


@dataclass(frozen=True)
class Ternary:
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

    def to_json(self) -> dict:
        return {"kind": self.kind}

    def describe(self) -> str:
        return "ternary"


@dataclass(frozen=True)
class Pow2:
    """Weights ``s * 2**e``, ``s`` in {-1, +1}, ``e`` in ``[e_min, e_max]``, and 0 if ``zero``.

    ``zero=False`` is DenseShift's zero-free encoding. Exponents are non-negative: any scale below 1
    is absorbed into the following output stage by quant/.
    """

    e_min: int = 0
    e_max: int = 7
    zero: bool = True
    kind: ClassVar[str] = "pow2"

    def __post_init__(self):
        e_min = _index(self.e_min, "encoding.e_min")
        e_max = _index(self.e_max, "encoding.e_max")
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

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Return int8 codes: 0 for zero, ``sign * (e - e_min + 1)`` otherwise."""
        mag = np.abs(w)
        e = np.zeros(w.shape, dtype=np.int64)
        nz = mag > 0
        e[nz] = np.log2(mag[nz]).round().astype(np.int64) - self.e_min + 1
        return (np.sign(w) * e).astype(np.int8)

    def decode(self, codes: np.ndarray, what: str) -> np.ndarray:
        c = np.asarray(codes, dtype=np.int64)
        top = self.e_max - self.e_min + 1
        bad = c[(np.abs(c) > top) | ((c == 0) & (not self.zero))]
        if bad.size:
            raise ModelFormatError(f"{what}: pow2 code {int(bad.flat[0])} is out of range")
        mag = np.where(c == 0, 0, np.left_shift(1, np.maximum(np.abs(c) - 1 + self.e_min, 0)))
        return np.sign(c) * mag

    def to_json(self) -> dict:
        return {"kind": self.kind, "e_min": self.e_min, "e_max": self.e_max, "zero": self.zero}

    def describe(self) -> str:
        z = "" if self.zero else ", zero-free"
        return f"pow2 (2^{self.e_min}..2^{self.e_max}{z})"


@dataclass(frozen=True)
class Lut:
    """Weights drawn from a small integer dictionary (LUT-Q): ``w = dictionary[index]``.

    Entries are distinct integers, so the index of every weight is determined by its value.
    """

    dictionary: tuple[int, ...] = (0, 1)
    kind: ClassVar[str] = "lut"

    def __post_init__(self):
        if isinstance(self.dictionary, (str, bytes)) or not hasattr(self.dictionary, "__iter__"):
            raise ModelFormatError(f"encoding.dictionary must be a list of integers, "
                                   f"not {self.dictionary!r}")
        d = tuple(_index(v, "encoding.dictionary entry") for v in self.dictionary)
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
        """Storage bits per weight: the index width (the dictionary is counted per layer)."""
        return self.index_bits

    @property
    def is_pow2(self) -> bool:
        """Whether every entry is 0 or +-2**e (a multiplierless dictionary)."""
        return all(v == 0 or (abs(v) & (abs(v) - 1)) == 0 for v in self.dictionary)

    def check(self, w: np.ndarray, what: str) -> None:
        bad = w[~np.isin(w, np.array(self.dictionary, dtype=np.int64))]
        if bad.size:
            raise ModelFormatError(f"{what}: value {int(bad.flat[0])} is not in the dictionary "
                                   f"{list(self.dictionary)}")

    def encode(self, w: np.ndarray) -> np.ndarray:
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

    def to_json(self) -> dict:
        return {"kind": self.kind, "dictionary": list(self.dictionary)}

    def describe(self) -> str:
        return f"lut ({len(self.dictionary)} entries{', pow2' if self.is_pow2 else ''})"


@dataclass(frozen=True)
class IntWeights:
    """Plain ``bits``-wide signed integer weights: the baseline the others are measured against."""

    bits: int = 8
    kind: ClassVar[str] = "int"

    def __post_init__(self):
        bits = _index(self.bits, "encoding.bits")
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

    def to_json(self) -> dict:
        return {"kind": self.kind, "bits": self.bits}

    def describe(self) -> str:
        return f"int{self.bits}"


WeightEncoding = Union[Binary, Ternary, Pow2, Lut, IntWeights]
_ENCODINGS: dict[str, type] = {c.kind: c for c in (Binary, Ternary, Pow2, Lut, IntWeights)}


# --- output stages --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Threshold:
    """Multi-threshold activation (batchnorm folded in), FINN style.

    ``y[o] = #{t : acc[o] >= thresholds[o, t]}`` where ``direction[o] = +1``, and
    ``y[o] = #{t : acc[o] <= thresholds[o, t]}`` where ``direction[o] = -1`` (a negative batchnorm
    gamma). Thresholds are sorted per channel (ascending for +1, descending for -1), so ``y`` is a
    monotone quantizer with ``T + 1`` levels ``0..T``. With one threshold, ``y`` is a bit that the
    next layer may read as a bipolar code.

    Members
    -------
    thresholds : int array, shape ``(out, T)``
    direction : int array of -1 / +1, shape ``(out,)``
    """

    thresholds: np.ndarray
    direction: np.ndarray | None = None
    kind: ClassVar[str] = "threshold"

    def __post_init__(self):
        t = _int_array(self.thresholds, "output.thresholds", 2)
        if t.shape[1] < 1 or t.shape[1] > 255:
            raise ModelFormatError(f"output.thresholds must have 1..255 thresholds per channel, "
                                   f"not {t.shape[1]}")
        if self.direction is None:
            d = np.ones(t.shape[0], dtype=np.int64)
            d.flags.writeable = False
        else:
            d = _int_array(self.direction, "output.direction", 1)
        if d.shape != (t.shape[0],):
            raise ModelFormatError(f"output.direction must have shape ({t.shape[0]},), "
                                   f"not {d.shape}")
        if np.any(np.abs(d) != 1):
            raise ModelFormatError("output.direction must hold only -1 and +1")
        steps = np.diff(t, axis=1) * d[:, None]
        if np.any(steps < 0):
            o = int(np.argwhere(steps < 0)[0, 0])
            raise ModelFormatError(f"output.thresholds of channel {o} are not sorted in its "
                                   f"direction ({int(d[o]):+d}): {t[o].tolist()}")
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "direction", d)

    @property
    def count(self) -> int:
        """Thresholds per channel ``T``."""
        return int(self.thresholds.shape[1])

    @property
    def out_bits(self) -> int:
        """Output width: ``ceil(log2(T + 1))`` unsigned bits."""
        return unsigned_bits(self.count)

    def out_format(self, acc_bits: int) -> InputFormat:
        return InputFormat.int(self.out_bits, signed=False)

    def check_channels(self, out: int) -> None:
        if self.thresholds.shape[0] != out:
            raise ModelFormatError(f"output.thresholds must have shape ({out}, T) for {out} "
                                   f"channels, not {self.thresholds.shape}")

    def magnitude(self) -> int:
        return int(np.abs(self.thresholds).max())

    def describe(self) -> str:
        return f"threshold x{self.count}"


@dataclass(frozen=True, eq=False)
class Requant:
    """Requantization: ``y = clamp((acc * multiplier[o] + r) >> shift, lo, hi)``.

    ``>>`` is an arithmetic (floor) shift; ``r`` is 0 for ``rounding="floor"`` and
    ``1 << (shift - 1)`` for ``"half_up"`` (round half towards +inf). ``[lo, hi]`` is the range of a
    ``bits``-wide (signed or unsigned) integer.
    """

    multiplier: np.ndarray
    shift: int = 0
    bits: int = 8
    signed: bool = False
    rounding: Literal["floor", "half_up"] = "floor"
    kind: ClassVar[str] = "requant"

    def __post_init__(self):
        m = _int_array(self.multiplier, "output.multiplier", 1)
        if m.size and np.abs(m).max() >= 1 << 31:
            raise ModelFormatError("output.multiplier entries must fit 32 bits")
        shift = _index(self.shift, "output.shift")
        if not 0 <= shift <= 62:
            raise ModelFormatError(f"output.shift must be in 0..62, not {shift}")
        bits = _index(self.bits, "output.bits")
        if not 1 <= bits <= 32:
            raise ModelFormatError(f"output.bits must be in 1..32, not {bits}")
        if not isinstance(self.signed, (bool, np.bool_)):
            raise ModelFormatError(f"output.signed must be a bool, not {self.signed!r}")
        if self.rounding not in ("floor", "half_up"):
            raise ModelFormatError(f"output.rounding must be 'floor' or 'half_up', "
                                   f"not {self.rounding!r}")
        object.__setattr__(self, "multiplier", m)
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def lo(self) -> int:
        """Clamp floor: ``-2**(bits-1)`` if signed, else 0."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        """Clamp ceiling: ``2**(bits-1) - 1`` if signed, else ``2**bits - 1``."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def offset(self) -> int:
        """Rounding offset ``r``: 0 (floor) or ``1 << (shift - 1)`` (half_up, shift > 0)."""
        return (1 << (self.shift - 1)) if self.rounding == "half_up" and self.shift > 0 else 0

    def out_format(self, acc_bits: int) -> InputFormat:
        return InputFormat.int(self.bits, signed=self.signed)

    def check_channels(self, out: int) -> None:
        if self.multiplier.shape != (out,):
            raise ModelFormatError(f"output.multiplier must have shape ({out},), "
                                   f"not {self.multiplier.shape}")

    def magnitude(self) -> int:
        return int(np.abs(self.multiplier).max()) if self.multiplier.size else 0

    def describe(self) -> str:
        return f"requant -> {'int' if self.signed else 'uint'}{self.bits}"


@dataclass(frozen=True)
class NoOutput:
    """No output stage: the layer emits its raw accumulators (the last layer; argmax = class)."""

    kind: ClassVar[str] = "none"

    def out_format(self, acc_bits: int) -> InputFormat:
        return InputFormat.int(acc_bits, signed=True)

    def check_channels(self, out: int) -> None:
        pass

    def describe(self) -> str:
        return "none (accumulators)"


OutputStage = Union[Threshold, Requant, NoOutput]


# --- layers ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dense:
    """A fully connected layer: ``acc[o] = sum_i weights[o, i] * x[i] + bias[o]``, exactly.

    For bipolar inputs and binary weights this is ``2 * popcount(xnor(w, x)) - N``.

    Members
    -------
    weights : int array, shape ``(out_features, in_features)``
        The weight *values*, each allowed by ``encoding``.
    encoding : Binary | Ternary | Pow2 | Lut | IntWeights
    input : InputFormat
    output : Threshold | Requant | NoOutput
    bias : int array, shape ``(out_features,)``, or None (zero)
    acc_bits : int or None
        Declared accumulator width. ``None`` takes :attr:`required_acc_bits`; a declared width
        below it is refused, since the data could overflow it.
    name : str
    """

    weights: np.ndarray
    encoding: WeightEncoding
    input: InputFormat
    output: OutputStage = field(default_factory=NoOutput)
    bias: np.ndarray | None = None
    acc_bits: int | None = None
    name: str = ""
    kind: ClassVar[str] = "dense"

    def __post_init__(self):
        w = _int_array(self.weights, "weights", 2)
        if 0 in w.shape:
            raise ModelFormatError(f"weights must not be empty, not shape {w.shape}")
        if not isinstance(self.encoding, tuple(_ENCODINGS.values())):
            raise ModelFormatError(f"encoding must be one of {sorted(_ENCODINGS)}, "
                                   f"not {self.encoding!r}")
        if not isinstance(self.input, InputFormat):
            raise ModelFormatError(f"input must be an InputFormat, not {self.input!r}")
        if not isinstance(self.output, (Threshold, Requant, NoOutput)):
            raise ModelFormatError(f"output must be a Threshold, Requant or NoOutput, "
                                   f"not {self.output!r}")
        self.encoding.check(w, "weights")
        if self.bias is None:
            b = np.zeros(w.shape[0], dtype=np.int64)
            b.flags.writeable = False
        else:
            b = _int_array(self.bias, "bias", 1)
        if b.shape != (w.shape[0],):
            raise ModelFormatError(f"bias must have shape ({w.shape[0]},), not {b.shape}")
        self.output.check_channels(w.shape[0])
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)
        if not isinstance(self.name, str):
            raise ModelFormatError(f"name must be a string, not {self.name!r}")
        lo, hi = self.acc_range
        if max(-int(lo.min()), int(hi.max())) >= _INT64_SAFE:
            raise ModelFormatError("weights: the accumulator can exceed 62 bits")
        if isinstance(self.output, Requant) and \
                max(-int(lo.min()), int(hi.max())) * max(self.output.magnitude(), 1) >= _INT64_SAFE:
            raise ModelFormatError("output.multiplier: acc * multiplier can exceed 62 bits")
        need = self.required_acc_bits
        if self.acc_bits is None:
            object.__setattr__(self, "acc_bits", need)
        else:
            declared = _index(self.acc_bits, "acc_bits")
            if declared < need:
                raise ModelFormatError(f"acc_bits: declared {declared} bits, but the accumulator "
                                       f"can reach [{int(lo.min())}, {int(hi.max())}], "
                                       f"which needs {need}")
            if declared > 62:
                raise ModelFormatError(f"acc_bits must be at most 62, not {declared}")
            object.__setattr__(self, "acc_bits", declared)

    @property
    def in_features(self) -> int:
        """Input vector length ``N``."""
        return int(self.weights.shape[1])

    @property
    def out_features(self) -> int:
        """Output vector length (channels)."""
        return int(self.weights.shape[0])

    @cached_property
    def acc_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel reachable accumulator range ``(lo, hi)``.

        ``lo[o] = bias[o] + sum_i min(w[o,i] * x_min, w[o,i] * x_max)`` and ``hi`` likewise with
        ``max``, where ``[x_min, x_max]`` is the input format's range. The bound is tight: the
        inputs are independent, so every channel reaches both ends.
        """
        w = self.weights
        a, b = w * self.input.min_value, w * self.input.max_value
        lo = np.minimum(a, b).sum(axis=1) + self.bias
        hi = np.maximum(a, b).sum(axis=1) + self.bias
        for arr in (lo, hi):
            arr.flags.writeable = False
        return lo, hi

    @property
    def required_acc_bits(self) -> int:
        """Smallest signed width holding every reachable accumulator:
        ``signed_bits(min_o lo[o], max_o hi[o])`` with ``lo``/``hi`` from :attr:`acc_range`."""
        lo, hi = self.acc_range
        return signed_bits(int(lo.min()), int(hi.max()))

    @property
    def out_format(self) -> InputFormat:
        """Format of the values this layer emits (decided by its output stage)."""
        return self.output.out_format(self.acc_bits)

    @property
    def out_bits(self) -> int:
        """Width of one output value: ``T`` thresholds give ``ceil(log2(T+1))``, requant gives its
        ``bits``, no output stage gives ``acc_bits``."""
        return self.out_format.bits

    @property
    def sparsity(self) -> float:
        """Fraction of weights that are exactly zero."""
        return float(np.count_nonzero(self.weights == 0)) / self.weights.size

    @property
    def weight_bits(self) -> int:
        """Weight memory in bits: ``out * in * bits_per_weight`` plus the dictionary of a lut layer
        (``K * entry_bits``)."""
        bits = self.weights.size * self.encoding.bits_per_weight
        if isinstance(self.encoding, Lut):
            bits += len(self.encoding.dictionary) * self.encoding.entry_bits
        return bits

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input vector (``out * in``), zeros included."""
        return int(self.weights.size)

    def replace(self, **changes) -> Dense:
        """Return a copy with ``changes`` applied (validated again)."""
        if "acc_bits" not in changes and ("weights" in changes or "bias" in changes
                                          or "input" in changes):
            changes["acc_bits"] = None
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return f"dense {self.in_features}->{self.out_features}"


Layer = Dense
_LAYER_KINDS: dict[str, type] = {"dense": Dense}


def register_layer_kind(cls: type) -> type:
    """Register a layer class (with ``kind``, ``to_manifest`` and ``from_manifest``) for files."""
    _LAYER_KINDS[cls.kind] = cls
    return cls


# --- the network ----------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _check_json(value: Any, what: str, depth: int = 0) -> None:
    if depth > 32:
        raise ModelFormatError(f"{what} is nested too deeply")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelFormatError(f"{what} keys must be strings, not {k!r}")
            _check_json(v, f"{what}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{what}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ModelFormatError(f"{what} must be JSON data, not {type(value).__name__}")


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """A quantized network as integers: what quant/ exports and sim/, hw/, boards/ read.

    Members
    -------
    layers : tuple of layers
        Each layer's input format holds every value the previous layer can emit (a one-threshold
        output feeds a bipolar input as its code).
    input_scale : float
        Real input ``x`` maps to the integer ``round(x / input_scale)``.
    output_scale : float or None
        Real value of one unit of the last layer's output, where it has one.
    metadata : JSON object
        Free-form facts (recipe, dataset split, training results, label names).
    extras : mapping of name -> numeric array
        Data that is not part of the integer semantics (e.g. the float state quant/ needs to
        rebuild the torch reference). Never read by sim/, hw/ or boards/.
    """

    layers: tuple
    input_scale: float = 1.0
    output_scale: float | None = None
    metadata: Mapping = field(default_factory=dict)
    extras: Mapping = field(default_factory=dict)
    name: str = "model"

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise ModelFormatError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, tuple(_LAYER_KINDS.values())):
                raise ModelFormatError(f"layers[{i}] must be a layer, not {type(layer).__name__}")
        for i in range(1, len(layers)):
            prev, nxt = layers[i - 1], layers[i]
            if prev.out_features != nxt.in_features:
                raise ModelFormatError(
                    f"layers[{i}].weights: takes {nxt.in_features} inputs but layers[{i - 1}] "
                    f"gives {prev.out_features}")
            fmt = prev.out_format
            if nxt.input.kind == "bipolar":
                if not (fmt.kind == "int" and fmt.bits == 1 and not fmt.signed):
                    raise ModelFormatError(
                        f"layers[{i}].input: bipolar input needs a 1-bit unsigned output from "
                        f"layers[{i - 1}], which gives {fmt.describe()}")
            elif fmt.min_value < nxt.input.min_value or fmt.max_value > nxt.input.max_value:
                raise ModelFormatError(
                    f"layers[{i}].input: {nxt.input.describe()} cannot hold the "
                    f"{fmt.describe()} output of layers[{i - 1}]")
        scale = self.input_scale
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) \
                or not np.isfinite(scale) or scale <= 0:
            raise ModelFormatError(f"input_scale must be a positive finite number, not {scale!r}")
        if self.output_scale is not None and (not isinstance(self.output_scale, (int, float))
                                              or not np.isfinite(self.output_scale)):
            raise ModelFormatError(f"output_scale must be a finite number or None, "
                                   f"not {self.output_scale!r}")
        if not isinstance(self.metadata, Mapping):
            raise ModelFormatError(f"metadata must be a mapping, "
                                   f"not {type(self.metadata).__name__}")
        _check_json(self.metadata, "metadata")
        extras = {}
        for key, value in dict(self.extras).items():
            if not isinstance(key, str) or not _NAME_RE.match(key):
                raise ModelFormatError(f"extras: name {key!r} must match {_NAME_RE.pattern}")
            arr = np.array(value)
            if arr.dtype.kind not in "biuf" or arr.size > MAX_ELEMENTS:
                raise ModelFormatError(f"extras.{key} must be a numeric array of at most "
                                       f"{MAX_ELEMENTS} elements, not {arr.dtype} x {arr.size}")
            arr.flags.writeable = False
            extras[key] = arr
        if not isinstance(self.name, str):
            raise ModelFormatError(f"name must be a string, not {self.name!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_scale", float(scale))
        object.__setattr__(self, "metadata", json.loads(json.dumps(dict(self.metadata))))
        object.__setattr__(self, "extras", extras)

    @property
    def input(self) -> InputFormat:
        """Format of the network's input vector (the first layer's)."""
        return self.layers[0].input

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def weight_bits(self) -> int:
        """Total weight memory in bits (sum of the layers' :attr:`Dense.weight_bits`)."""
        return sum(layer.weight_bits for layer in self.layers)

    @property
    def fp32_bits(self) -> int:
        """Memory the same weights take as float32: ``32 * number of weights``."""
        return 32 * sum(layer.weights.size for layer in self.layers)

    @property
    def memory_reduction(self) -> float:
        """``1 - weight_bits / fp32_bits``: 0.9375 for 2-bit weights."""
        return 1.0 - self.weight_bits / self.fp32_bits

    def replace(self, **changes) -> IntegerModel:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """Return a SHA-256 of the integer semantics (layers and scales; not metadata/extras)."""
        from .fileformat import manifest_and_arrays
        manifest, arrays = manifest_and_arrays(self.replace(metadata={}, extras={}, name=""))
        h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
        for key in sorted(arrays):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arrays[key]).tobytes())
        return h.hexdigest()

    def save(self, path) -> None:
        """Write the model to a ``.bfm`` file (a zip of ``manifest.json`` and ``.npy`` arrays)."""
        from .fileformat import save
        save(self, path)

    @classmethod
    def load(cls, path) -> IntegerModel:
        """Read a ``.bfm`` file; raise :class:`ModelFormatError` naming the field if it is bad."""
        from .fileformat import load
        return load(path)
