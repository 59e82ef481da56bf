"""Integers and their formats: widths, the value formats of activations, and stream payloads.

The lowest floor of the contract (it imports nothing of bitfab but the errors):

- :func:`signed_bits` / :func:`unsigned_bits`: widths of integer ranges, computed with Python's
  exact integers;
- :class:`InputFormat`: the integers a layer reads (``bipolar`` -1/+1 as one bit, or ``int``);
- :class:`StreamFormat`: how a vector (or one time step of a sequence) travels as one stream
  payload: element ``k`` at bits ``[k*bits, (k+1)*bits)`` as its hardware *code*, and, in a
  framed stream, a ``last`` bit above the elements that marks the final step of a sequence.

Values and codes
----------------
Activations travel between layers as integer *values*. An ``int`` format holds values in
``[min_value, max_value]``; a ``bipolar`` format holds ``-1`` and ``+1``. In hardware a bipolar
value is one bit (the *code*): ``1`` means ``+1`` and ``0`` means ``-1``. A one-threshold output
stage produces ``0``/``1``, which the next layer reads as the code of a bipolar value.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ModelFormatError, ModelRangeError

__all__ = [
    "MAX_ELEMENTS", "MAX_MODEL_ELEMENTS", "MAX_ACC_BITS", "INT64_SAFE", "frozen",
    "signed_bits", "unsigned_bits", "as_index", "int_array",
    "accumulator_range", "accumulator_bits",
    "InputFormat", "StreamFormat", "pack_codes", "unpack_codes",
]

#: The whole-model budget (``docs/limits.md``): all the arrays of a model together, extras
#: included, hold at most this many elements, counted as they are in memory (binary weights
#: unpacked, an array named twice in a file counted twice). At 8 bytes per element (int64 after
#: widening) that is 128 MiB, so loading any file stays within a few hundred MB.
MAX_MODEL_ELEMENTS = 1 << 24
#: Elements of one array (the whole budget).
MAX_ELEMENTS = MAX_MODEL_ELEMENTS
#: The widest accumulator, and the widest value anywhere in a model: the golden model computes in
#: int64, and a requant stage's ``acc * multiplier + offset`` must stay in int64 too.
MAX_ACC_BITS = 62
#: Accumulators and requant products must stay below this magnitude so that int64 never overflows.
INT64_SAFE = 1 << 62
_ACC_MIN, _ACC_MAX = -(1 << (MAX_ACC_BITS - 1)), (1 << (MAX_ACC_BITS - 1)) - 1
_BLOCK = 1 << 20  # weights per block of accumulator_range: small temporaries


def signed_bits(lo: int, hi: int) -> int:
    """Return the width of the smallest two's complement integer that holds ``[lo, hi]``.

    ``bits = 1 + max(bit_length(hi), bit_length(-lo - 1))`` (at least 1).
    """
    lo, hi = int(lo), int(hi)
    return 1 + max(hi.bit_length() if hi > 0 else 0, (-lo - 1).bit_length() if lo < 0 else 0)


def unsigned_bits(hi: int) -> int:
    """Return the width of the smallest unsigned integer that holds ``[0, hi]`` (at least 1)."""
    return max(1, int(hi).bit_length())


def _acc_refusal(what: str, value: str) -> ModelFormatError:
    return ModelFormatError(
        f"{what}: the accumulator can reach {value}, outside the {MAX_ACC_BITS}-bit range "
        f"[-2^{MAX_ACC_BITS - 1}, 2^{MAX_ACC_BITS - 1} - 1] that the golden model and the "
        f"hardware support")


def accumulator_range(weights: np.ndarray, lo_in, hi_in, bias: np.ndarray,
                      what: str = "weights", bias_what: str = "bias",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Return the exact reachable range ``(lo, hi)`` of ``sum_i w[..., i] * x[i] + bias`` over
    independent inputs ``x[i]`` in ``[lo_in, hi_in]`` (scalars or per-column arrays).

    The bounds are exact integers, and a layer whose accumulator could leave the
    :data:`MAX_ACC_BITS`-bit range ``[-2**61, 2**61 - 1]`` is refused, naming ``bias_what``
    where the bias alone leaves it and ``what`` otherwise. int64 would wrap silently on large
    weights and wide inputs, so a float bound of ``sum |w| |x| + |bias|`` comes first: where it
    reaches ``2**62`` (far outside the range: its rounding error is below ``2**-28`` relative)
    the layer is refused without int64 arithmetic; below it every int64 product and partial
    sum is exact (below ``2**63``). The rows run in blocks of about a million weights, so the
    temporaries stay small whatever the layer's size.
    """
    w = np.asarray(weights, dtype=np.int64)
    b = np.asarray(bias, dtype=np.int64)
    if b.size and (int(b.min()) < _ACC_MIN or int(b.max()) > _ACC_MAX):
        worst = int(b.min()) if int(b.min()) < _ACC_MIN else int(b.max())
        raise ModelFormatError(
            f"{bias_what}: value {worst} puts the accumulator outside the {MAX_ACC_BITS}-bit "
            f"range [-2^{MAX_ACC_BITS - 1}, 2^{MAX_ACC_BITS - 1} - 1] that the golden model "
            f"and the hardware support")
    lo_in = np.asarray(lo_in, dtype=np.int64)
    hi_in = np.asarray(hi_in, dtype=np.int64)
    x_mag = np.maximum(np.abs(lo_in.astype(np.float64)), np.abs(hi_in.astype(np.float64)))
    cols = w.shape[-1]
    rows = w.reshape(int(np.prod(w.shape[:-1])), cols)
    flat_b = b.reshape(-1)
    lo = np.empty(len(rows), dtype=np.int64)
    hi = np.empty(len(rows), dtype=np.int64)
    step = max(1, _BLOCK // max(cols, 1))
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        bound = (np.abs(block.astype(np.float64)) * x_mag).sum(axis=1) \
            + np.abs(flat_b[start:start + step].astype(np.float64))
        if bound.size and float(bound.max()) >= 2.0 ** 62:
            raise _acc_refusal(what, f"about 2^{np.log2(float(bound.max())):.0f}")
        p, q = block * lo_in, block * hi_in
        lo[start:start + step] = np.minimum(p, q).sum(axis=1) + flat_b[start:start + step]
        hi[start:start + step] = np.maximum(p, q).sum(axis=1) + flat_b[start:start + step]
    if lo.size and int(lo.min()) < _ACC_MIN:
        raise _acc_refusal(what, str(int(lo.min())))
    if hi.size and int(hi.max()) > _ACC_MAX:
        raise _acc_refusal(what, str(int(hi.max())))
    lo, hi = lo.reshape(w.shape[:-1]), hi.reshape(w.shape[:-1])
    for arr in (lo, hi):
        arr.flags.writeable = False
    return lo, hi


def accumulator_bits(declared, lo: int, hi: int) -> int:
    """Return the accumulator width of a layer whose accumulators reach ``[lo, hi]``: the
    ``declared`` width (at most 62, never below what the range needs) or, with ``declared``
    None, ``signed_bits(lo, hi)``."""
    need = signed_bits(lo, hi)
    if declared is None:
        return need
    declared = as_index(declared, "acc_bits")
    if declared < need:
        raise ModelFormatError(f"acc_bits: declared {declared} bits, but the accumulator can "
                               f"reach [{lo}, {hi}], which needs {need}")
    if declared > MAX_ACC_BITS:
        raise ModelFormatError(f"acc_bits must be at most {MAX_ACC_BITS}, not {declared}")
    return declared


def as_index(value: Any, what: str) -> int:
    """Return ``value`` as an int (``operator.index``), or raise :class:`ModelFormatError`."""
    try:
        return operator.index(value)
    except TypeError:
        raise ModelFormatError(f"{what} must be an integer, not {value!r}") from None


def frozen(arr: np.ndarray) -> bool:
    """Return whether nobody can change ``arr`` without first making it writeable again: it is
    read-only, and so is every array down to the one that owns its memory (what
    :class:`bitfab.fileformat.Reader` returns). Such an array is shared instead of copied."""
    while isinstance(arr, np.ndarray):
        if arr.flags.writeable:
            return False
        if arr.base is None:
            return True
        arr = arr.base
    return False


def int_array(value: Any, what: str, ndim: int) -> np.ndarray:
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
    if arr.dtype == np.int64 and frozen(arr):
        return arr  # nobody can mutate it: no copy (a model's largest arrays come this way)
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
        bits = as_index(self.bits, "input.bits")
        if self.kind == "bipolar":
            object.__setattr__(self, "bits", 1)
            object.__setattr__(self, "signed", True)
            return
        if not 1 <= bits <= MAX_ACC_BITS:
            raise ModelFormatError(f"input.bits must be in 1..{MAX_ACC_BITS}, not {bits}")
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


# --- stream payloads ------------------------------------------------------------------------------


def pack_codes(codes, bits: int) -> list[int]:
    """Pack ``codes`` (``(n, count)`` hardware codes in ``[0, 2**bits)``) into payload integers
    (element ``k`` at bits ``[k*bits, (k+1)*bits)``)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, count = codes.shape
    bitmat = ((codes[:, :, None] >> np.arange(bits)) & 1).reshape(n, count * bits)
    packed = np.packbits(bitmat.astype(np.uint8), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack_codes(payloads, count: int, bits: int) -> np.ndarray:
    """Return the ``(len(payloads), count)`` int64 codes held by payload integers (bits above
    ``count * bits`` are ignored)."""
    payloads = list(payloads)
    width = count * bits
    nbytes = (width + 7) // 8
    mask = (1 << width) - 1
    raw = np.frombuffer(b"".join((int(p) & mask).to_bytes(nbytes, "little") for p in payloads),
                        dtype=np.uint8).reshape(len(payloads), nbytes)
    bitmat = np.unpackbits(raw, axis=1, count=width, bitorder="little").astype(np.int64)
    return (bitmat.reshape(len(payloads), count, bits) << np.arange(bits)).sum(axis=2)


@dataclass(frozen=True)
class StreamFormat:
    """How the values of one layer boundary travel: one payload per transfer.

    Members
    -------
    element : InputFormat
        Format of each element (its code is ``element.bits`` wide).
    count : int
        Elements per transfer.
    framed : bool
        Whether a ``last`` bit follows the elements (at bit ``count * element.bits``). A framed
        stream carries sequences, one transfer per time step, ``last`` set on the final step of
        each sequence; an unframed stream carries one vector per transfer.
    """

    element: InputFormat
    count: int
    framed: bool = False

    @property
    def payload_bits(self) -> int:
        """Payload width: ``count * element.bits + framed``."""
        return self.count * self.element.bits + int(self.framed)

    def rows(self, values, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values (transfers, count), last (transfers,))`` in stream order.

        Unframed: ``values`` is ``(batch, count)`` and ``last`` is all ones. Framed: ``values``
        is ``(batch, T, count)`` with ``lengths`` (default ``T``), and the transfers are the valid
        steps of each sequence in order, ``last`` set on each sequence's final step.
        """
        arr = np.asarray(values, dtype=np.int64)
        if not self.framed:
            if arr.ndim != 2 or arr.shape[1] != self.count:
                raise ModelRangeError(f"vectors must have shape (batch, {self.count}), "
                                      f"not {arr.shape}")
            return arr, np.ones(len(arr), dtype=np.int64)
        if arr.ndim != 3 or arr.shape[2] != self.count:
            raise ModelRangeError(f"sequences must have shape (batch, steps, {self.count}), "
                                  f"not {arr.shape}")
        steps = arr.shape[1]
        lengths = np.full(len(arr), steps) if lengths is None else np.asarray(lengths)
        valid = np.arange(steps)[None, :] < lengths[:, None]
        last = (np.arange(steps)[None, :] == lengths[:, None] - 1)[valid]
        return arr[valid], last.astype(np.int64)

    def code_rows(self, values, lengths=None) -> np.ndarray:
        """Return the ``(transfers, count + framed)`` codes of :meth:`rows` (``last`` as the final
        column of a framed stream): what a checker compares bit for bit."""
        vals, last = self.rows(values, lengths)
        codes = self.element.to_codes(vals)
        return np.column_stack([codes, last]) if self.framed else codes

    def pack(self, values, lengths=None) -> list[int]:
        """Return the payload integers of ``values`` (see :meth:`rows`), range-checked."""
        vals, last = self.rows(values, lengths)
        self.element.check(vals)
        payloads = pack_codes(self.element.to_codes(vals), self.element.bits)
        if self.framed:
            top = self.count * self.element.bits
            payloads = [p | (int(flag) << top) for p, flag in zip(payloads, last)]
        return payloads

    def unpack_codes(self, payloads) -> np.ndarray:
        """Return the ``(transfers, count + framed)`` codes of payload integers (the inverse of
        :meth:`pack` followed by :meth:`code_rows`)."""
        payloads = list(payloads)
        codes = unpack_codes(payloads, self.count, self.element.bits)
        if not self.framed:
            return codes
        top = self.count * self.element.bits
        last = np.array([(int(p) >> top) & 1 for p in payloads], dtype=np.int64)
        return np.column_stack([codes, last]) if len(payloads) else \
            np.zeros((0, self.count + 1), dtype=np.int64)

    def unpack(self, payloads) -> np.ndarray:
        """Return the ``(transfers, count)`` element values of payload integers."""
        return self.values(self.unpack_codes(payloads))

    def answers(self, out: StreamFormat, payloads_last: np.ndarray) -> np.ndarray:
        """Return which input transfers of this stream produce an output transfer on ``out``:
        all of them, except that a framed input with an unframed output (one vector per
        sequence) answers only each sequence's final step (``payloads_last``)."""
        if self.framed and not out.framed:
            return np.asarray(payloads_last, dtype=bool)
        return np.ones(len(payloads_last), dtype=bool)

    def values(self, codes: np.ndarray) -> np.ndarray:
        """Return the element values of code rows (the ``last`` column dropped)."""
        return self.element.from_codes(np.asarray(codes)[:, :self.count])

    def describe(self) -> str:
        what = f"{self.count} x {self.element.describe()}"
        return f"{what} + last (one step per transfer)" if self.framed else what

    def to_json(self) -> dict:
        """The sidecar's description of this stream."""
        fmt = self.element
        return {
            "elements": self.count, "kind": fmt.kind, "bits": fmt.bits, "signed": fmt.signed,
            "min_value": fmt.min_value, "max_value": fmt.max_value,
            "payload_bits": self.payload_bits,
            "last_bit": self.count * fmt.bits if self.framed else None,
        }
