"""Quantized convolutional networks: a float QAT forward for training, an exact integer forward.

:class:`QuantConvNet` is the convolutional twin of :class:`bitfab.quant.network.QuantMLP`. Its
float forward (training) is the usual fake-quantized network on channels-first tensors: per
convolution ``conv (quantized weights) -> batchnorm -> activation quantizer``, 2x2 max pooling
after the activation, residual joins ``act(batchnorm(branch + shortcut))`` of two activation
tensors of the same step, global average pooling, and a last quantized linear layer whose bias
is rounded to whole accumulator units. Every step of it has an exact integer form:

- a convolution's batchnorm and activation fold into per-channel thresholds with a direction
  (:func:`bitfab.quant.fold.fold_thresholds`, exactly as for a dense layer); the image border
  pads with the activation's code of real 0 (0 for unsigned levels; -1 for bipolar activations,
  which have no 0, so the float forward pads with -1 as well);
- max pooling commutes with the (monotone) activation, so it pools the 0/1 or level codes;
- a residual join adds two level codes whose units are aligned by integer shifts
  (:func:`align_shifts` refuses units whose ratio is not a power of two), then folds its
  batchnorm and activation into thresholds on the exact sum;
- global average pooling is the exact sum (an :class:`~bitfab.conv.AvgPool` without an output
  stage); the mean's ``1 / window`` moves into the last layer's input unit, which changes no
  argmax;
- flatten is channels last (the stream order), in training as in the exported model.

:func:`integer_forward` executes an exported :class:`~bitfab.model.IntegerModel` of these
kinds with torch (float64 tensors holding integers below ``2**53``, checked), returning every
layer's accumulators and outputs in the golden model's layout: the torch reference that
:func:`bitfab.sim.golden.execute` is compared with, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitfab.conv import Add, AvgPool, Conv, Flatten, MaxPool
from bitfab.errors import BitfabError
from bitfab.model import Dense, InputFormat, IntegerModel, NoOutput, Requant

from .fold import fold_thresholds
from .network import QuantDense, QuantizedLayers, make_activation
from .quantizers import FloatWeight, WeightQuantizer
from .ste import round_half_up, ste

__all__ = ["ARCHES", "QuantConv", "QuantConvNet", "image_shape", "align_shifts",
           "integer_forward"]

#: the network builders: a small 2-D CNN and a ResNet (1-D or 2-D, by the data)
ARCHES = ("cnn", "resnet")

_EXACT = 2.0 ** 53


def image_shape(dataset: str, features: int) -> tuple[int, ...]:
    """Return the image shape of a dataset's flat inputs: ``(L, 1)`` signals for ``mnist1d``,
    ``(side, side, 1)`` square images otherwise (digits 8x8, Fashion-MNIST 28x28).

    >>> image_shape("digits", 64), image_shape("mnist1d", 40)
    ((8, 8, 1), (40, 1))
    """
    if dataset == "mnist1d":
        return (int(features), 1)
    side = math.isqrt(int(features))
    if side * side != features:
        raise BitfabError(f"dataset {dataset} has {features} features, not a square image; "
                          f"a convolutional recipe needs images")
    return (side, side, 1)


def align_shifts(unit_a: float, unit_b: float) -> tuple[int, int]:
    """Return ``(shift, skip_shift)`` such that ``(a << shift) + (b << skip_shift)`` is the
    exact sum in units of ``min(unit_a, unit_b)``; refuse units whose ratio is not a power of
    two (no integer shift aligns them exactly).

    >>> align_shifts(0.25, 0.125), align_shifts(0.2, 0.2)
    ((1, 0), (0, 0))
    """
    ratio = max(unit_a, unit_b) / min(unit_a, unit_b)
    k = round(math.log2(ratio))
    if not 0 <= k <= 32 or 2.0 ** k != ratio:
        raise BitfabError(f"a residual add of units {unit_a!r} and {unit_b!r} cannot be aligned "
                          f"exactly: their ratio {ratio:.6g} is not a power of two up to 2**32")
    return (k, 0) if unit_a > unit_b else (0, k)


def _codes(fmt: InputFormat) -> InputFormat:
    """The format a pool / flatten carries for a tensor of ``fmt`` (bipolar: its 0/1 codes)."""
    return InputFormat.int(1, signed=False) if fmt.kind == "bipolar" else fmt


class QuantConv(nn.Module):
    """A convolution (1-D or 2-D) whose weights pass through ``quantizer``; no bias (batchnorm
    follows).

    The latent weight is the ``(out, in * prod(kernel))`` matrix (torch order ``(c, *k)``), so
    every weight quantizer sees the same 2-D shape as in a dense layer.
    """

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int,
                 quantizer: Callable[[tuple], WeightQuantizer], stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.dims, self.c_in, self.c_out = int(dims), int(c_in), int(c_out)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
        shape = (self.c_out, self.c_in * self.kernel ** self.dims)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.quantizer = quantizer(shape)
        self.quantizer.init_(self.weight)

    def forward(self, h: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        w = self.quantizer(self.weight).view(self.c_out, self.c_in, *(self.kernel,) * self.dims)
        if self.padding:
            h = F.pad(h, (self.padding,) * (2 * self.dims), value=pad_value)
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(h, w, stride=self.stride)

    def integer(self, fmt: InputFormat, in_shape: tuple, pad_value: int, name: str,
                source: str) -> tuple[Conv, float]:
        """Return the :class:`~bitfab.conv.Conv` (no output stage yet) and ``alpha``."""
        w_int, alpha, enc = self.quantizer.integer(self.weight)
        w = np.moveaxis(w_int.reshape(self.c_out, self.c_in, *(self.kernel,) * self.dims), 1, -1)
        conv = Conv(w, enc, fmt, in_shape, self.stride, self.padding,
                    None if fmt.kind != "bipolar" and pad_value == 0 else pad_value,
                    name=name, source=source)
        return conv, alpha


@dataclass(frozen=True)
class _Op:
    """One step of a network: ``conv`` (+ batchnorm + activation), ``pool`` (max 2),
    ``add`` (+ batchnorm + activation), ``gap`` (global average), ``flatten``."""

    kind: str
    name: str
    source: str
    skip: str = ""
    index: int = -1  # the QuantConv (conv) and the batchnorm (conv, add)
    bn: int = -1


class QuantConvNet(QuantizedLayers, nn.Module):
    """A convolutional network with quantized weights and activations.

    Parameters
    ----------
    arch : ``"cnn"`` or ``"resnet"``
        ``cnn`` (2-D): per width ``conv 3x3 -> bn -> act -> maxpool 2``, flatten, dense.
        ``resnet`` (1-D or 2-D, by ``in_shape``): a stem conv (k5 / 3x3) of ``widths[0]``
        channels, one residual block per width (the first at stride 1, the others at stride 2
        with a 1x1 strided shortcut conv), global average pooling, dense.
    in_shape : ``(L, C)`` or ``(H, W, C)``
    widths : sequence of int
    n_out : int
    weight_quant : callable ``shape -> WeightQuantizer``
    act_bits : int or None
        1 (bipolar; cnn only), 2..8 (unsigned levels), ``None`` (ReLU: the float twin).
    input_format : InputFormat
    input_scale : float
    """

    def __init__(self, arch: str, in_shape: Sequence[int], widths: Sequence[int], n_out: int,
                 weight_quant: Callable[[tuple], WeightQuantizer], act_bits: int | None,
                 input_format: InputFormat, input_scale: float):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        widths = tuple(int(w) for w in widths)
        dims = len(in_shape) - 1
        if arch not in ARCHES:
            raise BitfabError(f"arch must be one of {ARCHES}, not {arch!r}")
        if dims not in (1, 2):
            raise BitfabError(f"inputs must be (L, C) or (H, W, C) images, not {in_shape}")
        if arch == "cnn" and dims != 2:
            raise BitfabError(f"the cnn recipes are 2-D networks; inputs of shape {in_shape} "
                              f"are 1-D signals (use a resnet recipe)")
        if arch == "resnet" and act_bits == 1:
            raise BitfabError("a resnet adds activation codes, which bipolar (1-bit) "
                              "activations do not have: give act_bits 2..8")
        if not widths or min(widths) < 1 or n_out < 1:
            raise BitfabError(f"widths and classes must be positive, not {widths}, {n_out}")
        self.arch, self.in_shape, self.widths, self.dims = arch, in_shape, widths, dims
        self.input_format, self.input_scale = input_format, float(input_scale)
        self.act_bits = act_bits
        self.act = make_activation(act_bits)
        self._wq = weight_quant
        self.sizes = [math.prod(in_shape), *widths, int(n_out)]
        self.layers = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.ops: list[_Op] = []
        self._spatial = list(in_shape[:-1])
        self._channels = in_shape[-1]
        if arch == "cnn":
            cur = "input"
            for i, c in enumerate(widths):
                cur = self._conv(f"conv{i}", cur, c, 3, 1, 1)
                if min(self._spatial) < 2:
                    raise BitfabError(f"{in_shape[:-1]} images are too small for "
                                      f"{len(widths)} conv-pool stages")
                self.ops.append(_Op("pool", f"pool{i}", cur))
                self._spatial = [s // 2 for s in self._spatial]
                cur = f"pool{i}"
            self.ops.append(_Op("flatten", "flatten", cur))
            n_feat = math.prod(self._spatial) * self._channels
        else:
            cur = self._conv("stem", "input", widths[0], 5 if dims == 1 else 3, 1,
                             2 if dims == 1 else 1)
            for i, c in enumerate(widths):
                stride = 1 if i == 0 else 2
                block_in, c_in, spatial = cur, self._channels, list(self._spatial)
                a = self._conv(f"b{i}a", block_in, c, 3, stride, 1)
                b = self._conv(f"b{i}b", a, c, 3, 1, 1)
                out_spatial = self._spatial
                skip = block_in
                if stride != 1 or c_in != c:
                    self._spatial, self._channels = spatial, c_in
                    skip = self._conv(f"b{i}s", block_in, c, 1, stride, 0)
                    if self._spatial != out_spatial:
                        raise BitfabError(f"block {i}: shortcut and branch shapes differ")
                self.bns.append(nn.BatchNorm1d(c) if dims == 1 else nn.BatchNorm2d(c))
                self.ops.append(_Op("add", f"b{i}", b, skip, bn=len(self.bns) - 1))
                cur = f"b{i}"
            self.ops.append(_Op("gap", "gap", cur))
            self.ops.append(_Op("flatten", "flatten", "gap"))  # a 1-pixel image -> a vector
            n_feat = self._channels
        self.layers.append(QuantDense(n_feat, int(n_out), weight_quant((int(n_out), n_feat)),
                                      bias=True))
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def _conv(self, name: str, source: str, c_out: int, k: int, stride: int, pad: int) -> str:
        self.layers.append(QuantConv(self.dims, self._channels, c_out, k, self._wq, stride, pad))
        self.bns.append(nn.BatchNorm1d(c_out) if self.dims == 1 else nn.BatchNorm2d(c_out))
        self.ops.append(_Op("conv", name, source, index=len(self.layers) - 1,
                            bn=len(self.bns) - 1))
        self._spatial = [(s + 2 * pad - k) // stride + 1 for s in self._spatial]
        if min(self._spatial) < 1:
            raise BitfabError(f"{self.in_shape[:-1]} inputs are too small for the network "
                              f"(layer {name} has an empty output)")
        self._channels = c_out
        return name

    @property
    def is_float(self) -> bool:
        return isinstance(self.layers[0].quantizer, FloatWeight)

    def _pad(self, source: str) -> float:
        """The real value read outside the image: 0, or -1 after a bipolar activation."""
        return -1.0 if source != "input" and self.act_bits == 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: float logits. Eval (quantized recipes): the last layer's exact integer
        accumulators (float64), from :meth:`integer_forward`."""
        if not self.training and not self.is_float:
            return self.integer_forward(x, keep_all=False)[0][-1]
        return self.float_forward(x)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized float network (batchnorm per its mode); ``x`` flat
        ``(batch, prod(in_shape))`` in stream order or ``(batch, *in_shape)``."""
        h = x.to(torch.float32).reshape(len(x), *self.in_shape).movedim(-1, 1) * self.input_scale
        vals = {"input": h}
        for op in self.ops:
            src = vals[op.source]
            if op.kind == "conv":
                h = self.act(self.bns[op.bn](self.layers[op.index](src, self._pad(op.source))))
            elif op.kind == "pool":
                h = (F.max_pool1d if self.dims == 1 else F.max_pool2d)(src, 2)
            elif op.kind == "add":
                h = self.act(self.bns[op.bn](src + vals[op.skip]))
            elif op.kind == "gap":
                h = src.mean(dim=tuple(range(2, 2 + self.dims)))
            else:  # flatten, channels last (the stream order)
                h = src.movedim(1, -1).flatten(1)
            vals[op.name] = h
        last = self.layers[-1]
        out = F.linear(h, last.qweight())
        if self.is_float:
            out = out + last.bias
        else:
            unit = self._last_unit() * last.quantizer.scale(last.weight)
            out = out + ste(last.bias, round_half_up(last.bias.detach() / unit) * unit)
        return out * torch.exp(self.log_scale)

    def _last_unit(self) -> float:
        """Real value of one input unit of the last layer."""
        step = float(self.act.step)
        if self.arch == "resnet":
            return step / math.prod(self._spatial)
        return step

    # --- the integer network ----------------------------------------------------------------------

    def _fold(self, layer, bn_index: int, a: float, channels: int):
        """``layer`` with its batchnorm and activation folded into thresholds."""
        bn = self.bns[bn_index]
        lo, hi = layer.acc_range
        lo = np.broadcast_to(np.asarray(lo, np.int64), (channels,))
        hi = np.broadcast_to(np.asarray(hi, np.int64), (channels,))
        stage = fold_thresholds(a, bn.running_mean.double().numpy(),
                                bn.running_var.double().numpy(), bn.eps,
                                bn.weight.detach().double().numpy(),
                                bn.bias.detach().double().numpy(), self.act.offsets(), lo, hi)
        return layer.replace(output=stage)

    @torch.no_grad()
    def integer_layers(self) -> list:
        """Return the exported layers (a sequence with skip edges, every layer named)."""
        if self.is_float:
            raise BitfabError("the float recipe has no integer form: it is not exportable")
        act_fmt, step = self.act.out_format(), float(self.act.step)
        # tensor name -> (format as read, shape, real value of one unit)
        info = {"input": (self.input_format, self.in_shape, self.input_scale)}
        out, prev = [], "input"
        for op in self.ops:
            fmt, shape, unit = info[op.source]
            source = "" if op.source == prev else op.source
            if op.kind == "conv":
                pad = -1 if fmt.kind == "bipolar" else 0
                layer, alpha = self.layers[op.index].integer(fmt, shape, pad, op.name, source)
                layer = self._fold(layer, op.bn, unit * alpha, layer.out_channels)
                info[op.name] = (act_fmt, layer.out_shape, step)
            elif op.kind == "pool":
                layer = MaxPool(_codes(fmt), shape, 2, name=op.name, source=source)
                info[op.name] = (fmt, layer.out_shape, unit)
            elif op.kind == "add":
                fmt_b, shape_b, unit_b = info[op.skip]
                shift, skip_shift = align_shifts(unit, unit_b)
                layer = Add(fmt, fmt_b, shape, op.skip, shift, skip_shift, name=op.name,
                            source=source)
                layer = self._fold(layer, op.bn, min(unit, unit_b), shape[-1])
                info[op.name] = (act_fmt, shape, step)
            elif op.kind == "gap":
                layer = AvgPool(fmt, shape, shape[:-1], name=op.name, source=source)
                info[op.name] = (layer.out_format, layer.out_shape, unit / layer.window)
            else:
                layer = Flatten(_codes(fmt), shape, name=op.name, source=source)
                info[op.name] = (fmt, layer.out_shape, unit)
            out.append(layer)
            prev = op.name
        fmt, _, unit = info[prev]
        last = self.layers[-1]
        w_int, alpha, enc = last.quantizer.integer(last.weight)
        bias = round_half_up(last.bias.detach().double() / (unit * alpha)).numpy()
        out.append(Dense(w_int, enc, fmt, NoOutput(), bias.astype(np.int64), name="fc"))
        return out

    def export(self, name: str = "model", metadata: dict | None = None,
               extras: dict | None = None) -> IntegerModel:
        """Return the :class:`~bitfab.model.IntegerModel` of this network."""
        return IntegerModel(tuple(self.integer_layers()), input_scale=self.input_scale,
                            metadata=metadata or {}, extras=extras or {}, name=name)

    @torch.no_grad()
    def integer_forward(self, x, model: IntegerModel | None = None, keep_all: bool = True):
        """Run the exported network (``model``, default :meth:`export`) with
        :func:`integer_forward`; return ``(accumulators, outputs)`` per layer."""
        return integer_forward(self.export() if model is None else model, x, keep_all=keep_all)


# --- the torch integer forward of an exported model -----------------------------------------------


def _per_channel(arr: np.ndarray, ndim: int) -> torch.Tensor:
    """``(C, ...)`` parameters shaped to broadcast over channels-first tensors of ``ndim``."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.reshape(t.shape[:1] + (1,) * (ndim - 2) + t.shape[1:]) if ndim > 2 else t


