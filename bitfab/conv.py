"""Convolutional layer kinds (core floor): ``conv``, ``maxpool``, ``avgpool``, ``flatten``, ``add``.

Tensors and their streams
-------------------------
A tensor is a vector ``(N,)`` or an image: ``(L, C)`` (1-D) or ``(H, W, C)`` (2-D), channels last.
An image travels as a stream of pixels in row-major order, one pixel's ``C`` channels per transfer,
``last`` set on the final pixel of each image (a framed :class:`~bitfab.formats.StreamFormat` whose
frames all have ``frame_length = L`` or ``H * W`` transfers). The golden model holds an image
batch as ``(batch, pixels, C)``; :meth:`IntegerModel <bitfab.model.IntegerModel>` inputs may also
be given as ``(batch, *shape)`` or flat ``(batch, prod(shape))`` in the same order.

The graph
---------
A model is a sequence of layers with skip edges: a layer reads the previous layer's output
unless its ``source`` names an earlier layer (or ``"input"``, the model's input); an ``add``
reads its ``source`` and its ``skip``. :class:`~bitfab.model.IntegerModel` checks that every name
is an earlier, unique layer and that no tensor is left unread.

Semantics (exact integers; :mod:`bitfab.sim.conv` is the golden model)
------------------------------------------------------------------------
- ``conv``: ``acc[p, o] = sum_{k, c} w[o, k, c] * x[window(p, k), g(o) * Cg + c] + bias[o]``,
  where positions outside the image read ``pad_value`` (a value of the input format: bipolar
  inputs pad with -1 or +1, which must be stated), then the output stage of :mod:`bitfab.dense`
  per pixel and channel. Windows start at ``p * stride - pad_before`` per dimension.
- ``maxpool``: the maximum of each ``kernel`` window (no padding; ``stride`` defaults to
  ``kernel``); on 0/1 codes of a threshold output it is an OR.
- ``avgpool``: the exact integer sum of each window, then an output stage (``none``: the sum;
  ``requant``: e.g. a division by the window size as multiplier and shift; ``threshold``).
- ``flatten``: an image ``(..., C)`` as the vector of its values in stream order.
- ``add``: ``acc = (a << shift) + (b << skip_shift)`` elementwise (scales aligned exactly by
  shifts), then an output stage per channel.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .dense import NoOutput, OutputStage, check_stage, read_stage
from .encodings import WeightEncoding, check_encoding, encoding_from_json
from .errors import ModelFormatError
from .fileformat import Reader, Writer, input_format
from .fileformat import field as get_field
from .formats import (
    MAX_ELEMENTS,
    InputFormat,
    StreamFormat,
    accumulator_bits,
    accumulator_range,
    as_index,
    int_array,
    signed_bits,
)
from .layers import register_layer_kind

__all__ = ["Conv", "MaxPool", "AvgPool", "Flatten", "Add", "MAX_PIXELS", "MAX_KERNEL",
           "is_image", "pixels"]

#: The most pixels of one image (a frame of the pixel stream).
MAX_PIXELS = 1 << 20
#: The largest kernel (and pooling window) extent per dimension.
MAX_KERNEL = 64
#: The file-format version that introduced these kinds (and ``source`` / ``skip`` edges).
VERSION = 2


def is_image(shape: tuple) -> bool:
    """Whether a tensor shape is an image (``(L, C)`` or ``(H, W, C)``), not a vector."""
    return len(shape) > 1


def pixels(shape: tuple) -> int:
    """Pixels of an image shape (1 for a vector)."""
    return math.prod(shape[:-1]) if is_image(shape) else 1


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ModelFormatError(f"{what} must be a string, not {value!r}"[:300])
    return value


def _shape(value: Any, what: str, image: bool | None = None) -> tuple[int, ...]:
    """A tensor shape: ``(N,)``, ``(L, C)`` or ``(H, W, C)`` of positive sizes."""
    try:
        shape = tuple(as_index(v, what) for v in value)
    except TypeError:
        raise ModelFormatError(f"{what} must be a list of sizes, not {value!r}"[:300]) from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise ModelFormatError(f"{what} must be (N,), (L, C) or (H, W, C) of positive sizes, "
                               f"not {shape}")
    if image is True and len(shape) == 1:
        raise ModelFormatError(f"{what} must be an image (L, C) or (H, W, C), not {shape}")
    size = math.prod(shape)
    if size > MAX_ELEMENTS or pixels(shape) > MAX_PIXELS:
        raise ModelFormatError(f"{what} {shape} is larger than {MAX_ELEMENTS} values or "
                               f"{MAX_PIXELS} pixels (docs/limits.md)")
    return shape


def _per_dim(value: Any, dims: int, what: str, lo: int) -> tuple[int, ...]:
    """An int or one int per spatial dimension, each at least ``lo``."""
    if isinstance(value, (list, tuple)):
        out = tuple(as_index(v, what) for v in value)
    else:
        out = (as_index(value, what),) * dims
    if len(out) != dims or min(out) < lo:
        raise ModelFormatError(f"{what} must be {dims} integer(s) >= {lo}, not {value!r}"[:300])
    return out


def _padding(value: Any, dims: int) -> tuple[tuple[int, int], ...]:
    """Padding: an int, one int per dimension, or ``(before, after)`` per dimension."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        if len(value) != dims:
            raise ModelFormatError(f"padding must have {dims} (before, after) pair(s), "
                                   f"not {value!r}"[:300])
        pairs = tuple(_per_dim(p, 2, "padding", 0) for p in value)
    else:
        pairs = tuple((p, p) for p in _per_dim(value, dims, "padding", 0))
    return pairs


