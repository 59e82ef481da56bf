"""Layer and network components: unrolled and folded dense layers behind one stream contract,
and :class:`Network`, which chains the components of every layer kind (:mod:`bitfab.hw.kinds`).

The layer contract (every dense component in this module; :mod:`bitfab.hw.kinds` states it for
every kind):

- ``i``: ``In(stream.Signature(ArrayLayout(unsigned(in_bits), in_features)))``: one input vector
  per transfer, element ``k`` at payload bits ``[k*in_bits, (k+1)*in_bits)``, each the hardware
  *code* of a value (:meth:`bitfab.model.InputFormat.to_codes`: bipolar bit 1 = +1, signed
  integers in two's complement).
- ``o``: ``Out(stream.Signature(ArrayLayout(unsigned(out_bits), out_features)))``: one output
  vector per input vector, in order, as codes of the output stage's values
  (``layer.out_format.to_codes``).
- Both streams have backpressure (``valid``/``ready``); a stalled consumer stalls the pipeline,
  which holds its data (every register loads only on the stream handshake), so no vector is lost
  or duplicated.
- ``latency`` (clock edges from the input transfer to ``o.valid`` when nothing stalls) and
  ``initiation_interval`` (clocks between input transfers at full throughput) are properties.
- The function computed is :func:`bitfab.sim.golden.dense_accumulate` followed by
  :func:`bitfab.sim.golden.dense_forward`, bit for bit.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError
from bitfab.model import IntegerModel, signed_bits

from . import kinds
from .adder_tree import sum_terms
from .config import (
    BALANCED,
    ConfigError,
    LayerConfig,
    LayerFolds,
    fold_text,
    parse_fold,
    parse_layer_folds,
)
from .datapath import (
    channel_offsets,
    lane_terms,
    lut_lane_products,
    moved_thresholds,
    output_stage,
    pick_constant,
    resize,
    unrolled_terms,
)
from .spram import NetworkLoader, SpramWeights, load_layout, word_layout

__all__ = ["layer_signature", "UnrolledDense", "FoldedDense", "Resize", "PerStep", "Network",
           "build_layer", "build_network", "network_configs", "per_step_layers",
           "skip_fifo_depths",
           "weight_image", "spram_capable", "layer_folds", "resolve_fold"]


def layer_signature(in_bits: int, n_in: int, out_bits: int, n_out: int) -> wiring.Signature:
    """Return the signature of a layer: ``i`` and ``o`` streams of element arrays."""
    return wiring.Signature({
        "i": In(stream.Signature(data.ArrayLayout(unsigned(in_bits), n_in))),
        "o": Out(stream.Signature(data.ArrayLayout(unsigned(out_bits), n_out))),
    })


def _delay(m: Module, value, stages: int, en, name: str):
    """Return ``value`` delayed by ``stages`` registers that load only where ``en`` is 1."""
    if isinstance(value, Const):
        return value  # an empty sum: a constant needs no registers to stay aligned
    for k in range(stages):
        reg = Signal.like(value, name=f"{name}_d{k}") if isinstance(value, Signal) \
            else Signal(value.shape(), name=f"{name}_d{k}")
        with m.If(en):
            m.d.sync += reg.eq(value)
        value = reg
    return value


def _elements(m: Module, layer, payload, name: str) -> list:
    """Split a flat payload into input elements: code bits (bipolar) or values."""
    fmt = layer.input
    xs = []
    for k in range(len(payload) // fmt.bits):
        code = payload[k * fmt.bits:(k + 1) * fmt.bits]
        value = code.as_signed() if fmt.kind == "int" and fmt.signed else code
        x = Signal(value.shape(), name=f"{name}{k}")
        m.d.comb += x.eq(value)
        xs.append(x)
    return xs


def _refuse(component, message: str) -> ConfigError:
    """Return the error of a refused constructor, silencing the component's unused warning (it
    was never meant to be used: its constructor failed)."""
    component._MustUse__silence = True
    return ConfigError(message)


class _LayerBase(wiring.Component):
    _architecture = None

    def __init__(self, config: LayerConfig):
        if not isinstance(config, LayerConfig):
            raise _refuse(self, f"config must be a LayerConfig, not {type(config).__name__}")
        if self._architecture and config.architecture != self._architecture:
            raise _refuse(self, f"{type(self).__name__} needs the {self._architecture} "
                                f"architecture, not {config.architecture!r}")
        self._config = config
        self._latency = None
        self._prebuilt = None
        super().__init__(self._make_signature(config))

    def _make_signature(self, config: LayerConfig) -> wiring.Signature:
        return layer_signature(config.in_bits, config.in_features, config.out_bits,
                               config.out_features)

    @property
    def config(self) -> LayerConfig:
        """The :class:`~bitfab.hw.config.LayerConfig` this layer was built from."""
        return self._config

    @property
    def layer(self):
        return self._config.layer

    @property
    def initiation_interval(self) -> int:
        """Clocks between input transfers at full throughput
        (:attr:`LayerConfig.initiation_interval`: 1 unrolled, ``SF * NF`` folded)."""
        return self._config.initiation_interval

    @property
    def latency(self) -> int:
        """Clock edges from an input transfer to ``o.valid`` of its result when nothing stalls.

        Unrolled: ``Lt + (1 if pipeline else 0)``, ``Lt`` the deepest adder tree's register
        stages (as :func:`~bitfab.hw.adder_tree.sum_terms` reports them) plus the output
        register. Folded: ``SF * NF + 2 + Lt`` (input buffer, weight memory read, adder tree,
        output buffer).
        """
        if self._latency is None:
            # the adder trees decide the depth: build the hardware once and keep it for the
            # first elaboration, so that asking costs nothing extra
            self._prebuilt = Module()
            self._latency = self._build(self._prebuilt)
        return self._latency

    def elaborate(self, platform):
        if self._prebuilt is not None:
            m, self._prebuilt = self._prebuilt, None
            return m
        m = Module()
        latency = self._build(m)
        assert self._latency in (None, latency)
        self._latency = latency
        return m

    def _build(self, m: Module) -> int:
        raise NotImplementedError


class UnrolledDense(_LayerBase):
    """A fully unrolled dense layer: every weight a netlist constant, one vector per clock.

    Zero weights produce no hardware, XNORs with constant weights are wires or inverters, pow2
    weights are shifts; the sums are :func:`~bitfab.hw.adder_tree.sum_terms` trees pipelined every
    ``config.pipeline`` levels. The pipeline advances only when its last stage is empty or being
    read (``en = ~o.valid | o.ready``), so a stall holds every stage.

    Parameters
    ----------
    config : LayerConfig
        An ``unrolled`` configuration.
    """

    _architecture = "unrolled"

    def _build(self, m: Module) -> int:
        cfg = self._config
        layer = cfg.layer
        k = cfg.pipeline
        en = Signal(name="en")
        xs = _elements(m, layer, self.i.payload.as_value(), "x")
        cache = {}
        sums = []
        for o in range(cfg.out_features):
            terms, negated = unrolled_terms(m, layer, o, xs, cache)
            s, lat = sum_terms(m, terms, negated, pipeline=k, en=en, name=f"acc{o}")
            sums.append((s, lat))
        tree = max(lat for _, lat in sums)
        codes = []
        for o, (s, lat) in enumerate(sums):
            s = _delay(m, s, tree - lat, en, f"acc{o}")
            codes.append(output_stage(m, layer, s, [o], None, f"out{o}"))
        flat = Signal(cfg.out_bits * cfg.out_features, name="out_codes")
        for o, code in enumerate(codes):
            m.d.comb += flat[o * cfg.out_bits:(o + 1) * cfg.out_bits].eq(code)
        latency = tree + (1 if k else 0)
        payload = _delay(m, flat, 1 if k else 0, en, "out")
        valid = self.i.valid
        for s in range(tree + (1 if k else 0)):
            reg = Signal(name=f"valid{s}")
            with m.If(en):
                m.d.sync += reg.eq(valid)
            valid = reg
        m.d.comb += [
            self.o.valid.eq(valid),
            self.o.payload.eq(payload),
        ]
        if latency == 0:
            m.d.comb += [en.eq(1), self.i.ready.eq(self.o.ready)]
        else:
            m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        return latency


class FoldedDense(_LayerBase):
    """A folded dense layer: ``pe`` channels x ``simd`` inputs per clock, weights in memory.

    Weight codes (:meth:`LayerConfig.weight_codes`) live in one
    :class:`amaranth.lib.memory.Memory` of ``NF * SF`` words of ``pe * simd`` codes (word
    ``nf * SF + sf`` holds channels ``nf*pe .. nf*pe+pe-1``, inputs ``sf*simd .. sf*simd+simd-1``),
    read through a synchronous port so that it maps to block RAM (iCE40 EBR, ECP5 DP16KD); with
    ``config.weights == "spram"`` the memory is :class:`~bitfab.hw.spram.SpramWeights` instead,
    empty until written through the extra ``load`` port (iCE40 UP SPRAM). Each PE
    has an accumulator; after ``SF`` clocks its channel's output stage writes the result into the
    output register, which offers the vector after the last neuron fold (there is no second,
    staging copy of the vector: flip-flops are the scarce cells of a small FPGA).

    The pipeline (issue, memory read, adder tree, accumulate) advances on ``en``, which is low only
    while a channel group's result waits for an output register whose vector the consumer has
    not read, so a stalled consumer holds every stage; a consumer that takes each vector within
    ``SF`` clocks never stalls the layer. A new input vector is accepted while the last fold of
    the previous one issues, so vectors follow each other every ``SF * NF`` clocks.

    With ``in_place`` the layer keeps no copy of its input vector: it works on ``i.payload``
    while the producer holds it (``valid`` high, the payload unchanged until the transfer, as
    every layer component's output register does) and takes it (``i.ready``) only as its last
    fold issues. That saves ``in_features * in_bits`` flip-flops; the producer cannot prepare
    its next vector meanwhile, so a sliding window adds a clock or two per vector. The latency
    then counts from that last issue: ``2 + Lt``.

    Parameters
    ----------
    config : LayerConfig
        A ``folded`` configuration.
    in_place : bool
        Read the input where the producer holds it (default False: copy it on arrival).
    """

    _architecture = "folded"

    def __init__(self, config: LayerConfig, in_place: bool = False):
        self._in_place = bool(in_place)
        super().__init__(config)

    @property
    def in_place(self) -> bool:
        """Whether the layer reads its input where the producer holds it (no input copy)."""
        return self._in_place

    def _make_signature(self, config: LayerConfig) -> wiring.Signature:
        sig = super()._make_signature(config)
        if config.weights != "spram":
            return sig
        # an SPRAM weight memory starts empty: its write port (hw/spram.py)
        return wiring.Signature({**sig.members, "load": In(stream.Signature(
            load_layout(config.weight_depth, config.spram_columns)))})

    def _build(self, m: Module) -> int:
        cfg = self._config
        layer = cfg.layer
        pe, simd = cfg.pe, cfg.simd
        sf_n, nf_n = cfg.synapse_folds, cfg.neuron_folds
        n_in, n_out = cfg.in_features, cfg.out_features
        in_bits, out_bits = cfg.in_bits, cfg.out_bits
        cb = cfg.weight_code_bits

        # weight memory: word nf*SF + sf = PE rows x SIMD lanes of codes (LayerConfig.weight_words)
        if cfg.weights == "spram":  # empty until loaded through `load` (hw/spram.py)
            mem = SpramWeights(cfg.weight_word_bits, cfg.weight_depth)
            m.submodules.weights = mem
            wiring.connect(m, wiring.flipped(self.load), mem.load)
        else:
            mem = memory.Memory(shape=unsigned(cfg.weight_word_bits), depth=cfg.weight_depth,
                                init=cfg.weight_words())
            m.submodules.weights = mem

        en = Signal(name="en")
        # stage 0: input buffer (or, in place, the producer's held payload) and fold counters
        if self._in_place:
            xbuf, xvalid = self.i.payload.as_value(), self.i.valid
        else:
            xbuf = Signal(n_in * in_bits, name="xbuf")
            xvalid = Signal(name="xvalid")
        sf = Signal(range(sf_n), name="sf")
        nf = Signal(range(nf_n), name="nf")
        sf_last = sf == sf_n - 1
        nf_last = nf == nf_n - 1
        issue_last = xvalid & sf_last & nf_last
        if self._in_place:
            m.d.comb += self.i.ready.eq(issue_last & en)
        else:
            m.d.comb += self.i.ready.eq(~xvalid | (issue_last & en))
        with m.If(en & xvalid):
            with m.If(sf_last):
                m.d.sync += sf.eq(0)
                with m.If(nf_last):
                    m.d.sync += nf.eq(0)
                    if not self._in_place:
                        m.d.sync += xvalid.eq(0)
                with m.Else():
                    m.d.sync += nf.eq(nf + 1)
            with m.Else():
                m.d.sync += sf.eq(sf + 1)
        if not self._in_place:
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [xbuf.eq(self.i.payload.as_value()), xvalid.eq(1)]
        # in place, the input transfer is the last issue: the latency counts from there
        wait = 0 if self._in_place else cfg.initiation_interval

        rd = mem if cfg.weights == "spram" else mem.read_port(domain="sync")
        addr = nf * sf_n + sf if nf_n > 1 else sf
        m.d.comb += [rd.addr.eq(addr if nf_n * sf_n > 1 else 0), rd.en.eq(en)]

        # stage 1: weights arrive from memory; the input slice and the control travel beside them
        xs_now = xbuf.word_select(sf, simd * in_bits) if sf_n > 1 else xbuf
        xs1 = Signal(simd * in_bits, name="xs1")
        v1, first1, last1, vlast1 = (Signal(name=n) for n in ("v1", "first1", "last1", "vlast1"))
        nf1 = Signal(range(nf_n), name="nf1")
        with m.If(en):
            m.d.sync += [xs1.eq(xs_now), v1.eq(xvalid), first1.eq(sf == 0),
                         last1.eq(sf_last), vlast1.eq(issue_last), nf1.eq(nf)]
        lanes = _elements(m, layer, xs1, "lane")
        products = [lut_lane_products(m, layer, x, f"lane{j}")
                    if layer.datapath == "lut" and layer.input.kind != "bipolar" else None
                    for j, x in enumerate(lanes)]
        partials = []
        for p in range(pe):
            terms, negated = [], []
            for j in range(simd):
                code = rd.data[(p * simd + j) * cb:(p * simd + j + 1) * cb]
                t, n = lane_terms(layer, code, lanes[j], products[j])
                terms += t
                negated += n
            partials.append(sum_terms(m, terms, negated, pipeline=cfg.pipeline, en=en,
                                      name=f"pe{p}_sum"))
        tree = max(lat for _, lat in partials)
        partials = [_delay(m, s, tree - lat, en, f"pe{p}_sum") for p, (s, lat) in
                    enumerate(partials)]
        va = _delay(m, v1, tree, en, "v")
        firsta = _delay(m, first1, tree, en, "first")
        lasta = _delay(m, last1, tree, en, "last")
        vlasta = _delay(m, vlast1, tree, en, "vlast")
        nfa = _delay(m, nf1, tree, en, "nf")

        # accumulate; at the last synapse fold the output stage writes the output register
        ovalid = Signal(name="ovalid")
        obuf = Signal(n_out * out_bits, name="obuf")
        serial = serial_thresholds(cfg)
        totals, results = [], []
        for p, part in enumerate(partials):
            lo_hi = _acc_range(layer, sf_n, part)
            acc = Signal(range(lo_hi[0], lo_hi[1] + 1), name=f"pe{p}_acc")
            total = Signal.like(acc, name=f"pe{p}_total")
            m.d.comb += total.eq((part + acc) if sf_n > 1 else part)
            with m.If(firsta):
                m.d.comb += total.eq(part)
            with m.If(en & va):
                m.d.sync += acc.eq(total)
            totals.append(total)
            if not serial:
                chans = [min(f * pe + p, n_out - 1) for f in range(nf_n)]
                results.append(output_stage(m, layer, total, chans,
                                            nfa if nf_n > 1 else None, f"pe{p}_out"))
        if serial:
            self._serial_stage(m, totals, en, va, lasta, vlasta, nfa, ovalid, obuf)
            return wait + 2 + tree + layer.output.count
        # a channel group's codes go into the output register once its last vector has left
        m.d.comb += en.eq(~(va & lasta & ovalid & ~self.o.ready))
        for f in range(nf_n):
            for p in range(pe):
                o = f * pe + p
                if o >= n_out:
                    continue
                with m.If(en & va & lasta & (nfa == f)):
                    m.d.sync += obuf[o * out_bits:(o + 1) * out_bits].eq(results[p])
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += ovalid.eq(0)
        with m.If(en & va & vlasta):
            m.d.sync += ovalid.eq(1)
        m.d.comb += [self.o.valid.eq(ovalid), self.o.payload.eq(obuf)]
        return wait + 2 + tree

    def _serial_stage(self, m: Module, totals, en, va, lasta, vlasta, nfa, ovalid, obuf):
        """The threshold output stage, one threshold per clock (:func:`serial_thresholds`).

        At a channel group's last synapse fold each PE's sum is held; then for ``k = 0 ..
        count-1`` one comparator per PE checks it against threshold ``k`` of its channel and
        counts the thresholds passed. The thresholds are a synchronous ROM indexed by ``(neuron
        fold, k)`` (:func:`threshold_table`; block RAM where it has more than 16 words). The code
        goes into the output register ``count`` clocks after the sum, before the next group's
        sum arrives (``count <= SF``), so the initiation interval is unchanged and the
        latency grows by ``count``. The pipeline stalls only when a sum arrives while the stage
        still waits for an output register whose vector the consumer has not read.
        """
        cfg = self._config
        layer = cfg.layer
        pe, nf_n, n_out, out_bits = cfg.pe, cfg.neuron_folds, cfg.out_features, cfg.out_bits
        stage = layer.output
        count = stage.count
        busy, hlast = Signal(name="th_busy"), Signal(name="th_last")
        k = Signal(range(count), name="th_k")
        hnf = Signal(range(nf_n), name="th_nf")
        finishing = busy & (k == count - 1)
        finish_ok = finishing & (~ovalid | self.o.ready)
        accept = en & va & lasta
        m.d.comb += en.eq(~(va & lasta & busy & ~finish_ok))
        # the thresholds: a synchronous ROM (threshold_table), word nf * count + k = the PE
        # lanes' thresholds; the word of the next comparison is read one clock ahead, and a
        # stage waiting for the output register keeps its word
        width, words = threshold_table(cfg)
        rom = memory.Memory(shape=unsigned(pe * width), depth=len(words), init=words,
                            attrs={"rom_style": "block"} if len(words) > 16 else None)
        m.submodules.thresholds = rom
        rd = rom.read_port(domain="sync")
        base = nfa * count if nf_n > 1 else 0
        nxt_addr = (hnf * count if nf_n > 1 else 0) + k + 1
        m.d.comb += [rd.addr.eq(Mux(accept, base, nxt_addr)),
                     rd.en.eq(accept | (busy & ~finishing))]
        for p, total in enumerate(totals):
            hold = Signal.like(total, name=f"pe{p}_hold")
            passed = Signal(range(count + 1), name=f"pe{p}_passed")
            chans = [min(f * pe + p, n_out - 1) for f in range(nf_n)]
            th = rd.data[p * width:(p + 1) * width].as_signed()
            dirs = {int(stage.direction[c]) for c in chans}
            if dirs == {1}:
                bit = hold >= th
            elif dirs == {-1}:
                bit = hold <= th
            else:
                up = pick_constant([int(stage.direction[c] > 0) for c in chans],
                                   hnf if nf_n > 1 else None)
                bit = Mux(up, hold >= th, hold <= th)
            code = resize(m, passed + bit, out_bits, f"pe{p}_code")
            with m.If(busy & ~finishing):
                m.d.sync += passed.eq(passed + bit)
            with m.If(accept):
                m.d.sync += [hold.eq(total), passed.eq(0)]
            for f in range(nf_n):
                o = f * pe + p
                if o >= n_out:
                    continue
                with m.If(finish_ok & (hnf == f)):
                    m.d.sync += obuf[o * out_bits:(o + 1) * out_bits].eq(code)
        with m.If(busy & ~finishing):
            m.d.sync += k.eq(k + 1)
        with m.If(finish_ok):
            m.d.sync += busy.eq(0)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += ovalid.eq(0)
        with m.If(finish_ok & hlast):
            m.d.sync += ovalid.eq(1)
        with m.If(accept):
            m.d.sync += [busy.eq(1), k.eq(0), hlast.eq(vlasta)]
            if nf_n > 1:
                m.d.sync += hnf.eq(nfa)
        m.d.comb += [self.o.valid.eq(ovalid), self.o.payload.eq(obuf)]


#: Folded threshold stages compare one threshold per clock where they have the time
#: (:func:`serial_thresholds`); False: every threshold in parallel (the comparison baseline).
SERIAL_THRESHOLDS = True


def serial_thresholds(config: LayerConfig) -> bool:
    """Whether a folded layer's threshold output stage checks its thresholds serially: one
    comparator per PE instead of one per threshold, and no multiplexer of per-channel thresholds
    per comparator. It needs ``count`` clocks per channel group, which a folded layer has when
    ``count <= SF`` (its synapse folds); with fewer than three thresholds the parallel stage is
    as small."""
    stage = config.layer.output
    return (SERIAL_THRESHOLDS and config.architecture == "folded" and stage.kind == "threshold"
            and 3 <= stage.count <= config.synapse_folds)


def threshold_table(config: LayerConfig) -> tuple[int, list[int]]:
    """Return ``(width, words)`` of a serial threshold stage's ROM: word ``nf * count + k`` holds
    threshold ``k`` (moved into the sum's domain, :func:`~bitfab.hw.datapath.moved_thresholds`)
    of channel ``nf * pe + p`` in bits ``[p * width, (p + 1) * width)``, two's complement; lanes
    past the last channel repeat it. Thresholds beyond the sum's reach are clamped to one past
    it, which decides every comparison the same way and keeps the words narrow."""
    layer = config.layer
    pe, nf_n, n_out = config.pe, config.neuron_folds, config.out_features
    count = layer.output.count
    moved = moved_thresholds(layer)
    lo, hi = _sum_bounds(config)
    clamp = [[min(max(t, lo - 1), hi + 1) for t in row] for row in moved]
    width = signed_bits(lo - 1, hi + 1)
    mask = (1 << width) - 1
    words = []
    for f in range(nf_n):
        for j in range(count):
            word = 0
            for p in range(pe):
                word |= (clamp[min(f * pe + p, n_out - 1)][j] & mask) << (p * width)
            words.append(word)
    return width, words


def _sum_bounds(config: LayerConfig) -> tuple[int, int]:
    """Bounds of a folded layer's per-channel sum ``S`` over every reachable input."""
    layer = config.layer
    scale, offsets = channel_offsets(layer)
    lo, hi = layer.acc_range
    return (min((int(a) - off) // scale for a, off in zip(lo, offsets)),
            max(-((off - int(b)) // scale) for b, off in zip(hi, offsets)))


def _acc_range(layer, sf_n: int, part) -> tuple[int, int]:
    """A range that holds the running sum of ``sf_n`` partial sums (exact per-channel bounds are
    not needed: the shape only has to hold every reachable value)."""
    from .adder_tree import value_range
    lo, hi = value_range(part)
    return min(lo * sf_n, 0), max(hi * sf_n, 0)


class Resize(wiring.Component):
    """Re-encode a stream of element codes from one width to another (sign- or zero-extension).

    Joins a layer whose output format is narrower than the next layer's input format (e.g. a
    2-bit threshold output into an 8-bit input); combinational, latency 0.
    """

    def __init__(self, n: int, in_bits: int, out_bits: int, signed: bool, framed: bool = False):
        self._n, self._in_bits, self._out_bits, self._signed = n, in_bits, out_bits, signed
        self._framed = framed
        if framed:  # a pixel stream: the codes and then ``last``, which passes through
            from .conv import pixel_layout
            super().__init__(wiring.Signature({
                "i": In(stream.Signature(pixel_layout(in_bits, n))),
                "o": Out(stream.Signature(pixel_layout(out_bits, n)))}))
        else:
            super().__init__(layer_signature(in_bits, n, out_bits, n))

    @property
    def latency(self) -> int:
        """0: combinational (the payload is re-encoded by wiring and sign extension)."""
        return 0

    @property
    def initiation_interval(self) -> int:
        """1: a vector every clock."""
        return 1

    def elaborate(self, platform):
        m = Module()
        src = self.i.payload.as_value()
        dst = self.o.payload.as_value()
        for k in range(self._n):
            code = src[k * self._in_bits:(k + 1) * self._in_bits]
            val = code.as_signed() if self._signed else code
            m.d.comb += dst[k * self._out_bits:(k + 1) * self._out_bits].eq(val)
        if self._framed:
            m.d.comb += dst[-1].eq(src[-1])
        m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
        return m


def build_layer(config) -> wiring.Component:
    """Return the component of one layer configuration (:func:`bitfab.hw.kinds.build`)."""
    if not hasattr(config, "layer"):
        raise ConfigError(f"config must be a layer configuration, not {type(config).__name__}")
    return kinds.build(config)


def _dense_configure(layer, fold, pipeline: int, exact: bool) -> LayerConfig:
    if fold is None:
        return LayerConfig.unrolled(layer, pipeline)
    pe, simd = fold
    if not exact:
        # a network-wide fold rarely fits every layer (e.g. a 10-class output layer): cap pe at
        # the outputs, lower simd to the largest divisor of the inputs
        n = layer.in_features
        simd = max(d for d in range(1, min(simd, n) + 1) if n % d == 0)
        pe = min(pe, layer.out_features)
    return LayerConfig.folded(layer, pe, simd, pipeline)


def _dense_build(config: LayerConfig) -> wiring.Component:
    return (UnrolledDense if config.architecture == "unrolled" else FoldedDense)(config)


kinds.register("dense", kinds.HwKind(_dense_configure, _dense_build, foldable=True, spram=True))


class PerStep(wiring.Component):
    """A layer that reads one vector per transfer (a dense layer), run once per time step of a
    framed stream: ``{codes, last}`` in, ``{codes, last}`` out, ``last`` carried past the layer.

    The ``last`` bit of every input transfer goes into a small FIFO beside the layer (pushed on
    the input transfer, popped on the output transfer: the layer gives one output per input, in
    order); the input is taken only while that FIFO has room, so no bit is lost whatever its
    depth, and a depth of ``latency + 1`` lets the layer run at its full rate. A layer of latency
    0 (combinational) passes ``last`` by wire.

    Parameters
    ----------
    inner : wiring.Component
        The layer component (the layer contract of :mod:`bitfab.hw.kinds`, unframed streams).
    """

    def __init__(self, inner):
        from .conv import pixel_layout
        self._inner = inner
        i_shape = inner.signature.members["i"].signature.members["payload"].shape
        o_shape = inner.signature.members["o"].signature.members["payload"].shape
        members = {"i": In(stream.Signature(pixel_layout(i_shape.elem_shape.width,
                                                         i_shape.length))),
                   "o": Out(stream.Signature(pixel_layout(o_shape.elem_shape.width,
                                                          o_shape.length)))}
        members.update({k: v for k, v in inner.signature.members.items() if k not in ("i", "o")})
        super().__init__(wiring.Signature(members))

    @property
    def inner(self):
        """The wrapped layer component."""
        return self._inner

    @property
    def config(self):
        return self._inner.config

    @property
    def layer(self):
        return self._inner.config.layer

    @property
    def latency(self) -> int:
        """The layer's latency (the FIFO is beside it, not in its path)."""
        return self._inner.latency

    @property
    def initiation_interval(self) -> int:
        """The layer's initiation interval."""
        return self._inner.initiation_interval

    @property
    def fifo_depth(self) -> int:
        """Entries of the ``last`` FIFO: ``latency + 1`` (0: a wire)."""
        lat = self._inner.latency
        return lat + 1 if lat else 0

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFO
        m = Module()
        m.submodules.layer = inner = self._inner
        for name in self.signature.members:
            if name not in ("i", "o"):
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(inner, name))
        m.d.comb += [inner.i.payload.eq(self.i.payload.data),
                     self.o.payload.data.eq(inner.o.payload),
                     self.o.valid.eq(inner.o.valid), inner.o.ready.eq(self.o.ready)]
        if not self.fifo_depth:
            m.d.comb += [inner.i.valid.eq(self.i.valid), self.i.ready.eq(inner.i.ready),
                         self.o.payload.last.eq(self.i.payload.last)]
            return m
        m.submodules.last = q = SyncFIFO(width=1, depth=self.fifo_depth)
        m.d.comb += [inner.i.valid.eq(self.i.valid & q.w_rdy),
                     self.i.ready.eq(inner.i.ready & q.w_rdy),
                     q.w_data.eq(self.i.payload.last), q.w_en.eq(self.i.valid & self.i.ready),
                     self.o.payload.last.eq(q.r_data), q.r_en.eq(self.o.valid & self.o.ready)]
        return m


def per_step_layers(configs, edges) -> tuple:
    """Return, per layer of a network of ``configs`` whose layer ``k`` reads the layers
    ``edges[k]``, whether it runs once per time step of a framed stream (:class:`PerStep`;
    :attr:`bitfab.model.IntegerModel.streams`) and whether its output is framed."""
    per_step, framed = [], []
    for k, cfg in enumerate(configs):
        layer = cfg.layer
        src = edges[k][0]
        reads = framed[src] if src >= 0 else layer.in_stream.framed
        step = reads and not layer.in_stream.framed and not layer.out_stream.framed
        per_step.append(step)
        framed.append(step or layer.out_stream.framed)
    return tuple(per_step), tuple(framed)


class Network(wiring.Component):
    """A whole network: layers chained with ``wiring.connect``, one input and one output stream.

    A bipolar layer reads the previous one-threshold output bit as its code; where a layer's
    output elements are narrower than the next layer's input elements a :class:`Resize` joins
    them. A layer that reads vectors after a per-step (framed) output, e.g. a tagger's dense
    head after an lstm with ``returns="sequence"``, runs once per step inside a
    :class:`PerStep`, which carries ``last`` past it. The input stream is the first layer's, the
    output stream the last layer's (framed where they carry time steps:
    :attr:`bitfab.model.IntegerModel.streams`).

    Parameters
    ----------
    configs : sequence of layer configurations
        One per layer, in order (:func:`bitfab.hw.kinds.configure`); consecutive layers must
        chain (checked by :class:`~bitfab.model.IntegerModel` when they come from a model).
    """

    def __init__(self, configs):
        configs = tuple(configs)
        if not configs:
            raise _refuse(self, "a network needs at least one layer")
        for k, cfg in enumerate(configs):
            if not hasattr(cfg, "layer"):
                raise _refuse(self, f"configs[{k}] must be a layer configuration, "
                                    f"not {type(cfg).__name__}")
        layers = tuple(c.layer for c in configs)
        if any(getattr(layer, "sources", ("",)) != ("",) for layer in layers):
            try:
                edges = IntegerModel(layers).edges
            except BitfabError as exc:
                raise _refuse(self, str(exc)) from None
        else:
            edges = tuple((k - 1,) for k in range(len(layers)))
        per_step, framed = per_step_layers(configs, edges)
        for k, srcs in enumerate(edges):
            for port, j in enumerate(srcs):
                if j < 0:
                    continue
                a, b = layers[j], layers[k]
                fmt = b.input if port == 0 else b.skip_input
                if a.out_features != b.in_features:
                    raise _refuse(self, f"configs[{k}] takes {b.in_features} inputs but "
                                        f"configs[{j}] gives {a.out_features}")
                if a.out_format.bits > fmt.bits:
                    raise _refuse(self, f"configs[{k}]: {fmt.describe()} input is narrower "
                                        f"than the {a.out_format.describe()} output of "
                                        f"configs[{j}]")
                if framed[j] and not per_step[k] and not b.in_stream.framed:
                    raise _refuse(self, f"layers[{k}] ({b.kind}) cannot follow layers[{j}] "
                                        f"({a.kind}) in hardware yet: it gives one step per "
                                        f"transfer, layers[{k}] takes vectors and gives "
                                        f"{b.out_stream.describe()}")
                if not framed[j] and b.in_stream.framed:
                    raise _refuse(self, f"layers[{k}] ({b.kind}) cannot follow layers[{j}] "
                                        f"({a.kind}) in hardware yet: it gives one vector per "
                                        f"transfer, layers[{k}] takes steps")
        self._configs = configs
        self._edges = edges
        self._per_step, self._framed = per_step, framed
        layers = []
        for c, step, srcs in zip(configs, per_step, edges):
            if step:
                layers.append(PerStep(build_layer(c)))
            elif isinstance(c, LayerConfig) and c.architecture == "folded" and \
                    self._holds(layers, srcs[0]):
                layers.append(FoldedDense(c, in_place=True))  # no copy of a held vector
            else:
                layers.append(build_layer(c))
        self._layers = tuple(layers)
        first, last = self._layers[0], self._layers[-1]
        members = {"i": first.signature.members["i"], "o": last.signature.members["o"]}
        # the layers whose weights live in SPRAM, loaded in layer order through `load`
        self._spram = tuple(k for k, c in enumerate(configs)
                            if getattr(c, "weights", "bram") == "spram")
        if self._spram:
            members["load"] = In(stream.Signature(word_layout()))
        super().__init__(wiring.Signature(members))

    def _holds(self, layers, j: int) -> bool:
        """Whether a folded dense layer reading layer ``j`` (built in ``layers``) reads it in
        place: ``j`` collects an image into one held vector (a flatten's register, a global
        pool's accumulators, or a one-pixel flatten's wire from those), which waits the
        layer's interval once per image. Behind a layer that gives a vector every few clocks
        (another folded dense layer) the layer copies its input, so that both keep their
        interval; behind the network input (whose producer is outside) too."""
        while j >= 0:
            kind = self._configs[j].layer.kind
            if kind not in ("flatten", "avgpool") or getattr(self._configs[j], "dense", None):
                return False  # not a collecting layer (a windowed avgpool has a datapath)
            if layers[j].latency > 0:
                return True
            j = self._edges[j][0]
        return False

    @property
    def configs(self) -> tuple:
        return self._configs

    @property
    def layers(self) -> tuple:
        """The layer components, in order (a per-step layer inside its :class:`PerStep`)."""
        return self._layers

    @property
    def per_step(self) -> tuple:
        """Per layer, whether it runs once per time step of a framed stream (:class:`PerStep`)."""
        return self._per_step

    @property
    def spram_layers(self) -> tuple:
        """Indices of the layers whose weights live in SPRAM (empty: nothing to load)."""
        return self._spram

    def load_image(self) -> np.ndarray:
        """Return the 16-bit words a load sends through ``load`` (:func:`weight_image`)."""
        return weight_image(self._configs)

    @property
    def edges(self) -> tuple:
        """Per layer, the layer indices it reads (``-1``: the network input), its ``source``
        first (:attr:`bitfab.model.IntegerModel.edges`)."""
        return self._edges

    @property
    def latency(self) -> int:
        """Clock edges from an input transfer to its output when nothing stalls: the longest
        path's sum of layer latencies, a skip FIFO on it adding 2 (the :class:`Resize` joins
        and forks are combinational)."""
        depths = self.skip_fifo_depths()
        arrive = []
        for k, layer in enumerate(self._layers):
            start = max((arrive[j] if j >= 0 else 0) + (2 if (k, port) in depths else 0)
                        for port, j in enumerate(self._edges[k]))
            arrive.append(start + layer.latency)
        return arrive[-1]

    @property
    def initiation_interval(self) -> int:
        """Clocks between input transfers at full throughput: the slowest layer's."""
        return max(layer.initiation_interval for layer in self._layers)

    def skip_fifo_depths(self) -> dict:
        """Return ``{(layer, port): depth}`` of the FIFOs in front of the residual joins
        (:func:`skip_fifo_depths`)."""
        return skip_fifo_depths([c.layer for c in self._configs], self._edges)

    def elaborate(self, platform):
        from .conv import Fork, StreamFifo
        m = Module()
        for k, layer in enumerate(self._layers):
            m.submodules[f"layer{k}"] = layer
        readers = {}
        for k, srcs in enumerate(self._edges):
            for port, j in enumerate(srcs):
                readers.setdefault(j, []).append((k, port))
        depths = self.skip_fifo_depths()
        for j, edges in sorted(readers.items()):
            src = wiring.flipped(self.i) if j < 0 else self._layers[j].o
            if len(edges) > 1:
                fork = Fork(src.signature.members["payload"].shape, len(edges))
                m.submodules[f"fork{j + 1}"] = fork
                wiring.connect(m, src, fork.i)
                outs = [fork.out(n) for n in range(len(edges))]
            else:
                outs = [src]
            for out, (k, port) in zip(outs, edges):
                dst = self._layers[k].i if port == 0 else self._layers[k].skip
                if (k, port) in depths:
                    q = StreamFifo(out.signature.members["payload"].shape, depths[(k, port)])
                    m.submodules[f"fifo{k}_{port}"] = q
                    wiring.connect(m, out, q.i)
                    out = q.o
                if out.signature.members["payload"].shape == \
                        dst.signature.members["payload"].shape:
                    wiring.connect(m, out, dst)
                    continue
                a = self._configs[j].layer
                b = self._configs[k].layer
                fmt = b.input if port == 0 else b.skip_input
                join = Resize(a.out_features, a.out_format.bits, fmt.bits, a.out_format.signed,
                              framed=self._framed[j])
                m.submodules[f"resize{k}_{port}"] = join
                wiring.connect(m, out, join.i)
                wiring.connect(m, join.o, dst)
        wiring.connect(m, self._layers[-1].o, wiring.flipped(self.o))
        if self._spram:
            loader = NetworkLoader([(self._configs[k].weight_depth,
                                     self._configs[k].spram_columns) for k in self._spram])
            m.submodules.loader = loader
            wiring.connect(m, wiring.flipped(self.load), loader.i)
            for n, k in enumerate(self._spram):
                wiring.connect(m, getattr(loader, f"out{n}"), self._layers[k].load)
        return m


def weight_image(configs) -> np.ndarray:
    """Return the 16-bit words that load the SPRAM weight memories of a network of ``configs``
    (:func:`network_configs`): each SPRAM layer's
    :meth:`~bitfab.hw.config.LayerConfig.load_image`, in layer order (empty when no layer is in
    SPRAM). What :class:`Network` expects on ``load`` and a host sends to a board."""
    parts = [c.load_image() for c in configs if getattr(c, "weights", "bram") == "spram"]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def skip_fifo_depths(layers, edges) -> dict:
    """Return ``{(layer, port): depth}`` of the FIFOs in front of the residual joins of a
    network of ``layers`` whose layer ``k`` reads the layers ``edges[k]`` (``-1``: the input;
    :attr:`bitfab.model.IntegerModel.edges`).

    A join (an ``add``) reads two branches that leave one tensor (their fork). With ``a(n)``
    and ``b(n)`` the outputs each branch can give once the fork has sent ``n`` transfers of an
    image (:func:`bitfab.hw.conv.out_counts`, composed along the branch), the branch that runs
    ahead holds up to ``max_n (b(n) - a(n))`` payloads the join cannot take yet; a FIFO of that
    depth plus 2 on its input keeps the fork moving until the other branch gives its output,
    so no pattern of backpressure deadlocks. The skip input always gets one (at least 2 deep).
    """
    from .conv import out_counts

    def chain(t: int) -> list:  # tensor t and its ancestors along source edges
        out = [t]
        while t >= 0:
            t = edges[t][0]
            out.append(t)
        return out

    depths = {}
    for k, srcs in enumerate(edges):
        if len(srcs) < 2:
            continue
        chains = [chain(j) for j in srcs]
        fork = next(t for t in chains[0] if t in chains[1])
        frame = (layers[fork].out_frame_length if fork >= 0
                 else getattr(layers[0], "frame_length", None)) or 1
        counts = []
        for branch in chains:
            f = np.arange(frame + 1)
            for j in branch[:branch.index(fork)][::-1]:  # the layers after the fork, in order
                f = out_counts(layers[j])[f]
            counts.append(f)
        for port in (0, 1):
            ahead = int(np.max(counts[port] - counts[1 - port]))
            if ahead > 0 or port == 1:
                depths[(k, port)] = max(ahead, 0) + 2
    return depths


def network_configs(model: IntegerModel, fold: tuple[int, int] | None = None,
                    pipeline: int = 0, weights=None) -> tuple:
    """Return one hardware configuration per layer of ``model``
    (:func:`bitfab.hw.kinds.configure`).

    Unrolled when ``fold`` is None. A :class:`~bitfab.hw.config.LayerFolds` gives each layer
    its own fold, taken as given (:func:`layer_folds`). With ``fold = (pe, simd)`` every layer
    is folded as its kind
    fits it (a dense layer gets ``pe`` capped at its ``out_features`` and ``simd`` lowered to
    the largest divisor of its ``in_features`` that is at most ``simd``: one fold rarely fits
    every layer of a network, e.g. a 10-class output layer); the sidecar and ``bitfab verilog``
    report what each layer got. A layer kind that cannot fold is refused by name.

    ``weights`` places the folded dense layers' weight memories
    (:data:`~bitfab.hw.config.STORAGES`):
    None or ``"bram"`` all in block RAM, ``"spram"`` all in SPRAM, or one entry per layer
    (``"bram"``, ``"spram"`` or None for a layer without a folded weight memory;
    :func:`bitfab.boards.build.plan_weights` chooses them for a board).
    """
    if not isinstance(model, IntegerModel):
        raise ConfigError(f"model must be an IntegerModel, not {type(model).__name__}")
    if isinstance(fold, LayerFolds):
        if len(fold) != len(model.layers):
            raise ConfigError(f"fold must have one entry per layer ({len(model.layers)}), "
                              f"not {len(fold)}")
        configs = tuple(kinds.configure(layer, f, pipeline, _where(model, i))
                        for i, (layer, f) in enumerate(zip(model.layers, fold)))
    else:
        configs = _network_wide(model, fold, pipeline)
    return _place_weights(configs, weights)


def _where(model: IntegerModel, index: int) -> str:
    name = getattr(model.layers[index], "name", None)
    return f"layers[{index}] ({name})" if name else f"layers[{index}]"


def _network_wide(model: IntegerModel, fold, pipeline: int) -> tuple:
    if fold is not None:
        pe, simd = fold
        if isinstance(pe, bool) or not isinstance(pe, int) or pe < 1:
            raise ConfigError(f"pe must be a positive integer, not {pe!r}")
        if isinstance(simd, bool) or not isinstance(simd, int) or simd < 1:
            raise ConfigError(f"simd must be a positive integer, not {simd!r}")
    return tuple(kinds.configure(layer, fold, pipeline, f"layers[{i}]", exact=False)
                 for i, layer in enumerate(model.layers))


def _place_weights(configs: tuple, weights) -> tuple:
    if weights is None or weights == "bram":
        return configs
    if isinstance(weights, str):
        if weights != "spram":
            raise ConfigError(f"weights must be 'bram' or 'spram', not {weights!r}")
        weights = ["spram" if spram_capable(c) else None for c in configs]
        if not any(weights):
            raise ConfigError("weights in spram need a folded dense layer: give a fold "
                              "(--fold PE,SIMD)")
    weights = tuple(weights)
    if len(weights) != len(configs):
        raise ConfigError(f"weights must name one storage per layer ({len(configs)}), "
                          f"not {len(weights)}")
    out = []
    for i, (cfg, where) in enumerate(zip(configs, weights)):
        if where in (None, "bram"):
            out.append(cfg)
            continue
        if not spram_capable(cfg):
            raise ConfigError(f"layers[{i}] ({cfg.layer.kind}, "
                              f"{getattr(cfg, 'architecture', 'unfolded')}) has no folded "
                              f"dense weight memory to put in {where}")
        try:
            out.append(cfg.replace(weights=where))
        except ConfigError as exc:
            raise ConfigError(f"layers[{i}]: {exc}") from None
    return tuple(out)


def layer_folds(model: IntegerModel, spec, pipeline: int = 0) -> LayerFolds:
    """Return the per-layer folds of ``model`` that ``spec`` asks for, each checked against its
    layer (:func:`bitfab.hw.kinds.configure`, exactly as given).

    ``spec`` is ``"balanced"`` (:func:`bitfab.hw.conv.balanced_configs`: every conv and dense
    layer the smallest fold whose interval stays within the unrolled network's slowest layer's;
    an lstm layer stays unrolled) or ``((layer, (pe, simd) or None), ...)`` as
    :func:`~bitfab.hw.config.parse_layer_folds` returns (``layer`` a name or 0-based index;
    layers not named stay unrolled).

    Raises
    ------
    ConfigError
        Naming the layer: one that the model does not have or that is named twice, one without
        weights to fold (pools, flatten, add), a kind that does not fold, a fold the layer
        cannot take (e.g. ``simd`` not dividing its inputs).
    """
    if spec == BALANCED:
        from .conv import balanced_configs
        return LayerFolds(tuple((c.pe, c.simd) if getattr(c, "architecture", None) == "folded"
                                else None for c in balanced_configs(model, pipeline)))
    if isinstance(spec, str):
        spec = parse_layer_folds(spec)
    names = [getattr(layer, "name", None) for layer in model.layers]
    listed = ", ".join(f"{i} {n}" if n else str(i) for i, n in enumerate(names))
    folds = [None] * len(model.layers)
    given = set()
    for key, fold in spec:
        key = str(key)
        if key.isdigit() and int(key) < len(names):
            index = int(key)
        elif key in names and names.count(key) == 1:
            index = names.index(key)
        else:
            why = "is not unique" if key in names else "does not exist"
            raise ConfigError(f"fold {key}={fold_text(fold)}: layer {key!r} {why} in {model.name} "
                              f"(layers: {listed})")
        if index in given:
            raise ConfigError(f"fold {key}={fold_text(fold)}: layers[{index}] is given twice")
        given.add(index)
        layer = model.layers[index]
        hooks = kinds.hw_kind(layer)
        if fold is not None and hooks.weightless:
            raise ConfigError(f"fold {key}={fold_text(fold)}: {_where(model, index)} is a "
                              f"{layer.kind} layer, which has no weights to fold")
        try:
            kinds.configure(layer, fold, pipeline, _where(model, index))
        except ConfigError as exc:
            raise ConfigError(f"fold {key}={fold_text(fold)}: {exc}") from None
        folds[index] = fold
    return LayerFolds(tuple(folds))


def resolve_fold(model: IntegerModel, text: str | None, pipeline: int = 0):
    """Return the fold that ``--fold`` ``text`` gives ``model``: None (``text`` None: unrolled),
    ``(pe, simd)`` for ``"PE,SIMD"`` (every layer, fitted to each), or a
    :class:`~bitfab.hw.config.LayerFolds` for ``"balanced"`` or ``"LAYER=PE,SIMD,..."``
    (:func:`layer_folds`: each layer's fold is checked against it here, before any work).
    Raises :class:`ConfigError` naming the layer and field."""
    if text is None:
        return None
    text = str(text).strip()
    if text == BALANCED or "=" in text:
        return layer_folds(model, text, pipeline)
    try:
        return parse_fold(text)
    except ConfigError:
        raise ConfigError(f"fold must be 'PE,SIMD' with two positive integers, 'balanced' or "
                          f"'LAYER=PE,SIMD,...', not {text!r}") from None


def spram_capable(config) -> bool:
    """Whether ``config`` is folded and its kind can keep its weights in SPRAM
    (:attr:`bitfab.hw.kinds.HwKind.spram`)."""
    return kinds.hw_kind(config.layer).spram and \
        getattr(config, "architecture", None) == "folded"


def build_network(model: IntegerModel, fold: tuple[int, int] | None = None,
                  pipeline: int = 0, weights=None) -> Network:
    """Return the :class:`Network` component of ``model`` (``weights``: see
    :func:`network_configs`)."""
    return Network(network_configs(model, fold, pipeline, weights))