def _stage(output, acc: torch.Tensor) -> torch.Tensor:
    """The output stage of a layer on channels-first accumulators."""
    if isinstance(output, NoOutput):
        return acc
    nd = acc.ndim
    if isinstance(output, Requant):
        mult = _per_channel(output.multiplier.astype(np.int64), nd)
        if nd == 2:
            mult = mult[None, :]
        prod = acc.to(torch.int64) * mult
        return torch.clamp((prod + output.offset) >> output.shift, output.lo,
                           output.hi).to(torch.float64)
    # a threshold stage counts the thresholds passed, in any order: sorted per channel, the
    # count is a binary search (``acc >= t``: those at or below ``acc``; ``acc <= t``: those
    # at or above it)
    t = torch.from_numpy(np.sort(output.thresholds, axis=1).astype(np.float64))
    flat = acc.movedim(1, 0).reshape(acc.shape[1], -1).contiguous()
    below = torch.searchsorted(t, flat, right=True)  # #{t <= acc}
    above = t.shape[1] - torch.searchsorted(t, flat, right=False)  # #{t >= acc}
    up = torch.from_numpy(output.direction > 0)[:, None]
    v = torch.where(up, below, above).to(torch.float64)
    return v.reshape((acc.shape[1], acc.shape[0]) + acc.shape[2:]).movedim(0, 1)