def _out_size(size: int, kernel: int, stride: int, before: int = 0, after: int = 0) -> int:
    return (size + before + after - kernel) // stride + 1


def _stream(fmt: InputFormat, shape: tuple) -> StreamFormat:
    """A pixel stream for an image shape, one vector per transfer for a vector shape."""
    return StreamFormat(fmt, shape[-1], framed=is_image(shape))


def _spatial_desc(shape: tuple) -> str:
    return "x".join(map(str, shape))


class _Tensor:
    """Shapes, streams and edges shared by the image kinds (a mixin of the dataclasses)."""

    @property
    def in_features(self) -> int:
        """Elements per input transfer (channels of a pixel, or the vector length)."""
        return int(self.in_shape[-1])

    @property
    def out_features(self) -> int:
        """Elements per output transfer."""
        return int(self.out_shape[-1])

    @property
    def frame_length(self) -> int | None:
        """Input transfers per image (pixels), None for a vector input."""
        return pixels(self.in_shape) if is_image(self.in_shape) else None

    @property
    def out_frame_length(self) -> int | None:
        """Output transfers per image, None for a vector output."""
        return pixels(self.out_shape) if is_image(self.out_shape) else None

    @property
    def out_bits(self) -> int:
        """Width of one output value."""
        return self.out_format.bits

    @property
    def in_stream(self) -> StreamFormat:
        return _stream(self.input, self.in_shape)

    @property
    def out_stream(self) -> StreamFormat:
        return _stream(self.out_format, self.out_shape)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the tensors it reads (``""``: the previous layer's output)."""
        return (self.source,)

    def replace(self, **changes):
        """Return a copy with ``changes`` applied (validated again)."""
        if "acc_bits" not in changes and any(f.name == "acc_bits"
                                             for f in dataclasses.fields(self)) \
                and set(changes) - {"name", "source", "skip", "output"}:
            changes["acc_bits"] = None
        return dataclasses.replace(self, **changes)

    def _check_common(self) -> None:
        _name(self.name, "name")
        _name(self.source, "source")
        if not isinstance(self.input, InputFormat):
            raise ModelFormatError(f"input must be an InputFormat, not {self.input!r}"[:300])


def _check_codes(fmt: InputFormat, kind: str) -> None:
    if fmt.kind == "bipolar":
        raise ModelFormatError(f"input: a {kind} carries the codes of its input, so it reads an "
                               f"int format (a 0/1 threshold output is int1 unsigned), "
                               f"not bipolar")


def _stage_acc(layer, lo: int, hi: int, channels: int) -> None:
    """Check the output stage against the channels and the accumulator range; set acc_bits."""
    check_stage(layer.output)
    layer.output.check_channels(channels)
    layer.output.check_acc(lo, hi)
    object.__setattr__(layer, "acc_bits", accumulator_bits(layer.acc_bits, lo, hi))


# --- conv -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Conv(_Tensor):
    """A 1-D or 2-D convolution, grouped or depthwise (see the module docstring).

    Members
    -------
    weights : int array, shape ``(out_channels, *kernel, in_channels // groups)``
        Weight values allowed by ``encoding``; window order ``(ky, kx, c)`` (channels last).
    encoding : a weight encoding (:mod:`bitfab.encodings`)
    input : InputFormat
    in_shape : ``(L, C)`` or ``(H, W, C)``
    stride : int or one per spatial dimension
    padding : int, one per dimension, or ``(before, after)`` per dimension
    pad_value : int or None
        The value read outside the image: in the input format's range; None means 0 for int
        inputs, and is refused for bipolar inputs (which have no 0).
    groups : int
        ``in_channels`` and ``out_channels`` are both multiples of it (depthwise: ``groups =
        in_channels``).
    output : Threshold | Requant | NoOutput
    bias : int array ``(out_channels,)`` or None
    acc_bits : int or None
    name, source : str
    """

    weights: np.ndarray
    encoding: WeightEncoding
    input: InputFormat
    in_shape: tuple
    stride: Any = 1
    padding: Any = 0
    pad_value: int | None = None
    groups: int = 1
    output: OutputStage = field(default_factory=NoOutput)
    bias: np.ndarray | None = None
    acc_bits: int | None = None
    name: str = ""
    source: str = ""
    kind: ClassVar[str] = "conv"

    def __post_init__(self):
        self._check_common()
        shape = _shape(self.in_shape, "in_shape", image=True)
        dims = len(shape) - 1
        w = int_array(self.weights, "weights", dims + 2)
        if 0 in w.shape:
            raise ModelFormatError(f"weights must not be empty, not shape {w.shape}")
        kernel = w.shape[1:-1]
        if max(kernel) > MAX_KERNEL:
            raise ModelFormatError(f"weights: kernel {kernel} is larger than {MAX_KERNEL} per "
                                   f"dimension")
        groups = as_index(self.groups, "groups")
        c_in, c_out = shape[-1], w.shape[0]
        if groups < 1 or c_in % groups or c_out % groups:
            raise ModelFormatError(f"groups: {groups} must divide the {c_in} input and "
                                   f"{c_out} output channels")
        if w.shape[-1] != c_in // groups:
            raise ModelFormatError(f"weights: {c_in} input channels in {groups} group(s) need "
                                   f"shape (out, *kernel, {c_in // groups}), not {w.shape}")
        stride = _per_dim(self.stride, dims, "stride", 1)
        padding = _padding(self.padding, dims)
        for d, (k, (a, b)) in enumerate(zip(kernel, padding)):
            if a >= k or b >= k:
                raise ModelFormatError(f"padding {padding[d]} of dimension {d} must be smaller "
                                       f"than the kernel ({k})")
        out_spatial = tuple(_out_size(n, k, s, a, b) for n, k, s, (a, b)
                            in zip(shape[:-1], kernel, stride, padding))
        if min(out_spatial) < 1:
            raise ModelFormatError(f"stride {stride} and padding {padding} give an empty output "
                                   f"from {shape[:-1]} with kernel {kernel}")
        check_encoding(self.encoding)
        self.encoding.check(w, "weights")
        fmt = self.input
        if self.pad_value is None:
            if fmt.kind == "bipolar":
                raise ModelFormatError("pad_value: a bipolar input has no 0; state the value "
                                       "read outside the image (-1 or +1)")
            pad = 0
        else:
            pad = as_index(self.pad_value, "pad_value")
        if pad < fmt.min_value or pad > fmt.max_value or (fmt.kind == "bipolar" and pad == 0):
            raise ModelFormatError(f"pad_value {pad} is not a value of the input format "
                                   f"{fmt.describe()}")
        b = np.zeros(c_out, dtype=np.int64) if self.bias is None else \
            int_array(self.bias, "bias", 1)
        if b.shape != (c_out,):
            raise ModelFormatError(f"bias must have shape ({c_out},), not {b.shape}")
        b.flags.writeable = False
        for key, value in (("weights", w), ("in_shape", shape), ("stride", stride),
                           ("padding", padding), ("pad_value", pad), ("groups", groups),
                           ("bias", b)):
            object.__setattr__(self, key, value)
        lo, hi = self.acc_range
        _stage_acc(self, int(lo.min()), int(hi.max()), c_out)

    # --- shapes -----------------------------------------------------------------------------------

    @property
    def dims(self) -> int:
        """Spatial dimensions: 1 or 2."""
        return len(self.in_shape) - 1

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.weights.shape[1:-1])

    @property
    def in_channels(self) -> int:
        return int(self.in_shape[-1])

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def group_channels(self) -> int:
        """Input channels per group ``Cg``."""
        return self.in_channels // self.groups

    @property
    def out_shape(self) -> tuple[int, ...]:
        spatial = tuple(_out_size(n, k, s, a, b) for n, k, s, (a, b)
                        in zip(self.in_shape[:-1], self.kernel, self.stride, self.padding))
        return spatial + (self.out_channels,)

    @property
    def matrix(self) -> np.ndarray:
        """The weights as ``(out_channels, prod(kernel) * Cg)``, window order (a read-only
        view): the dense matrix each output pixel applies to its window."""
        return self.weights.reshape(self.out_channels, -1)

    @cached_property
    def acc_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel accumulator range over windows of values in the input format (the pad
        value is one of them): the :class:`~bitfab.dense.Dense` bound of :attr:`matrix`."""
        return accumulator_range(self.matrix, self.input.min_value, self.input.max_value,
                                 self.bias)

    @property
    def required_acc_bits(self) -> int:
        lo, hi = self.acc_range
        return signed_bits(int(lo.min()), int(hi.max()))

    @property
    def out_format(self) -> InputFormat:
        return self.output.out_format(self.acc_bits)

    @property
    def datapath(self) -> str:
        return self.encoding.datapath(self.input)

    @property
    def weight_count(self) -> int:
        return int(self.weights.size)

    @property
    def weight_bits(self) -> int:
        return self.weights.size * self.encoding.bits_per_weight + self.encoding.table_bits

    @property
    def sparsity(self) -> float:
        return float(np.count_nonzero(self.weights == 0)) / self.weights.size

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image: weights times output pixels."""
        return int(self.weights.size) * pixels(self.out_shape)

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.stride))
        groups = "" if self.groups == 1 else (
            ", depthwise" if self.groups == self.in_channels else f", {self.groups} groups")
        return (f"conv{self.dims}d {_spatial_desc(self.in_shape)}->"
                f"{_spatial_desc(self.out_shape)} k{k} s{s}{groups}")

    # --- the file format --------------------------------------------------------------------------

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {
            "kind": self.kind, "name": self.name, "source": self.source,
            "in_shape": list(self.in_shape), "out_channels": self.out_channels,
            "kernel": list(self.kernel), "stride": list(self.stride),
            "padding": [list(p) for p in self.padding], "pad_value": self.pad_value,
            "groups": self.groups, "input": self.input.to_json(),
            "encoding": self.encoding.to_json(),
            "weights": out.add(f"{prefix}/weights.npy", self.encoding.store(self.matrix)),
            "bias": out.add_int(f"{prefix}/bias.npy", self.bias),
            "acc_bits": self.acc_bits, "output": self.output.to_manifest(prefix, out),
        }

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> Conv:
        shape = _shape(get_field(d, "in_shape", list, where), f"{where}.in_shape", image=True)
        c_out = get_field(d, "out_channels", int, where)
        kernel = _per_dim(get_field(d, "kernel", list, where), len(shape) - 1,
                          f"{where}.kernel", 1)
        groups = get_field(d, "groups", int, where)
        if groups < 1 or shape[-1] % groups:
            raise ModelFormatError(f"{where}.groups must divide the {shape[-1]} input channels, "
                                   f"not {groups}")
        cols = math.prod(kernel) * (shape[-1] // groups)
        if c_out < 1 or max(kernel) > MAX_KERNEL or c_out * cols > MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: {c_out} channels of kernel {kernel} are outside "
                                   f"1..{MAX_ELEMENTS} weights")
        enc = encoding_from_json(get_field(d, "encoding", dict, where), f"{where}.encoding")
        raw = reader.array(get_field(d, "weights", str, where), f"{where}.weights",
                           enc.stored_shape(c_out, cols), widened=c_out * cols, widen=False)
        w = enc.restore(raw, cols, f"{where}.weights").reshape(
            (c_out,) + kernel + (shape[-1] // groups,))
        return cls(
            w, enc, input_format(get_field(d, "input", dict, where), f"{where}.input"), shape,
            get_field(d, "stride", list, where), get_field(d, "padding", list, where),
            get_field(d, "pad_value", int, where), groups,
            read_stage(d, reader, where, c_out),
            reader.array(get_field(d, "bias", str, where), f"{where}.bias", (c_out,)),
            get_field(d, "acc_bits", int, where), get_field(d, "name", str, where, ""),
            get_field(d, "source", str, where, ""))


# --- pooling --------------------------------------------------------------------------------------


class _Pool(_Tensor):
    """Window geometry of the pooling kinds (no padding; stride defaults to the kernel)."""

    def _check_window(self) -> tuple[int, ...]:
        self._check_common()
        shape = _shape(self.in_shape, "in_shape", image=True)
        dims = len(shape) - 1
        kernel = _per_dim(self.kernel, dims, "kernel", 1)
        stride = kernel if self.stride is None else _per_dim(self.stride, dims, "stride", 1)
        if max(kernel) > MAX_KERNEL:
            raise ModelFormatError(f"kernel {kernel} is larger than {MAX_KERNEL} per dimension")
        out = tuple(_out_size(n, k, s) for n, k, s in zip(shape[:-1], kernel, stride))
        if min(out) < 1:
            raise ModelFormatError(f"kernel {kernel} is larger than the image {shape[:-1]}: "
                                   f"the output is empty")
        object.__setattr__(self, "in_shape", shape)
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "stride", stride)
        return shape

    @property
    def dims(self) -> int:
        return len(self.in_shape) - 1

    @property
    def window(self) -> int:
        """Values per window (per channel): ``prod(kernel)``."""
        return math.prod(self.kernel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        spatial = tuple(_out_size(n, k, s) for n, k, s
                        in zip(self.in_shape[:-1], self.kernel, self.stride))
        return spatial + (self.in_shape[-1],)

    @property
    def encoding(self):
        return None

    @property
    def datapath(self) -> str:
        return "pool"

    @property
    def weight_count(self) -> int:
        return 0

    @property
    def weight_bits(self) -> int:
        return 0

    @property
    def sparsity(self) -> float:
        return 0.0

    @property
    def macs(self) -> int:
        return 0

    def _describe(self, what: str) -> str:
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.stride))
        return (f"{what} {_spatial_desc(self.in_shape)}->{_spatial_desc(self.out_shape)} "
                f"k{k} s{s}")

    def _manifest(self) -> dict:
        return {"kind": self.kind, "name": self.name, "source": self.source,
                "in_shape": list(self.in_shape), "kernel": list(self.kernel),
                "stride": list(self.stride), "input": self.input.to_json()}

    @staticmethod
    def _read(d: dict, where: str) -> tuple:
        shape = _shape(get_field(d, "in_shape", list, where), f"{where}.in_shape", image=True)
        return (input_format(get_field(d, "input", dict, where), f"{where}.input"), shape,
                get_field(d, "kernel", list, where), get_field(d, "stride", list, where))


