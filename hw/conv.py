"""The image kinds in hardware: conv, maxpool, avgpool, flatten and add behind the layer contract.

Image streams (:mod:`bitfab.conv`): one pixel's ``C`` channel codes per transfer, row-major,
``last`` on the final pixel of each image (:func:`pixel_layout`). Every component here takes and
gives such streams (a flatten gives one vector per image; an add of vectors takes vectors).

A convolution is three stream stages and the existing dense datapath:

1. :class:`Padder` turns the ``H x W`` pixel stream into the padded ``Hp x Wp`` one, inserting
   ``pad_value`` pixels (it emits a pad pixel without reading an input, so the bottom and right
   padding of an image never waits for the next image);
2. :class:`SlidingWindow` keeps ``Kh - 1`` rows of the padded image in one block-RAM line buffer
   (``Wp`` words of ``(Kh - 1) * C`` codes) and a ``Kh x Kw`` window register, and gives the
   window of every output position (stride applied) as one vector of ``Kh * Kw * C`` codes in
   ``(ky, kx, c)`` order;
3. the dense layer whose weight matrix is :attr:`bitfab.conv.Conv.matrix` (grouped and
   depthwise convolutions: the block-diagonal matrix over the whole window, whose zeros cost
   nothing unrolled), built by :mod:`bitfab.hw.layer` unrolled or folded;
4. :class:`Framer` sets ``last`` on every ``Ho * Wo``-th output.

An avgpool is the depthwise convolution with all-ones weights (a sum, then its output stage),
except a global one (the window is the whole image): :class:`GlobalPoolLayer` adds each pixel
into one accumulator per channel, with no window register or line buffer; a maxpool is the
same window feeding a comparator tree. A flatten collects an image's pixels into one vector; an
add joins two streams (its second input port is ``skip``).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.conv import AvgPool, Conv
from bitfab.encodings import Binary, Lut, Ternary
from bitfab.model import Dense

from . import kinds
from .config import ConfigError, LayerConfig
from .datapath import output_stage

__all__ = ["line_buffer", "pixel_layout", "stream_layout", "Padder", "SlidingWindow", "Framer",
           "MaxReduce", "TileMax", "ConvConfig", "ConvLayer", "MaxPoolLayer", "FlattenLayer",
           "AddLayer", "GlobalPoolLayer", "Fork", "StreamFifo", "equivalent_dense",
           "is_global_pool", "is_tiled_maxpool",
           "out_counts", "image_clocks", "balanced_configs"]


def pixel_layout(bits: int, channels: int) -> data.StructLayout:
    """Payload of one pixel: ``data`` (``channels`` codes of ``bits``) then ``last``."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(bits), channels),
                              "last": unsigned(1)})


def stream_layout(fmt) -> data.Layout:
    """The payload layout of a :class:`~bitfab.formats.StreamFormat`: a pixel (framed) or an
    element array (one vector per transfer, as the dense layers take)."""
    if fmt.framed:
        return pixel_layout(fmt.element.bits, fmt.count)
    return data.ArrayLayout(unsigned(fmt.element.bits), fmt.count)


def _codes(bits: int, n: int) -> stream.Signature:
    return stream.Signature(data.ArrayLayout(unsigned(bits), n))


def _member(value, flags: list[int]):
    """Whether ``value`` is a position ``p`` with ``flags[p]`` set, as comparisons (a range
    test where the positions are contiguous): a constant lookup table would be an ``always @*``
    case statement, which Icarus Verilog leaves X until its index first changes."""
    positions = [p for p, f in enumerate(flags) if f]
    if len(positions) == len(flags):
        return Const(1, 1)
    lo, hi = positions[0], positions[-1]
    if positions == list(range(lo, hi + 1)):
        return (value >= lo) & (value <= hi)
    return Cat(*(value == p for p in positions)).any()


def _counter(n: int, name: str) -> Signal:
    """A counter of ``0 .. n-1``, at least one bit wide: a zero-width signal (``n = 1``, e.g.
    the row of a 1-D image) reads as X in Icarus Verilog."""
    return Signal(range(max(n, 2)), name=name)


def _owned(component):
    """Mark a sub-component made in its parent's constructor as used: the parent elaborates
    it, and a parent that is never elaborated warns for both."""
    component._MustUse__silence = True
    return component


def _silenced(component, message: str) -> ConfigError:
    component._MustUse__silence = True
    return ConfigError(message)


class Padder(wiring.Component):
    """Pad an ``H x W`` pixel stream to ``(H + pt + pb) x (W + pl + pr)`` with ``pad_code``.

    Combinational (latency 0). An interior position passes the input pixel (``last`` dropped:
    the frame is counted), a padding position offers the pad pixel without reading the input.

    Parameters
    ----------
    spatial : ``(H, W)`` (a 1-D image is ``(1, L)``)
    padding : ``((pt, pb), (pl, pr))``
    bits, channels : int
    pad_code : int
        The code of the value read outside the image.
    """

    def __init__(self, spatial, padding, bits: int, channels: int, pad_code: int):
        self._spatial, self._padding = tuple(spatial), tuple(padding)
        self._bits, self._channels, self._pad = bits, channels, pad_code
        super().__init__({"i": In(stream.Signature(pixel_layout(bits, channels))),
                          "o": Out(_codes(bits, channels))})

    @property
    def padded(self) -> tuple[int, int]:
        """``(Hp, Wp)``."""
        (h, w), ((pt, pb), (pl, pr)) = self._spatial, self._padding
        return h + pt + pb, w + pl + pr

    def elaborate(self, platform):
        m = Module()
        (h, w), ((pt, _), (pl, _)) = self._spatial, self._padding
        hp, wp = self.padded
        if (hp, wp) == (h, w):
            m.d.comb += [self.o.payload.eq(self.i.payload.data), self.o.valid.eq(self.i.valid),
                         self.i.ready.eq(self.o.ready)]
            return m
        py, px = _counter(hp, "py"), _counter(wp, "px")
        inside = Signal(name="inside")
        m.d.comb += inside.eq((py >= pt) & (py < pt + h) & (px >= pl) & (px < pl + w))
        word = sum(self._pad << (k * self._bits) for k in range(self._channels))
        pad = Const(word, self._bits * self._channels)
        m.d.comb += [
            self.o.valid.eq(Mux(inside, self.i.valid, 1)),
            self.o.payload.eq(Mux(inside, self.i.payload.data.as_value(), pad)),
            self.i.ready.eq(inside & self.o.ready),
        ]
        with m.If(self.o.valid & self.o.ready):
            with m.If(px == wp - 1):
                m.d.sync += [px.eq(0), py.eq(Mux(py == hp - 1, 0, py + 1))]
            with m.Else():
                m.d.sync += px.eq(px + 1)
        return m