def _check_exact(bound: float, i: int) -> None:
    if bound >= _EXACT:
        raise BitfabError(f"layer {i}: accumulators can reach {bound:.3g}, beyond the exact "
                          f"float64 range")


def _layer(layer, i: int, reads: list) -> torch.Tensor:
    """Accumulators (channels first) of one layer."""
    v = reads[0]
    if layer.kind == "dense":
        w = torch.from_numpy(layer.weights.astype(np.float64))
        _check_exact(float(v.abs().max()) * float(w.abs().sum(1).max())
                     + float(np.abs(layer.bias).max()), i)
        return v @ w.T + torch.from_numpy(layer.bias.astype(np.float64))
    if layer.kind == "conv":
        w = torch.from_numpy(np.ascontiguousarray(
            np.moveaxis(layer.weights, -1, 1).astype(np.float64)))
        _check_exact(float(v.abs().max()) * float(w.abs().flatten(1).sum(1).max())
                     + float(np.abs(layer.bias).max()), i)
        pads = tuple(p for pair in reversed(layer.padding) for p in pair)
        if any(pads):
            v = F.pad(v, pads, value=float(layer.pad_value))
        conv = F.conv1d if layer.dims == 1 else F.conv2d
        return conv(v, w, torch.from_numpy(layer.bias.astype(np.float64)),
                    stride=layer.stride, groups=layer.groups)
    if layer.kind == "maxpool":
        pool = F.max_pool1d if layer.dims == 1 else F.max_pool2d
        return pool(v, layer.kernel, layer.stride)
    if layer.kind == "avgpool":  # the exact sum: a depthwise convolution with ones
        c = v.shape[1]
        ones = torch.ones((c, 1) + tuple(layer.kernel), dtype=torch.float64)
        conv = F.conv1d if layer.dims == 1 else F.conv2d
        return conv(v, ones, stride=layer.stride, groups=c)
    if layer.kind == "flatten":
        return v.movedim(1, -1).flatten(1)
    if layer.kind == "add":
        return v * float(1 << layer.shift) + reads[1] * float(1 << layer.skip_shift)
    raise BitfabError(f"layer {i}: kind {layer.kind!r} has no torch integer forward")


