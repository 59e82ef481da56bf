"""The ``dense`` layer kind and its output stages (core floor).

``acc[o] = sum_i weights[o, i] * x[i] + bias[o]``, exactly, then an output stage:

- :class:`Threshold`: ``y = #{t: acc >= T[o, t]}`` (or ``<=`` for direction -1), batchnorm folded;
- :class:`Requant`: ``y = clamp((acc * M[o] + r) >> shift)``;
- :class:`NoOutput`: the raw accumulators (the last layer; argmax is the class).

Golden execution is :mod:`bitfab.sim.golden`, the hardware :mod:`bitfab.hw.layer`, the torch
module :mod:`bitfab.quant.network`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Literal, Union

import numpy as np

from .encodings import WeightEncoding, check_encoding, encoding_from_json
from .errors import ModelFormatError
from .fileformat import Reader, Writer, input_format
from .fileformat import field as get_field
from .formats import (
    INT64_SAFE,
    MAX_ELEMENTS,
    InputFormat,
    StreamFormat,
    accumulator_bits,
    accumulator_range,
    as_index,
    int_array,
    signed_bits,
    unsigned_bits,
)
from .layers import register_layer_kind

__all__ = ["Threshold", "Requant", "NoOutput", "OutputStage", "STAGES", "check_stage", "read_stage",
           "Dense"]


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
        t = int_array(self.thresholds, "output.thresholds", 2)
        if t.shape[1] < 1 or t.shape[1] > 255:
            raise ModelFormatError(f"output.thresholds must have 1..255 thresholds per channel, "
                                   f"not {t.shape[1]}")
        if self.direction is None:
            d = np.ones(t.shape[0], dtype=np.int64)
            d.flags.writeable = False
        else:
            d = int_array(self.direction, "output.direction", 1)
        if d.shape != (t.shape[0],):
            raise ModelFormatError(f"output.direction must have shape ({t.shape[0]},), "
                                   f"not {d.shape}")
        if np.any(np.abs(d) != 1):
            raise ModelFormatError("output.direction must hold only -1 and +1")
        # compared, not subtracted: the difference of two int64 thresholds can wrap
        unsorted = np.where(d[:, None] > 0, t[:, 1:] < t[:, :-1], t[:, 1:] > t[:, :-1])
        if np.any(unsorted):
            o = int(np.argwhere(unsorted)[0, 0])
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

    def check_acc(self, lo: int, hi: int) -> None:
        pass

    def describe(self) -> str:
        return f"threshold x{self.count}"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {"kind": self.kind, "count": self.count,
                "thresholds": out.add_int(f"{prefix}/thresholds.npy", self.thresholds),
                "direction": out.add(f"{prefix}/direction.npy", self.direction.astype(np.int8))}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str, channels: int) -> Threshold:
        count = get_field(d, "count", int, where)
        if not 1 <= count <= 255:
            raise ModelFormatError(f"{where}.count must be in 1..255, not {count}")
        return cls(reader.array(get_field(d, "thresholds", str, where), f"{where}.thresholds",
                                (channels, count)),
                   reader.array(get_field(d, "direction", str, where), f"{where}.direction",
                                (channels,)))


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
        m = int_array(self.multiplier, "output.multiplier", 1)
        if m.size and (m.max() >= 1 << 31 or m.min() <= -(1 << 31)):  # np.abs wraps int64 min
            raise ModelFormatError("output.multiplier entries must fit 32 bits")
        shift = as_index(self.shift, "output.shift")
        if not 0 <= shift <= 62:
            raise ModelFormatError(f"output.shift must be in 0..62, not {shift}")
        bits = as_index(self.bits, "output.bits")
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

    def check_acc(self, lo: int, hi: int) -> None:
        """Refuse a multiplier whose product with the accumulator could leave int64."""
        mag = int(np.abs(self.multiplier).max()) if self.multiplier.size else 0
        if max(-lo, hi) * max(mag, 1) >= INT64_SAFE:
            raise ModelFormatError("output.multiplier: acc * multiplier can exceed 62 bits")

    def describe(self) -> str:
        return f"requant -> {'int' if self.signed else 'uint'}{self.bits}"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {"kind": self.kind, "multiplier": out.add(f"{prefix}/multiplier.npy",
                                                         self.multiplier),
                "shift": self.shift, "bits": self.bits, "signed": self.signed,
                "rounding": self.rounding}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str, channels: int) -> Requant:
        return cls(reader.array(get_field(d, "multiplier", str, where), f"{where}.multiplier",
                                (channels,)),
                   get_field(d, "shift", int, where), get_field(d, "bits", int, where),
                   get_field(d, "signed", bool, where), get_field(d, "rounding", str, where))


@dataclass(frozen=True)
class NoOutput:
    """No output stage: the layer emits its raw accumulators (the last layer; argmax = class)."""

    kind: ClassVar[str] = "none"

    def out_format(self, acc_bits: int) -> InputFormat:
        return InputFormat.int(acc_bits, signed=True)

    def check_channels(self, out: int) -> None:
        pass

    def check_acc(self, lo: int, hi: int) -> None:
        pass

    def describe(self) -> str:
        return "none (accumulators)"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str, channels: int) -> NoOutput:
        return cls()


#: output stage kind -> class
STAGES: dict[str, type] = {c.kind: c for c in (Threshold, Requant, NoOutput)}


OutputStage = Union[Threshold, Requant, NoOutput]


def check_stage(output) -> None:
    """Refuse ``output`` unless it is one of the output stages (:data:`STAGES`)."""
    if STAGES.get(getattr(output, "kind", None)) is not type(output):
        raise ModelFormatError(f"output must be a Threshold, Requant or NoOutput, "
                               f"not {output!r}"[:300])


def read_stage(d: dict, reader: Reader, where: str, channels: int) -> OutputStage:
    """Read the ``output`` entry of the layer manifest ``d`` (a stage for ``channels``)."""
    out = get_field(d, "output", dict, where)
    okind = get_field(out, "kind", str, f"{where}.output")
    if okind not in STAGES:
        raise ModelFormatError(f"{where}.output.kind must be 'threshold', 'requant' or "
                               f"'none', not {okind!r}"[:300])
    return STAGES[okind].from_manifest(out, reader, f"{where}.output", channels)


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
        w = int_array(self.weights, "weights", 2)
        if 0 in w.shape:
            raise ModelFormatError(f"weights must not be empty, not shape {w.shape}")
        check_encoding(self.encoding)
        if not isinstance(self.input, InputFormat):
            raise ModelFormatError(f"input must be an InputFormat, not {self.input!r}")
        check_stage(self.output)
        self.encoding.check(w, "weights")
        if self.bias is None:
            b = np.zeros(w.shape[0], dtype=np.int64)
            b.flags.writeable = False
        else:
            b = int_array(self.bias, "bias", 1)
        if b.shape != (w.shape[0],):
            raise ModelFormatError(f"bias must have shape ({w.shape[0]},), not {b.shape}")
        self.output.check_channels(w.shape[0])
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)
        if not isinstance(self.name, str):
            raise ModelFormatError(f"name must be a string, not {self.name!r}")
        lo, hi = self.acc_range
        self.output.check_acc(int(lo.min()), int(hi.max()))
        object.__setattr__(self, "acc_bits",
                           accumulator_bits(self.acc_bits, int(lo.min()), int(hi.max())))

    @property
    def in_features(self) -> int:
        """Input vector length ``N``."""
        return int(self.weights.shape[1])

    @property
    def out_features(self) -> int:
        """Output vector length (channels)."""
        return int(self.weights.shape[0])

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of the tensor it reads: a vector ``(in_features,)``."""
        return (self.in_features,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the tensor it emits: a vector ``(out_features,)``."""
        return (self.out_features,)

    @cached_property
    def acc_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel reachable accumulator range ``(lo, hi)``.

        ``lo[o] = bias[o] + sum_i min(w[o,i] * x_min, w[o,i] * x_max)`` and ``hi`` likewise with
        ``max``, where ``[x_min, x_max]`` is the input format's range. The bound is tight: the
        inputs are independent, so every channel reaches both ends.
        """
        return accumulator_range(self.weights, self.input.min_value, self.input.max_value,
                                 self.bias)

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
        return self.weights.size * self.encoding.bits_per_weight + self.encoding.table_bits

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

    @property
    def weight_count(self) -> int:
        """Number of weights: ``out * in``."""
        return int(self.weights.size)

    @property
    def datapath(self) -> str:
        """The datapath kind of its weights on its inputs (:meth:`encoding.datapath`)."""
        return self.encoding.datapath(self.input)

    @property
    def in_stream(self) -> StreamFormat:
        """One input vector per transfer."""
        return StreamFormat(self.input, self.in_features)

    @property
    def out_stream(self) -> StreamFormat:
        """One output vector per transfer, as codes of :attr:`out_format`."""
        return StreamFormat(self.out_format, self.out_features)

    def describe(self) -> str:
        return f"dense {self.in_features}->{self.out_features}"

    # --- the file format --------------------------------------------------------------------------

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        """Return the manifest entry; arrays go to ``out``."""
        return {
            "kind": self.kind, "name": self.name,
            "in_features": self.in_features, "out_features": self.out_features,
            "input": self.input.to_json(), "encoding": self.encoding.to_json(),
            "weights": out.add(f"{prefix}/weights.npy", self.encoding.store(self.weights)),
            "bias": out.add_int(f"{prefix}/bias.npy", self.bias),
            "acc_bits": self.acc_bits,
            "output": self.output.to_manifest(prefix, out),
        }

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> Dense:
        """Read a manifest entry written by :meth:`to_manifest`."""
        n_in = get_field(d, "in_features", int, where)
        n_out = get_field(d, "out_features", int, where)
        if n_in < 1 or n_out < 1 or n_in * n_out > MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: a {n_out}x{n_in} layer is outside "
                                   f"1..{MAX_ELEMENTS} weights")
        fmt = input_format(get_field(d, "input", dict, where), f"{where}.input")
        enc = encoding_from_json(get_field(d, "encoding", dict, where), f"{where}.encoding")
        raw = reader.array(get_field(d, "weights", str, where), f"{where}.weights",
                           enc.stored_shape(n_out, n_in), widened=n_out * n_in, widen=False)
        w = enc.restore(raw, n_in, f"{where}.weights")
        bias = reader.array(get_field(d, "bias", str, where), f"{where}.bias", (n_out,))
        stage = read_stage(d, reader, where, n_out)
        return cls(w, enc, fmt, stage, bias, get_field(d, "acc_bits", int, where),
                   get_field(d, "name", str, where, ""))


register_layer_kind(Dense)