@dataclass(frozen=True, eq=False)
class MaxPool(_Pool):
    """The maximum of each window per channel (see the module docstring).

    Members
    -------
    input : InputFormat (int: a pool carries codes)
    in_shape : ``(L, C)`` or ``(H, W, C)``
    kernel : int or one per spatial dimension
    stride : int, one per dimension, or None (the kernel)
    name, source : str
    """

    input: InputFormat
    in_shape: tuple
    kernel: Any = 2
    stride: Any = None
    name: str = ""
    source: str = ""
    kind: ClassVar[str] = "maxpool"

    def __post_init__(self):
        self._check_window()
        _check_codes(self.input, "maxpool")

    @property
    def out_format(self) -> InputFormat:
        return self.input

    @property
    def acc_bits(self) -> int:
        return self.input.bits

    @property
    def output(self) -> NoOutput:
        return NoOutput()

    def describe(self) -> str:
        return self._describe("maxpool")

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return self._manifest()

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> MaxPool:
        return cls(*cls._read(d, where), get_field(d, "name", str, where, ""),
                   get_field(d, "source", str, where, ""))


@dataclass(frozen=True, eq=False)
class AvgPool(_Pool):
    """The exact sum of each window per channel, then an output stage (module docstring).

    Members
    -------
    input : InputFormat (int)
    in_shape : ``(L, C)`` or ``(H, W, C)``
    kernel, stride : as :class:`MaxPool` (global pooling: the kernel is the image)
    output : Threshold | Requant | NoOutput (per channel)
    acc_bits : int or None (the width of the sums)
    name, source : str
    """

    input: InputFormat
    in_shape: tuple
    kernel: Any = 2
    stride: Any = None
    output: OutputStage = field(default_factory=NoOutput)
    acc_bits: int | None = None
    name: str = ""
    source: str = ""
    kind: ClassVar[str] = "avgpool"

    def __post_init__(self):
        shape = self._check_window()
        _check_codes(self.input, "avgpool")
        lo, hi = self.acc_range
        _stage_acc(self, lo, hi, shape[-1])

    @property
    def acc_range(self) -> tuple[int, int]:
        """Range of a window sum: ``window * [min, max]`` of the input format."""
        return self.window * self.input.min_value, self.window * self.input.max_value

    @property
    def out_format(self) -> InputFormat:
        return self.output.out_format(self.acc_bits)

    def describe(self) -> str:
        return self._describe("avgpool") + f", {self.output.describe()}"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {**self._manifest(), "acc_bits": self.acc_bits,
                "output": self.output.to_manifest(prefix, out)}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> AvgPool:
        fmt, shape, kernel, stride = cls._read(d, where)
        return cls(fmt, shape, kernel, stride, read_stage(d, reader, where, shape[-1]),
                   get_field(d, "acc_bits", int, where), get_field(d, "name", str, where, ""),
                   get_field(d, "source", str, where, ""))