class SlidingWindow(wiring.Component):
    """The ``Kh x Kw`` windows of a padded ``Hp x Wp`` pixel stream at a stride.

    The line buffer is one :class:`amaranth.lib.memory.Memory` of ``Wp`` words, each the
    ``Kh - 1`` pixels above the current row at that column (none for ``Kh = 1``), read through a
    synchronous port (block RAM). An accepted pixel reads its column (stage 1); then its column
    is shifted into the window register, the column with the pixel on top of it is written
    back, and where the window ends an output position (``y >= Kh - 1``, ``x >= Kw - 1`` and on
    the stride) the window becomes the output. The window register shifts only while the output
    register is empty or being read, so a stalled consumer holds everything.

    ``latency`` 2 (pixel transfer to ``o.valid``); one pixel per clock. A one-row kernel
    (every 1-D convolution) has no line buffer to read: the pixel shifts into the window
    register as it is taken (``latency`` 1, no stage-1 copy of the pixel).

    Parameters
    ----------
    padded : ``(Hp, Wp)``
    kernel, stride : ``(Kh, Kw)``, ``(sy, sx)``
    bits, channels : int
    """

    def __init__(self, padded, kernel, stride, bits: int, channels: int):
        self._padded, self._kernel, self._stride = tuple(padded), tuple(kernel), tuple(stride)
        self._bits, self._channels = bits, channels
        kh, kw = self._kernel
        super().__init__({"i": In(_codes(bits, channels)),
                          "o": Out(_codes(bits, kh * kw * channels))})

    @property
    def latency(self) -> int:
        """2: the line-buffer read, then the window register; 1 for a one-row kernel (the
        window register only)."""
        return 1 if self._kernel[0] == 1 else 2

    @property
    def line_buffer_bits(self) -> int:
        """Bits of the line buffer: ``Wp * (Kh - 1) * C * bits``."""
        (_, wp), (kh, _) = self._padded, self._kernel
        return wp * (kh - 1) * self._channels * self._bits

    def _emits(self, size: int, k: int, s: int) -> list[int]:
        out = (size - k) // s + 1
        return [int(p >= k - 1 and (p - k + 1) % s == 0 and (p - k + 1) // s < out)
                for p in range(size)]

    def elaborate(self, platform):
        m = Module()
        (hp, wp), (kh, kw), (sy, sx) = self._padded, self._kernel, self._stride
        pix = self._bits * self._channels
        y, x = _counter(hp, "y"), _counter(wp, "x")
        row_ok = _member(y, self._emits(hp, kh, sy))
        col_ok = _member(x, self._emits(wp, kw, sx))

        o_valid = Signal(name="o_valid")
        win = [[Signal(pix, name=f"win{r}_{c}") for c in range(kw)] for r in range(kh)]
        free = ~o_valid | self.o.ready
        take = self.i.valid & self.i.ready
        m.d.comb += [self.o.valid.eq(o_valid),
                     self.o.payload.eq(Cat(*(w for row in win for w in row)))]
        if kh == 1:  # no line buffer: the pixel shifts in as it is taken
            m.d.comb += self.i.ready.eq(free)
            with m.If(take):
                m.d.sync += [win[0][c].eq(win[0][c + 1]) for c in range(kw - 1)]
                m.d.sync += [win[0][kw - 1].eq(self.i.payload.as_value()),
                             o_valid.eq(row_ok & col_ok)]
                with m.If(x == wp - 1):
                    m.d.sync += [x.eq(0), y.eq(Mux(y == hp - 1, 0, y + 1))]
                with m.Else():
                    m.d.sync += x.eq(x + 1)
            with m.Elif(self.o.valid & self.o.ready):
                m.d.sync += o_valid.eq(0)
            return m

        s1_valid, s1_emit = Signal(name="s1_valid"), Signal(name="s1_emit")
        s1_pix = Signal(pix, name="s1_pix")
        s1_x = _counter(wp, "s1_x")
        adv1 = s1_valid & free
        m.d.comb += self.i.ready.eq(~s1_valid | free)
        with m.If(take):
            m.d.sync += [s1_valid.eq(1), s1_pix.eq(self.i.payload.as_value()), s1_x.eq(x),
                         s1_emit.eq(row_ok & col_ok)]
            with m.If(x == wp - 1):
                m.d.sync += [x.eq(0), y.eq(Mux(y == hp - 1, 0, y + 1))]
            with m.Else():
                m.d.sync += x.eq(x + 1)
        with m.Elif(adv1):
            m.d.sync += s1_valid.eq(0)

        # word[x] = rows y-1, y-2, ..., y-Kh+1 at column x (slot 0 = the row just above)
        mem = memory.Memory(shape=unsigned((kh - 1) * pix), depth=wp, init=[])
        m.submodules.line_buffer = mem
        wr = mem.write_port()
        # with one column the next pixel reads the word written in the same clock
        rd = mem.read_port(transparent_for=(wr,) if wp == 1 else ())
        m.d.comb += [rd.addr.eq(x), rd.en.eq(take),
                     wr.addr.eq(s1_x), wr.en.eq(adv1)]
        slots = [rd.data[k * pix:(k + 1) * pix] for k in range(kh - 1)]
        m.d.comb += wr.data.eq(Cat(s1_pix, *slots[:kh - 2]))
        column = list(reversed(slots)) + [s1_pix]  # top (ky = 0) to bottom
        with m.If(adv1):
            for r in range(kh):
                for c in range(kw - 1):
                    m.d.sync += win[r][c].eq(win[r][c + 1])
                m.d.sync += win[r][kw - 1].eq(column[r])
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(adv1):
            m.d.sync += o_valid.eq(s1_emit)
        return m


class Framer(wiring.Component):
    """Set ``last`` on every ``frame``-th transfer of a stream of code vectors (combinational)."""

    def __init__(self, bits: int, channels: int, frame: int):
        self._frame = frame
        super().__init__({"i": In(_codes(bits, channels)),
                          "o": Out(stream.Signature(pixel_layout(bits, channels)))})

    def elaborate(self, platform):
        m = Module()
        n = _counter(self._frame, "n")
        m.d.comb += [self.o.payload.data.eq(self.i.payload), self.o.valid.eq(self.i.valid),
                     self.i.ready.eq(self.o.ready), self.o.payload.last.eq(n == self._frame - 1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += n.eq(Mux(n == self._frame - 1, 0, n + 1))
        return m


class MaxReduce(wiring.Component):
    """The per-channel maximum of a window vector (``window`` pixels of ``channels`` codes),
    registered once (latency 1); values compared as signed where ``signed``."""

    def __init__(self, bits: int, channels: int, window: int, signed: bool):
        self._bits, self._channels, self._window, self._signed = bits, channels, window, signed
        super().__init__({"i": In(_codes(bits, window * channels)),
                          "o": Out(_codes(bits, channels))})

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        o_valid = Signal(name="o_valid")
        out = Signal(self._bits * self._channels, name="out")
        result = []
        for c in range(self._channels):
            vals = [self.i.payload[p * self._channels + c] for p in range(self._window)]
            vals = [v.as_signed() if self._signed else v for v in vals]
            while len(vals) > 1:
                nxt = [Mux(a >= b, a, b) for a, b in zip(vals[::2], vals[1::2])]
                vals = nxt + ([vals[-1]] if len(vals) % 2 else [])
            result.append(vals[0])
        m.d.comb += self.i.ready.eq(en)
        with m.If(en):
            m.d.sync += [o_valid.eq(self.i.valid),
                         out.eq(Cat(*(v.as_unsigned()[:self._bits] for v in result)))]
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(out)]
        return m


# --- configurations -------------------------------------------------------------------------------


def _zero_encoding(enc):
    """An encoding of the same datapath that also holds 0 (the block-diagonal matrix of a grouped
    convolution): binary -> ternary, zero-free pow2 -> pow2, a lut without 0 gains it."""
    if enc.has_zero:
        return enc
    if enc.kind == "binary":
        return Ternary()
    if enc.kind == "pow2":
        return replace(enc, zero=True)
    if len(enc.dictionary) >= 256:
        raise ConfigError("a grouped conv with a 256-entry lut dictionary without 0 has no "
                          "hardware (the block-diagonal window matrix needs a 0 entry)")
    return Lut(enc.dictionary + (0,))


def equivalent_dense(conv: Conv) -> Dense:
    """Return the dense layer each output pixel of ``conv`` applies to its whole window
    (``prod(kernel) * C_in`` inputs in ``(ky, kx, c)`` order): :attr:`Conv.matrix` for one
    group, the block-diagonal matrix of the groups otherwise."""
    if conv.groups == 1:
        w, enc = conv.matrix, conv.encoding
    else:
        og, cg = conv.out_channels // conv.groups, conv.group_channels
        k = math.prod(conv.kernel)
        full = np.zeros((conv.out_channels, k, conv.in_channels), dtype=np.int64)
        per = conv.weights.reshape(conv.out_channels, k, cg)
        for o in range(conv.out_channels):
            g = o // og
            full[o, :, g * cg:(g + 1) * cg] = per[o]
        w, enc = full.reshape(conv.out_channels, -1), _zero_encoding(conv.encoding)
    return Dense(w, enc, conv.input, conv.output, conv.bias, conv.acc_bits,
                 name=conv.name or "conv")


def avgpool_conv(pool: AvgPool) -> Conv:
    """Return the depthwise convolution with all-ones weights that ``pool`` computes."""
    c = pool.in_shape[-1]
    w = np.ones((c,) + tuple(pool.kernel) + (1,), dtype=np.int64)
    return Conv(w, Binary(), pool.input, pool.in_shape, pool.stride, 0, None, c, pool.output,
                None, pool.acc_bits, name=pool.name or "avgpool")


def is_global_pool(layer) -> bool:
    """Whether ``layer`` is an avgpool whose window is its whole image (one output pixel): it
    needs no window, only an accumulator per channel (:class:`GlobalPoolLayer`)."""
    return layer.kind == "avgpool" and tuple(layer.kernel) == tuple(layer.in_shape[:-1])


@dataclass(frozen=True, eq=False)
class ConvConfig:
    """How an image layer becomes hardware.

    Members
    -------
    layer : Conv | AvgPool | MaxPool | Flatten | Add
        The model's layer.
    dense : LayerConfig or None
        The dense datapath of each window (conv and avgpool): unrolled or folded; None for the
        other kinds and a global avgpool (:func:`is_global_pool`).
    pipeline : int
    """

    layer: object
    dense: LayerConfig | None = None
    pipeline: int = 0

    def __post_init__(self):
        kind = getattr(self.layer, "kind", None)
        if kind not in _BUILD:
            raise ConfigError(f"layer must be a conv, maxpool, avgpool, flatten or add layer, "
                              f"not {type(self.layer).__name__}")
        windowed = kind == "conv" or (kind == "avgpool" and not is_global_pool(self.layer))
        if windowed != isinstance(self.dense, LayerConfig):
            need = "needs a" if windowed else "has no"
            raise ConfigError(f"a {kind} layer {need} dense configuration, "
                              f"not {type(self.dense).__name__}")

    @property
    def architecture(self) -> str:
        return self.dense.architecture if self.dense is not None else "unrolled"

    @property
    def pe(self):
        return self.dense.pe if self.dense is not None else None

    @property
    def simd(self):
        return self.dense.simd if self.dense is not None else None

    @cached_property
    def conv(self) -> Conv | None:
        """The convolution computed (an avgpool's all-ones depthwise one)."""
        layer = self.layer
        return avgpool_conv(layer) if layer.kind == "avgpool" else \
            layer if layer.kind == "conv" else None

    def to_json(self) -> dict:
        layer = self.layer
        out = {"kind": layer.kind, "architecture": self.architecture, "pe": self.pe,
               "simd": self.simd, "pipeline": self.pipeline, "datapath": layer.datapath,
               "in_features": layer.in_features, "out_features": layer.out_features,
               "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape),
               "input": layer.input.to_json(), "name": layer.name}
        conv = self.conv
        if conv is not None and self.dense is not None:
            _, wp = _padded(conv)
            kh = conv.kernel[0] if conv.dims == 2 else 1
            out.update(kernel=list(conv.kernel), stride=list(conv.stride),
                       padding=[list(p) for p in conv.padding], groups=conv.groups,
                       window_inputs=self.dense.in_features,
                       line_buffer_bits=wp * (kh - 1) * conv.in_channels * conv.input.bits,
                       acc_bits=conv.acc_bits, encoding=conv.encoding.to_json())
        return out


def _geometry(layer):
    """``(spatial (H, W), kernel (Kh, Kw), stride, padding ((pt, pb), (pl, pr)))``; a 1-D
    image is one row."""
    shape = layer.in_shape
    kernel, stride = tuple(layer.kernel), tuple(layer.stride)
    padding = tuple(tuple(p) for p in getattr(layer, "padding", ((0, 0),) * len(kernel)))
    if len(shape) == 2:
        return (1, shape[0]), (1,) + kernel, (1,) + stride, ((0, 0),) + padding
    return tuple(shape[:2]), kernel, stride, padding


def line_buffer(config: ConvConfig) -> tuple[int, int]:
    """``(words, bits per word)`` of the line buffer of a conv, avgpool or maxpool layer's
    sliding window (``(Wp, (Kh - 1) * C * bits)``), or of a tiled maxpool's partial maxima
    (``(Wo, C * bits)``, :class:`TileMax`); ``(0, 0)`` for a layer without either or a one-row
    kernel."""
    layer = config.layer
    if layer.kind not in ("conv", "avgpool", "maxpool") or is_global_pool(layer):
        return 0, 0
    (_, w), (kh, kw), _, _ = _geometry(layer)
    if kh == 1:
        return 0, 0
    if is_tiled_maxpool(layer):  # TileMax: a partial maximum per output column
        return w // kw, layer.in_shape[-1] * layer.input.bits
    _, wp = _padded(layer)
    return wp, (kh - 1) * layer.in_shape[-1] * layer.input.bits


def _padded(layer) -> tuple[int, int]:
    (h, w), _, _, ((pt, pb), (pl, pr)) = _geometry(layer)
    return h + pt + pb, w + pl + pr


def _configure(layer, fold, pipeline: int, exact: bool) -> ConvConfig:
    if layer.kind in ("conv", "avgpool") and not is_global_pool(layer):
        from .layer import _dense_configure
        conv = layer if layer.kind == "conv" else avgpool_conv(layer)
        dense = _dense_configure(equivalent_dense(conv), fold if layer.kind == "conv"
                                 else None, pipeline, exact)
        return ConvConfig(layer, dense, pipeline)
    return ConvConfig(layer, None, pipeline)  # nothing to fold: no weights


# --- the components -------------------------------------------------------------------------------


class _Image(wiring.Component):
    """A component with the layer contract's ``i`` and ``o`` for ``config.layer``."""

    def __init__(self, config: ConvConfig, extra: dict | None = None):
        if not isinstance(config, ConvConfig):
            raise _silenced(self, f"config must be a ConvConfig, not {type(config).__name__}")
        self._config = config
        layer = config.layer
        super().__init__({"i": In(stream.Signature(stream_layout(layer.in_stream))),
                          **(extra or {}),
                          "o": Out(stream.Signature(stream_layout(layer.out_stream)))})

    @property
    def config(self) -> ConvConfig:
        return self._config

    @property
    def layer(self):
        return self._config.layer

    def _chain(self, **stages) -> Module:
        """A module of ``stages`` (name -> component), each one's ``o`` into the next one's
        ``i``, from this component's ``i`` to its ``o``."""
        m = Module()
        src = wiring.flipped(self.i)
        for name, stage in stages.items():
            m.submodules[name] = stage
            wiring.connect(m, src, stage.i)
            src = stage.o
        wiring.connect(m, src, wiring.flipped(self.o))
        return m


class ConvLayer(_Image):
    """A conv (or avgpool) layer: :class:`Padder`, :class:`SlidingWindow`, the dense datapath of
    :func:`equivalent_dense` and :class:`Framer` (module docstring).

    Parameters
    ----------
    config : ConvConfig
        Of a Conv or AvgPool layer.
    """

    def __init__(self, config: ConvConfig):
        super().__init__(config)
        from .layer import FoldedDense, build_layer
        conv = config.conv
        spatial, kernel, stride, padding = _geometry(conv)
        fmt = conv.input
        bits, c = fmt.bits, conv.in_channels
        pad = int(fmt.to_codes(np.array([conv.pad_value]))[0])
        self._pad = _owned(Padder(spatial, padding, bits, c, pad))
        self._window = _owned(SlidingWindow(self._pad.padded, kernel, stride, bits, c))
        # a folded datapath reads the window register in place: the window holds it until the
        # last fold issues, so the layer keeps one copy of the window, not two
        self._dense = _owned(FoldedDense(config.dense, in_place=True)
                             if config.dense.architecture == "folded"
                             else build_layer(config.dense))
        self._framer = _owned(Framer(conv.out_format.bits, conv.out_channels,
                                     math.prod(conv.out_shape[:-1])))

    @property
    def line_buffer_bits(self) -> int:
        """Bits of the line buffer (:attr:`SlidingWindow.line_buffer_bits`)."""
        return self._window.line_buffer_bits

    @property
    def latency(self) -> int:
        """Clock edges from the pixel that completes a window to its output's ``o.valid``:
        :attr:`SlidingWindow.latency` (2; 1 for a one-row kernel) plus the dense datapath's
        ``latency``; a folded datapath reads the window in place and its latency counts from
        its last fold, ``II_dense - 1`` clocks after the window arrived."""
        dense = self._dense
        folds = dense.initiation_interval - 1 if getattr(dense, "in_place", False) else 0
        return self._window.latency + folds + dense.latency

    @property
    def initiation_interval(self) -> int:
        """Clocks per input pixel at full rate: ``ceil(max(Hp * Wp, Ho * Wo * II_dense) /
        (H * W))`` (the padded pixels take a clock each, a folded window ``II_dense``)."""
        conv = self._config.conv
        hp, wp = self._pad.padded
        outs = math.prod(conv.out_shape[:-1])
        return -(-max(hp * wp, outs * self._dense.initiation_interval)
                 // math.prod(conv.in_shape[:-1]))

    def elaborate(self, platform):
        return self._chain(pad=self._pad, window=self._window, dense=self._dense,
                           framer=self._framer)


class TileMax(wiring.Component):
    """The per-channel maximum of non-overlapping ``Kh x Kw`` tiles (stride = kernel) of an
    ``H x W`` pixel stream, without a window: a running maximum along each tile row, and a
    memory of ``Wo`` partial maxima (one per output column, over the tile rows seen so far;
    block RAM where it is large). A pixel per clock, ``latency`` 2 (the input register, then the
    output register); pixels right of ``Wo * Kw`` or below ``Ho * Kh`` are read and dropped."""

    def __init__(self, spatial, kernel, bits: int, channels: int, signed: bool):
        self._spatial, self._kernel = tuple(spatial), tuple(kernel)
        self._bits, self._channels, self._signed = bits, channels, signed
        super().__init__({"i": In(_codes(bits, channels)), "o": Out(_codes(bits, channels))})

    @property
    def latency(self) -> int:
        """2: the input register, then the output register."""
        return 2

    @property
    def memory_words(self) -> tuple[int, int]:
        """``(Wo, C * bits)`` of the partial-maximum memory; ``(0, 0)`` for a one-row tile."""
        (_, w), (kh, kw) = self._spatial, self._kernel
        return (w // kw, self._channels * self._bits) if kh > 1 else (0, 0)

    def _max(self, a, b) -> list:
        out = []
        for c in range(self._channels):
            x, y = a[c], b[c]
            if self._signed:
                x, y = x.as_signed(), y.as_signed()
            out.append(Mux(x >= y, x, y).as_unsigned()[:self._bits])
        return out

    def elaborate(self, platform):
        m = Module()
        (h, w), (kh, kw) = self._spatial, self._kernel
        ho, wo = h // kh, w // kw
        pix = self._bits * self._channels
        x, y = _counter(w, "x"), _counter(h, "y")
        kx, ky = _counter(kw, "kx"), _counter(kh, "ky")
        ox = _counter(wo, "ox")
        inside = (x < wo * kw) & (y < ho * kh)

        s1_valid = Signal(name="s1_valid")
        s1_pix = Signal(data.ArrayLayout(self._bits, self._channels), name="s1_pix")
        s1_first, s1_end = Signal(name="s1_first"), Signal(name="s1_end")
        s1_top, s1_bottom = Signal(name="s1_top"), Signal(name="s1_bottom")
        s1_ox = _counter(wo, "s1_ox")
        hmax = Signal(data.ArrayLayout(self._bits, self._channels), name="hmax")
        o_valid = Signal(name="o_valid")
        out = Signal(pix, name="out")

        free = ~o_valid | self.o.ready
        adv1 = s1_valid & free
        take = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(~s1_valid | free)
        with m.If(take):
            m.d.sync += [s1_valid.eq(1), s1_pix.eq(self.i.payload), s1_ox.eq(ox),
                         s1_first.eq(kx == 0), s1_end.eq(inside & (kx == kw - 1)),
                         s1_top.eq(ky == 0), s1_bottom.eq(ky == kh - 1)]
            with m.If(x == w - 1):
                m.d.sync += [x.eq(0), kx.eq(0), ox.eq(0)]
                with m.If(y == h - 1):
                    m.d.sync += [y.eq(0), ky.eq(0)]
                with m.Else():
                    m.d.sync += [y.eq(y + 1), ky.eq(Mux(ky == kh - 1, 0, ky + 1))]
            with m.Else():
                m.d.sync += x.eq(x + 1)
                with m.If(kx == kw - 1):
                    m.d.sync += [kx.eq(0), ox.eq(Mux(ox == wo - 1, ox, ox + 1))]
                with m.Else():
                    m.d.sync += kx.eq(kx + 1)
        with m.Elif(adv1):
            m.d.sync += s1_valid.eq(0)

        along = Signal(pix, name="along")  # the running maximum along the tile row
        m.d.comb += along.eq(Mux(s1_first, s1_pix.as_value(),
                                 Cat(*self._max(hmax, s1_pix))))
        if kh > 1:
            mem = memory.Memory(shape=unsigned(pix), depth=wo, init=[])
            m.submodules.partial = mem
            wr = mem.write_port()
            # a one-column image reads, with the next pixel, the word written in the same clock
            rd = mem.read_port(transparent_for=(wr,) if w == 1 else ())
            part = rd.data
            m.d.comb += [rd.addr.eq(ox), rd.en.eq(take), wr.addr.eq(s1_ox)]
            tile = Signal(pix, name="tile")
            m.d.comb += tile.eq(Mux(s1_top, along, Cat(*self._max(_codes_of(part, self),
                                                                    _codes_of(along, self)))))
            m.d.comb += [wr.data.eq(tile), wr.en.eq(adv1 & s1_end & ~s1_bottom)]
        else:
            tile = along
        with m.If(adv1):
            m.d.sync += hmax.eq(along)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(adv1 & s1_end & s1_bottom):
            m.d.sync += [out.eq(tile), o_valid.eq(1)]
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(out)]
        return m


def _codes_of(value, tile: TileMax):
    """View a flat value as the tile's array of channel codes."""
    return data.View(data.ArrayLayout(tile._bits, tile._channels), value)


def is_tiled_maxpool(layer) -> bool:
    """Whether ``layer`` is a maxpool of non-overlapping tiles (stride = kernel): it needs no
    window, only :class:`TileMax`."""
    return layer.kind == "maxpool" and tuple(layer.stride) == tuple(layer.kernel)


class MaxPoolLayer(_Image):
    """A maxpool layer: :class:`Padder` (no padding: it drops ``last``), :class:`SlidingWindow`,
    :class:`MaxReduce`, :class:`Framer` (``latency`` 3, 2 for a one-row kernel);
    non-overlapping tiles (:func:`is_tiled_maxpool`): :class:`TileMax` instead of the window
    and the comparator tree (``latency`` 2). One pixel per clock."""

    def __init__(self, config: ConvConfig):
        super().__init__(config)
        layer = config.layer
        spatial, kernel, stride, padding = _geometry(layer)
        bits, c = layer.input.bits, layer.in_shape[-1]
        self._pad = _owned(Padder(spatial, padding, bits, c, 0))
        if is_tiled_maxpool(layer):
            self._stages = {"tile": _owned(TileMax(spatial, kernel, bits, c,
                                                   layer.input.signed))}
        else:
            self._stages = {
                "window": _owned(SlidingWindow(self._pad.padded, kernel, stride, bits, c)),
                "max": _owned(MaxReduce(bits, c, layer.window, layer.input.signed))}
        self._framer = _owned(Framer(bits, c, math.prod(layer.out_shape[:-1])))

    @property
    def latency(self) -> int:
        """The window's (2, or 1 for a one-row kernel) and the registered comparator tree's (1);
        tiles: 2."""
        if "tile" in self._stages:
            return 2
        return self._stages["window"].latency + 1

    @property
    def initiation_interval(self) -> int:
        """1: a pixel per clock."""
        return 1

    def elaborate(self, platform):
        return self._chain(pad=self._pad, **self._stages, framer=self._framer)


class _OneRegister(_Image):
    """An image layer that takes a pixel per clock and gives its result from one register."""

    @property
    def latency(self) -> int:
        """1: the output register."""
        return 1

    @property
    def initiation_interval(self) -> int:
        """1: a pixel per clock."""
        return 1


class GlobalPoolLayer(_OneRegister):
    """A global avgpool (:func:`is_global_pool`): each pixel's ``C`` values are added into ``C``
    accumulators; after the last pixel of an image they hold its sums, which are the output
    through the output stage (:func:`bitfab.hw.datapath.output_stage`) until it is taken, and
    the next image's first pixel starts them over (it waits for that). ``latency`` 1 (after the
    last pixel), a pixel per clock; no window register, no line buffer (a windowed avgpool would
    hold the whole image) and no output register beside the accumulators."""

    def elaborate(self, platform):
        m = Module()
        layer = self.layer
        fmt = layer.input
        c = layer.in_shape[-1]
        p = math.prod(layer.in_shape[:-1])
        lo, hi = layer.acc_range
        # an avgpool reads int codes (never bipolar): the sums are the codes' values
        shim = types.SimpleNamespace(output=layer.output, input=types.SimpleNamespace(kind="int"),
                                     bias=np.zeros(c, dtype=np.int64),
                                     out_bits=layer.out_format.bits, acc_bits=layer.acc_bits)
        x_data = self.i.payload.data if layer.in_stream.framed else self.i.payload
        n = _counter(p, "n")
        first, at_end = n == 0, n == p - 1
        o_valid = Signal(name="o_valid")
        codes, updates = [], []
        for k in range(c):
            code = x_data[k]
            x = code.as_signed() if fmt.signed else code
            acc = Signal(range(min(lo, 0), max(hi, 0) + 1), name=f"acc{k}")
            s = Signal(range(min(lo, 0), max(hi, 0) + 1), name=f"sum{k}")
            m.d.comb += s.eq(Mux(first, x, acc + x))
            codes.append(output_stage(m, shim, acc, [k], None, f"out{k}"))
            updates.append((acc, s))
        # a pixel enters while no sums wait, or as they are taken
        m.d.comb += self.i.ready.eq(~o_valid | self.o.ready)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [acc.eq(s) for acc, s in updates]
            m.d.sync += [o_valid.eq(at_end), n.eq(Mux(at_end, 0, n + 1))]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        value = Cat(*codes, Const(1, 1)) if layer.out_stream.framed else Cat(*codes)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(value)]
        return m


class FlattenLayer(_OneRegister):
    """A flatten layer: the ``P`` pixels of an image shift into one register of ``P * C``
    codes (pixel-major), which is the output once the last pixel arrived; the next image's
    first pixel enters as the vector is taken. ``latency`` 1 (after the last pixel), a pixel
    per clock while the consumer keeps up; ``P * C * bits`` register bits (the consumer, a
    dense layer, buffers the vector itself). An image of one pixel (after a global pool) is
    already the vector: it passes through without a register (``latency`` 0)."""

    @property
    def latency(self) -> int:
        """1 (after the last pixel); 0 for a one-pixel image (a wire)."""
        return 0 if math.prod(self.layer.in_shape[:-1]) == 1 else 1

    def elaborate(self, platform):
        m = Module()
        layer = self.layer
        p = math.prod(layer.in_shape[:-1])
        pix = layer.input.bits * layer.in_shape[-1]
        if p == 1:
            m.d.comb += [self.o.payload.eq(self.i.payload.data.as_value()),
                         self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
            return m
        n = _counter(p, "n")
        buf = Signal(pix * p, name="collect")
        o_valid = Signal(name="o_valid")
        nxt = Cat(buf[pix:], self.i.payload.data.as_value()) if p > 1 else \
            self.i.payload.data.as_value()
        m.d.comb += self.i.ready.eq(~o_valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += buf.eq(nxt)
            with m.If(n == p - 1):
                m.d.sync += [o_valid.eq(1), n.eq(0)]
            with m.Else():
                m.d.sync += n.eq(n + 1)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(buf)]
        return m


class AddLayer(_OneRegister):
    """A residual join: ``i`` carries ``a`` (the layer's ``source``), ``skip`` carries ``b``;
    ``acc = (a << shift) + (b << skip_shift)`` per element, then the output stage of
    :func:`bitfab.hw.datapath.output_stage`, registered (``latency`` 1). A transfer takes one
    payload from each input at once; ``last`` is ``a``'s."""

    def __init__(self, config: ConvConfig):
        layer = config.layer if isinstance(config, ConvConfig) else None
        extra = {} if layer is None else {"skip": In(stream.Signature(stream_layout(
            replace(layer.in_stream, element=layer.skip_input))))}
        super().__init__(config, extra)

    def elaborate(self, platform):
        m = Module()
        layer = self.layer
        framed = layer.in_stream.framed
        c = layer.shape[-1]
        shim = types.SimpleNamespace(output=layer.output, input=layer.input,
                                     bias=np.zeros(c, dtype=np.int64),
                                     out_bits=layer.out_format.bits, acc_bits=layer.acc_bits)
        a_data = self.i.payload.data if framed else self.i.payload
        b_data = self.skip.payload.data if framed else self.skip.payload
        codes = []
        for k in range(c):
            a = a_data[k].as_signed() if layer.input.signed else a_data[k]
            b = b_data[k].as_signed() if layer.skip_input.signed else b_data[k]
            s = Signal(range(layer.acc_range[0], layer.acc_range[1] + 1), name=f"sum{k}")
            m.d.comb += s.eq((a << layer.shift) + (b << layer.skip_shift))
            codes.append(output_stage(m, shim, s, [k], None, f"out{k}"))
        en = ~self.o.valid | self.o.ready
        both = self.i.valid & self.skip.valid
        o_valid = Signal(name="o_valid")
        out = Signal(len(self.o.payload.as_value()), name="out")
        m.d.comb += [self.i.ready.eq(en & self.skip.valid), self.skip.ready.eq(en & self.i.valid)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(en & both):
            value = Cat(*codes, self.i.payload.last) if framed else Cat(*codes)
            m.d.sync += [out.eq(value), o_valid.eq(1)]
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(out)]
        return m


class Fork(wiring.Component):
    """Broadcast a stream to ``n`` consumers (``o0`` .. ``o{n-1}``): each output offers the
    payload until it took it, the input advances when every output has (an eager fork: no
    output's ``valid`` waits for another's ``ready``). Combinational, latency 0."""

    def __init__(self, shape, n: int):
        self._n = n
        super().__init__({"i": In(stream.Signature(shape)),
                          **{f"o{k}": Out(stream.Signature(shape)) for k in range(n)}})

    def out(self, k: int):
        return getattr(self, f"o{k}")

    def elaborate(self, platform):
        m = Module()
        taken = [Signal(name=f"taken{k}") for k in range(self._n)]
        done = [taken[k] | self.out(k).ready for k in range(self._n)]
        all_done = Signal(name="all_done")
        m.d.comb += all_done.eq(Cat(*done).all())
        m.d.comb += self.i.ready.eq(all_done)
        for k in range(self._n):
            o = self.out(k)
            m.d.comb += [o.payload.eq(self.i.payload), o.valid.eq(self.i.valid & ~taken[k])]
            with m.If(self.i.valid & all_done):
                m.d.sync += taken[k].eq(0)
            with m.Elif(o.valid & o.ready):
                m.d.sync += taken[k].eq(1)
        return m


class StreamFifo(wiring.Component):
    """A first-in first-out buffer of ``depth`` payloads of ``shape`` between two streams.

    ``depth - 1`` payloads wait in a :class:`amaranth.lib.memory.Memory` read through a
    synchronous port, whose data register is the output: nothing is copied into flip-flops.
    The memory asks for block RAM (``ram_style``) where it holds at least
    :data:`BLOCK_RAM_BITS` bits (a skip FIFO of a small network would otherwise be hundreds of
    flip-flops, the scarce cells of a small FPGA, beside unused block RAM); smaller ones stay
    in logic. ``depth`` 1 is one register (:class:`amaranth.lib.fifo.SyncFIFOBuffered`).
    """

    #: Memories of at least this many bits ask for block RAM.
    BLOCK_RAM_BITS = 32

    def __init__(self, shape, depth: int):
        self._depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def latency(self) -> int:
        """2 (1 for ``depth`` 1): a payload written into an empty buffer is read from the memory
        the next clock and offered the clock after."""
        return 2 if self._depth > 1 else 1

    @property
    def block_ram(self) -> bool:
        """Whether the memory asks for block RAM."""
        width = len(Value.cast(self.i.payload))
        return self._depth > 1 and width * (self._depth - 1) >= self.BLOCK_RAM_BITS

    def elaborate(self, platform):
        m = Module()
        width = len(Value.cast(self.i.payload))
        if self._depth <= 1:
            m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=width, depth=self._depth)
            m.d.comb += [q.w_data.eq(Value.cast(self.i.payload)), q.w_en.eq(self.i.valid),
                         self.i.ready.eq(q.w_rdy), self.o.payload.eq(q.r_data),
                         self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready)]
            return m
        d = self._depth - 1  # words in the memory; the read port's data register is one more
        mem = memory.Memory(shape=unsigned(width), depth=d, init=[],
                            attrs={"ram_style": "block"} if self.block_ram else None)
        m.submodules.memory = mem
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")
        wp, rp = _counter(d, "wp"), _counter(d, "rp")
        level = Signal(range(d + 1), name="level")
        o_valid = Signal(name="o_valid")
        push = self.i.valid & self.i.ready
        # the memory never reads the word written in the same clock: a read needs level > 0,
        # so it reads an older word, and a full memory (wp == rp) takes no write
        pop = (level != 0) & (~o_valid | self.o.ready)
        m.d.comb += [self.i.ready.eq(level != d),
                     wr.addr.eq(wp), wr.data.eq(Value.cast(self.i.payload)), wr.en.eq(push),
                     rd.addr.eq(rp), rd.en.eq(pop),
                     self.o.payload.eq(rd.data), self.o.valid.eq(o_valid)]
        with m.If(push):
            m.d.sync += wp.eq(Mux(wp == d - 1, 0, wp + 1))
        with m.If(pop):
            m.d.sync += [rp.eq(Mux(rp == d - 1, 0, rp + 1)), o_valid.eq(1)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        m.d.sync += level.eq(level + push - pop)
        return m


# --- how many outputs a layer gives, for the skip FIFOs ------------------------------------------


def out_counts(layer) -> np.ndarray:
    """Return ``f``, ``f[n]`` = the outputs ``layer``'s hardware can give within one image once
    it has read ``n`` of its input transfers (``n = 0 .. frame``). Used to size the FIFO of a
    residual join (:class:`bitfab.hw.layer.Network`)."""
    frame = getattr(layer, "frame_length", None) or 1
    if layer.kind in ("conv", "avgpool", "maxpool"):
        conv = layer if layer.kind != "avgpool" else avgpool_conv(layer)
        (h, w), (kh, kw), (sy, sx), ((pt, pb), (pl, pr)) = _geometry(conv)
        hp, wp = h + pt + pb, w + pl + pr
        inside = np.zeros((hp, wp), dtype=np.int64)
        inside[pt:pt + h, pl:pl + w] = 1
        upto = np.cumsum(inside.ravel())  # interior pixels at padded raster index <= r
        ho, wo = (hp - kh) // sy + 1, (wp - kw) // sx + 1
        ends = [(oy * sy + kh - 1) * wp + ox * sx + kw - 1 for oy in range(ho) for ox in range(wo)]
        need = upto[ends]
        return np.searchsorted(np.sort(need), np.arange(frame + 1), side="right")
    if layer.kind == "flatten":
        f = np.zeros(frame + 1, dtype=np.int64)
        f[-1] = 1
        return f
    return np.arange(frame + 1)


# --- balancing the layers of an image network -------------------------------------------------


def image_clocks(config) -> int:
    """Return the clocks one image (one input item) occupies a layer at full rate.

    conv / avgpool: ``max(Hp * Wp, Ho * Wo * II_dense)`` (a padded pixel per clock, a window
    every ``II_dense``); maxpool, flatten, add: their input pixels; any other kind (a dense
    layer reads one vector per image): its ``initiation_interval``.
    """
    layer = config.layer
    if layer.kind in ("conv", "avgpool") and config.dense is not None:
        hp, wp = _padded(config.conv)
        windows = math.prod(layer.out_shape[:-1])
        return max(hp * wp, windows * config.dense.initiation_interval)
    if layer.kind in ("avgpool", "maxpool", "flatten", "add"):
        return getattr(layer, "frame_length", None) or 1
    return config.initiation_interval


def balanced_configs(model, pipeline: int = 0, clocks: int | None = None) -> tuple:
    """Return one configuration per layer of ``model`` such that the layers' throughputs
    balance: every conv and dense layer gets the smallest fold (least ``pe * simd``, weights
    in block RAM) whose :func:`image_clocks` stays within ``clocks`` (default: the slowest
    layer of the unrolled design, usually the first conv's padded pixels), and stays unrolled
    where no fold is that fast. The network then takes an image every ``clocks`` clocks, as
    the unrolled one does, with a fraction of the arithmetic."""
    unrolled = [kinds.configure(layer, None, pipeline, f"layers[{i}]")
                for i, layer in enumerate(model.layers)]
    target = clocks if clocks is not None else max(image_clocks(c) for c in unrolled)
    out = []
    for i, (layer, cfg) in enumerate(zip(model.layers, unrolled)):
        if layer.kind not in ("conv", "dense"):
            out.append(cfg)
            continue
        dense = cfg.dense.layer if layer.kind == "conv" else cfg.layer
        n_in, n_out = dense.in_features, dense.out_features
        best = None
        for simd in (d for d in range(1, n_in + 1) if n_in % d == 0):
            for pe in range(1, n_out + 1):
                if best is not None and pe * simd >= best[0]:
                    break
                trial = kinds.configure(layer, (pe, simd), pipeline, f"layers[{i}]")
                if image_clocks(trial) <= target:
                    best = (pe * simd, trial)
                    break
        out.append(best[1] if best is not None and best[0] < n_in * n_out else cfg)
    return tuple(out)


_BUILD = {"conv": ConvLayer, "avgpool": ConvLayer, "maxpool": MaxPoolLayer,
          "flatten": FlattenLayer, "add": AddLayer}


def _build(config: ConvConfig) -> wiring.Component:
    if is_global_pool(config.layer):
        return GlobalPoolLayer(config)
    return _BUILD[config.layer.kind](config)


for _kind in _BUILD:
    # a conv folds its window's dense datapath; the others have no weights to fold
    kinds.register(_kind, kinds.HwKind(_configure, _build, foldable=True,
                                       weightless=_kind != "conv"))