def _golden_layout(t: torch.Tensor) -> np.ndarray:
    """Channels-first images ``(batch, C, *spatial)`` as ``(batch, pixels, C)``; vectors as is."""
    if t.ndim > 2:
        t = t.flatten(2).transpose(1, 2)
    return t.numpy()


@torch.no_grad()
def integer_forward(model: IntegerModel, x, chunk: int = 512, keep_all: bool = True
                    ) -> tuple[list, list]:
    """Execute ``model`` (dense and image kinds) with torch; return ``(accumulators, outputs)``
    per layer in the golden model's layout (images ``(batch, pixels, channels)``), as float64
    tensors of integers.

    ``x`` holds integer inputs, flat ``(batch, prod(in_shape))`` in stream order or
    ``(batch, *in_shape)``. Images run through in chunks of ``chunk``; with ``keep_all`` false
    only the last layer's results are kept (large test sets).
    """
    arr = np.asarray(x)
    shape = tuple(model.in_shape)
    flat = math.prod(shape)
    if arr.ndim == 2 and arr.shape[1] == flat and len(shape) > 1:
        arr = arr.reshape((len(arr),) + shape)
    if arr.shape[1:] != shape:
        want = f"(batch, {flat}) or (batch, {', '.join(map(str, shape))})" if len(shape) > 1 \
            else f"(batch, {flat})"
        raise BitfabError(f"inputs must have shape {want}, not {arr.shape}")
    n = len(model.layers)
    accs: list[list] = [[] for _ in range(n)]
    outs: list[list] = [[] for _ in range(n)]
    for start in range(0, max(len(arr), 1), chunk):
        v0 = torch.from_numpy(arr[start:start + chunk].astype(np.float64))
        if v0.ndim > 2:
            v0 = v0.movedim(-1, 1)
        results: list = []
        for i, layer in enumerate(model.layers):
            reads = []
            for k, src in enumerate(model.edges[i]):
                v = v0 if src < 0 else results[src]
                if src >= 0 and k == 0 and layer.input.kind == "bipolar":
                    v = 2 * v - 1  # the 0/1 output codes of a threshold stage, as -1/+1
                reads.append(v)
            acc = _layer(layer, i, reads)
            out = _stage(layer.output, acc)
            results.append(out)
            if keep_all or i == n - 1:
                accs[i].append(_golden_layout(acc))
                outs[i].append(_golden_layout(out))
    cat = [torch.from_numpy(np.concatenate(a)) if a else None for a in accs]
    return cat, [torch.from_numpy(np.concatenate(o)) if o else None for o in outs]