# --- flatten and add ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Flatten(_Tensor):
    """An image as one vector of its values in stream order (pixel-major, channels last).

    Members
    -------
    input : InputFormat (int: it carries codes)
    in_shape : ``(L, C)`` or ``(H, W, C)``
    name, source : str
    """

    input: InputFormat
    in_shape: tuple
    name: str = ""
    source: str = ""
    kind: ClassVar[str] = "flatten"

    def __post_init__(self):
        self._check_common()
        object.__setattr__(self, "in_shape", _shape(self.in_shape, "in_shape", image=True))
        _check_codes(self.input, "flatten")

    out_format = property(lambda self: self.input)
    acc_bits = property(lambda self: self.input.bits)
    output = property(lambda self: NoOutput())
    encoding = property(lambda self: None)
    datapath = property(lambda self: "flatten")
    weight_count = property(lambda self: 0)
    weight_bits = property(lambda self: 0)
    sparsity = property(lambda self: 0.0)
    macs = property(lambda self: 0)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (math.prod(self.in_shape),)

    def describe(self) -> str:
        return f"flatten {_spatial_desc(self.in_shape)}->{self.out_shape[0]}"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {"kind": self.kind, "name": self.name, "source": self.source,
                "in_shape": list(self.in_shape), "input": self.input.to_json()}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> Flatten:
        return cls(input_format(get_field(d, "input", dict, where), f"{where}.input"),
                   _shape(get_field(d, "in_shape", list, where), f"{where}.in_shape"),
                   get_field(d, "name", str, where, ""), get_field(d, "source", str, where, ""))


@dataclass(frozen=True, eq=False)
class Add(_Tensor):
    """A residual join: ``acc = (a << shift) + (b << skip_shift)``, then an output stage.

    ``a`` is the tensor it reads (``source``, default the previous layer's output), ``b`` the
    output of the earlier layer named ``skip`` (or ``"input"``). Both have ``shape``.

    Members
    -------
    input, skip_input : InputFormat (int) of ``a`` and ``b``
    shape : the tensor shape ``(N,)``, ``(L, C)`` or ``(H, W, C)``
    skip : str
    shift, skip_shift : int in 0..32
        The exact scale alignment: ``a``'s unit is ``2**shift`` units of the sum.
    output : Threshold | Requant | NoOutput (per channel)
    acc_bits : int or None
    name, source : str
    """

    input: InputFormat
    skip_input: InputFormat
    shape: tuple
    skip: str
    shift: int = 0
    skip_shift: int = 0
    output: OutputStage = field(default_factory=NoOutput)
    acc_bits: int | None = None
    name: str = ""
    source: str = ""
    kind: ClassVar[str] = "add"

    def __post_init__(self):
        self._check_common()
        if not isinstance(self.skip_input, InputFormat):
            raise ModelFormatError(f"skip_input must be an InputFormat, "
                                   f"not {self.skip_input!r}"[:300])
        _check_codes(self.input, "add")
        if self.skip_input.kind == "bipolar":
            raise ModelFormatError("skip_input: an add reads int formats, not bipolar")
        if not _name(self.skip, "skip"):
            raise ModelFormatError("skip must name the earlier layer (or 'input') it adds")
        shape = _shape(self.shape, "shape")
        shifts = [as_index(self.shift, "shift"), as_index(self.skip_shift, "skip_shift")]
        if not all(0 <= s <= 32 for s in shifts):
            raise ModelFormatError(f"shift and skip_shift must be in 0..32, not {shifts}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "shift", shifts[0])
        object.__setattr__(self, "skip_shift", shifts[1])
        lo, hi = self.acc_range
        _stage_acc(self, lo, hi, shape[-1])

    in_shape = property(lambda self: self.shape)
    out_shape = property(lambda self: self.shape)
    encoding = property(lambda self: None)
    datapath = property(lambda self: "add")
    weight_count = property(lambda self: 0)
    weight_bits = property(lambda self: 0)
    sparsity = property(lambda self: 0.0)
    macs = property(lambda self: 0)

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source, self.skip)

    @property
    def acc_range(self) -> tuple[int, int]:
        a, b = self.input, self.skip_input
        return ((a.min_value << self.shift) + (b.min_value << self.skip_shift),
                (a.max_value << self.shift) + (b.max_value << self.skip_shift))

    @property
    def out_format(self) -> InputFormat:
        return self.output.out_format(self.acc_bits)

    def describe(self) -> str:
        return f"add {_spatial_desc(self.shape)} + {self.skip}, {self.output.describe()}"

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        return {"kind": self.kind, "name": self.name, "source": self.source,
                "skip": self.skip, "shape": list(self.shape), "input": self.input.to_json(),
                "skip_input": self.skip_input.to_json(), "shift": self.shift,
                "skip_shift": self.skip_shift, "acc_bits": self.acc_bits,
                "output": self.output.to_manifest(prefix, out)}

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> Add:
        shape = _shape(get_field(d, "shape", list, where), f"{where}.shape")
        return cls(input_format(get_field(d, "input", dict, where), f"{where}.input"),
                   input_format(get_field(d, "skip_input", dict, where), f"{where}.skip_input"),
                   shape, get_field(d, "skip", str, where), get_field(d, "shift", int, where),
                   get_field(d, "skip_shift", int, where),
                   read_stage(d, reader, where, shape[-1]),
                   get_field(d, "acc_bits", int, where), get_field(d, "name", str, where, ""),
                   get_field(d, "source", str, where, ""))


for _kind in (Conv, MaxPool, AvgPool, Flatten, Add):
    _kind.version = VERSION
    register_layer_kind(_kind)
