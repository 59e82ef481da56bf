"""The LSTM cell in hardware: one direction of a :class:`bitfab.lstm.Lstm` layer.

A stream of time steps comes in (``x`` and a ``last`` flag), a stream of hidden states goes out
(``h`` and the same ``last``), one per step. Per step the cell

- sums the four gate mat-vecs ``[W U] @ [x; h] + b`` with the dense datapaths
  (:func:`bitfab.hw.datapath.unrolled_terms`: constant weights, so a ternary weight is an
  add / subtract / skip and a pow2 weight a shift) into :func:`~bitfab.hw.adder_tree.sum_terms`
  trees, pipelined every ``pipeline`` levels;
- quantizes i, f, o with two comparators each (gate code 0, 1 or 2);
- reads the candidate tanh and the output tanh from ROMs (:class:`amaranth.lib.memory.Memory`
  with synchronous read ports, so they map to block RAM: iCE40 EBR, ECP5 DP16KD);
- forms the gate products with multiplexers (zero, arithmetic shift right by one, pass), adds
  and saturates the cell state;
- keeps ``h`` and ``c`` in registers, cleared after a step flagged ``last`` (the next sequence
  starts from zero).

The recurrence makes step ``t + 1`` wait for ``h_t``: the cell takes one step every
:attr:`LstmCell.initiation_interval` clocks.
"""

from __future__ import annotations

import dataclasses
import operator
import weakref
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from amaranth.hdl import Cat, Fragment, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError
from bitfab.lstm import Lstm
from bitfab.model import Dense, NoOutput, signed_bits

from . import kinds
from .adder_tree import sum_terms
from .config import ARCHITECTURES, ConfigError, LayerConfig
from .datapath import unrolled_terms

__all__ = ["LstmCell", "FoldedLstmCell", "LstmConfig", "LstmLayer", "BiLstmLayer",
           "configure_lstm", "build_lstm", "step_layout", "hidden_layout", "stacked_gates",
           "bi_output_layout", "buffer_memories", "direction_cell"]


def step_layout(layer: Lstm) -> data.StructLayout:
    """Payload of one input step: ``x`` codes (``input.bits`` each) and ``last``."""
    return data.StructLayout({"x": data.ArrayLayout(unsigned(layer.input.bits),
                                                    layer.in_features),
                              "last": unsigned(1)})


def hidden_layout(layer: Lstm) -> data.StructLayout:
    """Payload of one output: ``h`` codes (``hidden_bits`` each, two's complement) and ``last``."""
    return data.StructLayout({"h": data.ArrayLayout(unsigned(layer.hidden_bits), layer.hidden),
                              "last": unsigned(1)})


def gate_dense(layer: Lstm, d: int, k: int) -> Dense:
    """Return gate ``k`` (0..3 = i, f, g, o) of direction ``d`` as a dense layer over ``[x; h]``."""
    return Dense(layer.weights[d, k], layer.encoding, layer.concat_format, NoOutput(),
                 layer.bias[d, k], name=f"gate{'ifgo'[k]}")


def _gate_mul(m: Module, q, v, width: int, name: str) -> Signal:
    """The gate product ``0``, ``v >> 1`` (floor) or ``v`` for gate code ``q = 0, 1, 2``."""
    out = Signal(signed(width), name=name)
    m.d.comb += out.eq(Mux(q == 0, 0, Mux(q == 1, v >> 1, v)))
    return out


def _rom(m: Module, table, name: str, width: int):
    """A tanh table as a ROM (read through a synchronous port: block RAM); return it and its
    size."""
    size = len(table)
    mem = Memory(shape=signed(width), depth=size, init=[int(v) for v in table])
    m.submodules[name] = mem
    return mem, size


def _table_index(m: Module, value, shift: int, size: int, name: str) -> Signal:
    """``clamp(value >> shift, -S/2, S/2 - 1) + S/2`` (``S = size``): a tanh table's index."""
    half = size // 2
    shifted = Signal(signed(max(len(value) - shift, 1) + 1), name=f"{name}_sh")
    m.d.comb += shifted.eq(value >> shift)
    idx = Signal(range(size), name=f"{name}_idx")
    with m.If(shifted < -half):
        m.d.comb += idx.eq(0)
    with m.Elif(shifted > half - 1):
        m.d.comb += idx.eq(size - 1)
    with m.Else():
        m.d.comb += idx.eq((shifted + half)[:len(idx)])
    return idx


def _saturate(m: Module, total, lo: int, hi: int, name: str) -> Signal:
    """``clamp(total, lo, hi)`` in ``signed_bits(lo, hi)`` bits: the saturating cell state."""
    c = Signal(signed(signed_bits(lo, hi)), name=name)
    with m.If(total < lo):
        m.d.comb += c.eq(lo)
    with m.Elif(total > hi):
        m.d.comb += c.eq(hi)
    with m.Else():
        m.d.comb += c.eq(total)
    return c



class LstmCell(wiring.Component):
    """One direction of an integer LSTM layer, one time step per :attr:`initiation_interval`.

    Parameters
    ----------
    layer : Lstm
    direction : int
        Which direction's weights (a backward direction is this cell fed the reversed sequence).
    pipeline : int
        A register stage every ``pipeline`` adder levels of the gate sums (0: combinational).

    Members
    -------
    i : In(stream.Signature(step_layout(layer)))
    o : Out(stream.Signature(hidden_layout(layer)))
    """

    def __init__(self, layer: Lstm, direction: int = 0, pipeline: int = 0):
        if not isinstance(layer, Lstm):
            self._MustUse__silence = True
            raise BitfabError(f"layer must be an Lstm, not {type(layer).__name__}")
        try:
            direction = operator.index(direction)
            pipeline = operator.index(pipeline)
        except TypeError:
            self._MustUse__silence = True
            raise BitfabError(f"direction and pipeline must be integers, not "
                              f"{direction!r}, {pipeline!r}") from None
        if not 0 <= direction < layer.directions:
            self._MustUse__silence = True
            raise BitfabError(f"direction must be in 0..{layer.directions - 1}, "
                              f"not {direction!r}")
        if pipeline < 0:
            self._MustUse__silence = True
            raise BitfabError(f"pipeline must be >= 0, not {pipeline!r}")
        self._layer, self._direction, self._pipeline = layer, direction, pipeline
        self._gates = [gate_dense(layer, direction, k) for k in range(4)]
        self._tree = None
        self._prebuilt = None
        super().__init__({
            "i": In(stream.Signature(step_layout(layer))),
            "o": Out(stream.Signature(hidden_layout(layer))),
        })

    @property
    def layer(self) -> Lstm:
        return self._layer

    @property
    def direction(self) -> int:
        return self._direction

    @property
    def tree_latency(self) -> int:
        """Register stages of the deepest gate sum (0 when ``pipeline == 0``)."""
        if self._tree is None:
            # the adder trees decide the depth: build once and keep the module for elaborate()
            self._prebuilt = Module()
            self._build(self._prebuilt)
        return self._tree

    @property
    def initiation_interval(self) -> int:
        """Clocks per time step at full throughput: ``tree_latency + 4`` (the input register,
        the gate sums' register stages, two synchronous ROM reads, the state and output
        registers)."""
        return self.tree_latency + 4

    @property
    def latency(self) -> int:
        """Clocks from an input transfer to ``o.valid`` of its hidden state when the output is
        free: ``tree_latency + 4``."""
        return self.tree_latency + 4

    def elaborate(self, platform):
        if self._prebuilt is not None:
            m, self._prebuilt = self._prebuilt, None
            return m
        m = Module()
        self._build(m)
        return m

    def _build(self, m: Module) -> None:
        layer, d = self._layer, self._direction
        hidden, n_in = layer.hidden, layer.in_features
        hb = layer.hidden_bits
        fmt = layer.input

        # --- state: x of the step in flight, h, c ------
        x_reg = [Signal(signed(fmt.bits) if fmt.signed else unsigned(fmt.bits), name=f"x{k}")
                 for k in range(n_in)]
        last = Signal(name="last_reg")
        h_reg = [Signal(signed(hb), name=f"h{j}") for j in range(hidden)]
        c_reg = [Signal(signed(layer.cell_bits), name=f"c{j}") for j in range(hidden)]
        busy = Signal(name="busy")  # a step is being computed

        # --- the four gate mat-vecs (dense datapaths over [x; h]) ------
        xs = x_reg + h_reg
        sums = []
        tree = 0
        for k, gate in enumerate(self._gates):
            row = []
            for j in range(hidden):
                terms, negated = unrolled_terms(m, gate, j, xs, {})
                s, lat = sum_terms(m, terms, negated, const=int(gate.bias[j]),
                                   pipeline=self._pipeline, name=f"acc_{'ifgo'[k]}{j}")
                row.append((s, lat))
                tree = max(tree, lat)
            sums.append(row)
        self._tree = tree
        count = Signal(range(tree + 3), name="count")

        # registers of the trees keep loading every clock: the inputs (x_reg, h_reg) hold still
        # for the whole step, so after ``tree`` clocks every sum is settled
        acc = [[s for s, _ in row] for row in sums]

        # --- gate quantizers: two comparators each ------
        def code(k: int, j: int):
            t = layer.gate_thresholds[d, {0: 0, 1: 1, 3: 2}[k], j]
            a = acc[k][j]
            q = Signal(range(3), name=f"q_{'ifgo'[k]}{j}")
            m.d.comb += q.eq((a >= int(t[0])).as_unsigned() + (a >= int(t[1])).as_unsigned())
            return q

        def gate_mul(q, v, width: int, name: str):
            return _gate_mul(m, q, v, width, name)

        def rom(table, name: str, width: int):
            return _rom(m, table, name, width)

        def index(value, shift: int, size: int, name: str):
            return _table_index(m, value, shift, size, name)

        lo, hi = layer.cell_range
        wide = signed_bits(2 * lo, 2 * hi)
        h_new, c_new = [], []
        for j in range(hidden):
            qi, qf, qo = code(0, j), code(1, j), code(3, j)
            mem, size = rom(layer.cand_table[d], f"cand_rom{j}", layer.cell_bits)
            port = mem.read_port()
            m.d.comb += port.addr.eq(index(acc[2][j], int(layer.cand_shift[d]), size, f"g{j}"))
            g = port.data
            total = Signal(signed(wide), name=f"csum{j}")
            m.d.comb += total.eq(gate_mul(qf, c_reg[j], layer.cell_bits, f"fc{j}")
                                 + gate_mul(qi, g, layer.cell_bits, f"ig{j}"))
            c = _saturate(m, total, lo, hi, f"cnew{j}")
            mem, size = rom(layer.cell_table[d], f"cell_rom{j}", hb)
            port = mem.read_port()
            m.d.comb += port.addr.eq(index(c, int(layer.cell_shift[d]), size, f"t{j}"))
            h_new.append(gate_mul(qo, port.data, hb, f"hnew{j}"))
            c_new.append(c)

        # --- control: take a step, wait for the sums, update the state, emit h ------
        done = Signal(name="done")
        # two synchronous ROM reads follow the sums: the candidate, then the output tanh of the
        # new cell state; the inputs hold still, so every value settles and stays
        m.d.comb += done.eq(busy & (count == tree + 2))
        m.d.comb += self.i.ready.eq(~busy & (~self.o.valid | self.o.ready))
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [busy.eq(1), count.eq(0), last.eq(self.i.payload.last)]
            m.d.sync += [x_reg[k].eq(self.i.payload.x[k]) for k in range(n_in)]
        with m.Elif(busy & ~done):
            m.d.sync += count.eq(count + 1)
        with m.If(done):
            m.d.sync += [busy.eq(0), self.o.valid.eq(1), self.o.payload.last.eq(last)]
            for j in range(hidden):
                m.d.sync += self.o.payload.h[j].eq(h_new[j])
                # the next sequence starts from zero state
                m.d.sync += [h_reg[j].eq(Mux(last, 0, h_new[j])),
                             c_reg[j].eq(Mux(last, 0, c_new[j]))]


def stacked_gates(layer: Lstm, d: int) -> Dense:
    """Return the gate mat-vec of direction ``d`` as one dense layer over ``[x; h]``: ``4 *
    hidden`` rows, unit-major (row ``4 * j + k`` is gate ``k`` = i, f, g, o of unit ``j``, so a
    unit's four sums sit side by side in the output vector), no output stage (the accumulators
    leave as they are)."""
    hidden, cols = layer.hidden, layer.weights.shape[-1]
    w = layer.weights[d].transpose(1, 0, 2).reshape(4 * hidden, cols)
    b = layer.bias[d].T.reshape(-1)
    return Dense(w, layer.encoding, layer.concat_format, NoOutput(), b, name="gates")


class FoldedLstmCell(wiring.Component):
    """One direction of an integer LSTM layer with the gate mat-vec folded (``pe`` x ``simd``
    weights per clock, weights in block RAM) and the nonlinear stage serial (one unit per clock).

    Same ports and protocol as :class:`LstmCell`. Per step:

    1. ``[x; h]`` goes to a :class:`~bitfab.hw.layer.FoldedDense` over :func:`stacked_gates`
       (the existing folded datapath: ``ceil(4H / pe) * (in + H) / simd`` clocks, then its
       adder tree and output register), which gives all ``4H`` accumulators at once;
    2. while the dense output is held, units ``j = 0 .. H-1`` go one per clock through a
       four-stage pipeline: select unit ``j``'s four sums, its six thresholds (a constant
       table in logic) and its cell state ``c[j]`` (a small memory); quantize i, f, o and
       read the candidate tanh; form ``c``, saturate it, write it back, read the output tanh;
       gate it by ``o`` into ``h[j]``. One candidate and one output ROM serve every unit, so
       the nonlinear stage does not grow with ``hidden``.

    ``h`` lives in registers (they are the output payload, and the dense datapath reads all of
    ``h`` at once as half of its input vector); ``c`` lives in a ``hidden``-word memory (read and
    written one unit at a time; block RAM or logic, as the synthesis decides). After a step
    flagged ``last`` the next step reads ``h = 0`` and ``c = 0``.

    The next step's input is taken as soon as ``h`` is complete, while the consumer may still
    hold the output; its nonlinear stage waits until the output has been read.

    Parameters
    ----------
    layer : Lstm
    direction : int
        Which direction's weights (a backward direction is this cell fed the reversed sequence).
    pe, simd : int
        Gate rows and ``[x; h]`` columns per clock of the folded mat-vec (``1 <= pe <= 4 *
        hidden``, ``simd`` dividing ``in_features + hidden``).
    pipeline : int
        A register stage every ``pipeline`` adder levels of the folded datapath's tree.
    gates : wiring.Component or None
        Another engine for step 1 in place of the folded mat-vec (``pe``, ``simd`` and
        ``pipeline`` are then unused): a component with the same ``i`` / ``o`` streams as that
        :class:`~bitfab.hw.layer.FoldedDense` (``[x; h]`` in; the ``4 H`` accumulators out,
        unit-major, bias included, held until read) and the members ``latency`` and
        ``acc_bits`` (:class:`bitfab.hw.lstm_mps.MpsGates`: the MPS chain).

    Members
    -------
    i : In(stream.Signature(step_layout(layer)))
    o : Out(stream.Signature(hidden_layout(layer)))
    """

    def __init__(self, layer: Lstm, direction: int = 0, pe: int = 1, simd: int = 1,
                 pipeline: int = 0, gates=None):
        if not isinstance(layer, Lstm):
            self._MustUse__silence = True
            raise BitfabError(f"layer must be an Lstm, not {type(layer).__name__}")
        try:
            direction = operator.index(direction)
        except TypeError:
            self._MustUse__silence = True
            raise BitfabError(f"direction must be an integer, not {direction!r}") from None
        if not 0 <= direction < layer.directions:
            self._MustUse__silence = True
            raise BitfabError(f"direction must be in 0..{layer.directions - 1}, "
                              f"not {direction!r}")
        from .layer import FoldedDense
        self._layer, self._direction = layer, direction
        if gates is not None:
            # another engine for the gate sums (hw.lstm_mps: the MPS chain), the same contract
            self._gates, self._dense, self._acc_bits = None, gates, gates.acc_bits
        else:
            try:
                self._gates = LayerConfig.folded(stacked_gates(layer, direction), pe, simd,
                                                 pipeline)
            except ConfigError:
                self._MustUse__silence = True
                raise
            # one output register of 4H accumulators (FoldedDense has no staging copy): the
            # cell reads every accumulator before it sends the next [x; h]
            self._dense = FoldedDense(self._gates)
            self._acc_bits = self._gates.out_bits
        super().__init__({
            "i": In(stream.Signature(step_layout(layer))),
            "o": Out(stream.Signature(hidden_layout(layer))),
        })

    @property
    def layer(self) -> Lstm:
        return self._layer

    @property
    def direction(self) -> int:
        return self._direction

    @property
    def gates(self) -> LayerConfig | None:
        """The folded configuration of the gate mat-vec (:func:`stacked_gates`); None when
        another engine computes the gate sums (the ``gates`` parameter)."""
        return self._gates

    @property
    def dense_latency(self) -> int:
        """Clocks from ``[x; h]`` entering the folded mat-vec to its accumulators:
        ``ceil(4H / pe) * (in + H) / simd + 2 + Lt`` (:attr:`FoldedDense.latency`)."""
        return self._dense.latency

    @property
    def latency(self) -> int:
        """Clocks from an input transfer to ``o.valid`` of its hidden state when the output is
        free: :attr:`dense_latency` ``+ hidden + 3`` (one unit per clock into the four-stage
        nonlinear pipeline, the last unit's three more stages)."""
        return self.dense_latency + self._layer.hidden + 3

    @property
    def initiation_interval(self) -> int:
        """Clocks per time step at full throughput: :attr:`latency` (the next step needs this
        step's ``h``), i.e. ``ceil(4H / pe) * (in + H) / simd + Lt + H + 5``."""
        return self.latency

    def elaborate(self, platform):
        m = Module()
        layer, d = self._layer, self._direction
        hidden, n_in = layer.hidden, layer.in_features
        hb, cb = layer.hidden_bits, layer.cell_bits
        zb = layer.concat_format.bits
        m.submodules.gates = dense = self._dense
        ab = self._acc_bits  # the accumulators' width (NoOutput: acc_bits)

        busy = Signal(name="busy")      # a step has entered and its h is not complete
        last = Signal(name="last_reg")  # the step in flight ends its sequence
        zero = Signal(name="zero")      # the next step starts a sequence: h = c = 0
        fresh = Signal(name="fresh")    # the step in flight starts a sequence
        h = [self.o.payload.h[j] for j in range(hidden)]

        # --- the folded mat-vec over [x; h] ------
        fmt = layer.input
        for k in range(n_in):
            code = self.i.payload.x[k]
            m.d.comb += dense.i.payload[k].eq(code.as_signed() if fmt.signed else code)
        for j in range(hidden):
            m.d.comb += dense.i.payload[n_in + j].eq(Mux(zero, 0, h[j].as_signed()))
        assert len(dense.i.payload[0]) == zb
        m.d.comb += [dense.i.valid.eq(self.i.valid & ~busy),
                     self.i.ready.eq(dense.i.ready & ~busy)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [busy.eq(1), last.eq(self.i.payload.last), fresh.eq(zero), zero.eq(0)]

        # --- the nonlinear stage, one unit per clock while the dense output is held ------
        # stage 0: unit j's four sums; thresholds and c[j] are read (synchronous ports)
        unit = Signal(range(hidden), name="unit")
        issue = Signal(name="issue")
        m.d.comb += issue.eq(dense.o.valid & ~self.o.valid)
        final = unit == hidden - 1
        m.d.comb += dense.o.ready.eq(issue & final)
        with m.If(issue):
            m.d.sync += unit.eq(Mux(final, 0, unit + 1))
        lo_t, hi_t = -(1 << (ab - 1)), 1 << (ab - 1)  # thresholds outside clamp to these
        tb = ab + 1
        thr = np.clip(layer.gate_thresholds[d], lo_t, hi_t)  # (3, hidden, 2)
        words = []
        for j in range(hidden):
            word = 0
            for n, t in enumerate(thr[:, j].reshape(-1)):
                word |= (int(t) & ((1 << tb) - 1)) << (n * tb)
            words.append(word)
        # the six thresholds of unit j: a constant table in logic, registered (a block RAM
        # would spend ~6 EBR on a few hundred bits)
        tword = Signal(6 * tb, name="thresholds")
        with m.Switch(unit):
            for j, word in enumerate(words):
                with m.Case(j):
                    m.d.sync += tword.eq(word)
        m.submodules.cells = cmem = Memory(shape=signed(cb), depth=hidden, init=[])
        cread = cmem.read_port()
        cwrite = cmem.write_port()
        m.d.comb += cread.addr.eq(unit)
        sums = dense.o.payload.as_value().word_select(unit, 4 * ab) if hidden > 1 else \
            dense.o.payload.as_value()
        acc1 = [Signal(signed(ab), name=f"acc1_{g}") for g in "ifgo"]
        v1 = Signal(name="v1")
        j1 = Signal(range(hidden), name="j1")
        m.d.sync += [v1.eq(issue), j1.eq(unit)]
        m.d.sync += [a.eq(sums[k * ab:(k + 1) * ab].as_signed()) for k, a in enumerate(acc1)]

        # stage 1: gate codes i, f, o; the candidate tanh is read
        t = [tword[n * tb:(n + 1) * tb].as_signed() for n in range(6)]
        q1 = []
        for n, k in enumerate((0, 1, 3)):
            q = Signal(range(3), name=f"q1_{'ifgo'[k]}")
            m.d.comb += q.eq((acc1[k] >= t[2 * n]).as_unsigned()
                             + (acc1[k] >= t[2 * n + 1]).as_unsigned())
            q1.append(q)
        cand, size = _rom(m, layer.cand_table[d], "cand_rom", cb)
        cand_port = cand.read_port()
        m.d.comb += cand_port.addr.eq(_table_index(m, acc1[2], int(layer.cand_shift[d]), size,
                                                   "g"))
        q2 = [Signal(range(3), name=f"q2_{g}") for g in "ifo"]
        c2 = Signal(signed(cb), name="c2")
        v2 = Signal(name="v2")
        j2 = Signal(range(hidden), name="j2")
        m.d.sync += [v2.eq(v1), j2.eq(j1), c2.eq(Mux(fresh, 0, cread.data))]
        m.d.sync += [a.eq(b) for a, b in zip(q2, q1)]

        # stage 2: the new cell state, saturated and written back; the output tanh is read
        lo, hi = layer.cell_range
        total = Signal(signed(signed_bits(2 * lo, 2 * hi)), name="csum")
        m.d.comb += total.eq(_gate_mul(m, q2[1], c2, cb, "fc")
                             + _gate_mul(m, q2[0], cand_port.data, cb, "ig"))
        c = _saturate(m, total, lo, hi, "cnew")
        m.d.comb += [cwrite.addr.eq(j2), cwrite.data.eq(c), cwrite.en.eq(v2)]
        cell, size = _rom(m, layer.cell_table[d], "cell_rom", hb)
        cell_port = cell.read_port()
        m.d.comb += cell_port.addr.eq(_table_index(m, c, int(layer.cell_shift[d]), size, "t"))
        q3 = Signal(range(3), name="q3_o")
        v3 = Signal(name="v3")
        j3 = Signal(range(hidden), name="j3")
        m.d.sync += [v3.eq(v2), j3.eq(j2), q3.eq(q2[2])]

        # stage 3: h[j] = o * tanh(c[j]); the last unit completes the step
        h_new = _gate_mul(m, q3, cell_port.data, hb, "hnew")
        with m.If(v3):
            with m.Switch(j3):
                for j in range(hidden):
                    with m.Case(j):
                        m.d.sync += h[j].eq(h_new)
            with m.If(j3 == hidden - 1):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1), self.o.payload.last.eq(last),
                             zero.eq(last)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m


# --- the layer component (the hw hook of the lstm kind) -------------------------------------------


@dataclass(frozen=True, eq=False)
class LstmConfig:
    """How an lstm layer becomes hardware: one cell per direction, :class:`LstmCell` (unrolled)
    or :class:`FoldedLstmCell` (folded).

    Members
    -------
    layer : Lstm
        A forward (``directions == 1``, :class:`LstmLayer`) or bidirectional layer
        (``directions == 2``, :class:`BiLstmLayer`: the sequence buffered in block RAM).
    pipeline : int
        A register stage every ``pipeline`` adder levels of the gate sums.
    architecture : ``"unrolled"`` or ``"folded"``
        *unrolled*: the four gate mat-vecs as constant-weight adder trees and one nonlinear
        stage per unit; *folded*: the stacked gate mat-vec on the folded dense datapath
        (``pe`` rows x ``simd`` columns of ``[x; h]`` per clock, weights in block RAM) and one
        serial nonlinear stage.
    pe : int or None
        Gate rows per clock, folded only: ``1 <= pe <= 4 * hidden``.
    simd : int or None
        ``[x; h]`` columns per clock, folded only: divides ``in_features + hidden``.
    weights : ``"bram"``
        Where the folded gate weights live (block RAM; SPRAM is not built for lstm layers).

    Raises
    ------
    ConfigError
        Naming the field: an unknown architecture, ``pe``/``simd`` given to an unrolled layer
        or out of range for a folded one, weights other than ``"bram"``.
    """

    layer: Lstm
    pipeline: int = 1
    architecture: str = "unrolled"
    pe: int | None = None
    simd: int | None = None
    weights: str = "bram"

    #: what the messages call the layer (a subclass for another kind names its own)
    _what: ClassVar[str] = "lstm layer"

    def __post_init__(self):
        if not isinstance(self.layer, Lstm):
            raise ConfigError(f"layer must be an Lstm, not {type(self.layer).__name__}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be 'unrolled' or 'folded', "
                              f"not {self.architecture!r}")
        if self.weights != "bram":
            raise ConfigError(f"weights of an {self._what} must be 'bram' (its folded gate "
                              f"weights in block RAM), not {self.weights!r}")
        if self.architecture == "unrolled":
            if self.pe is not None or self.simd is not None:
                raise ConfigError(f"pe and simd apply to the folded architecture only, not to "
                                  f"an unrolled {self._what} (pe={self.pe!r}, "
                                  f"simd={self.simd!r})")
            return
        self._check_fold()

    def _check_fold(self) -> None:
        """Refuse a folded configuration's ``pe`` / ``simd`` that the stacked gate mat-vec
        cannot take."""
        layer = self.layer
        rows, cols = 4 * layer.hidden, layer.in_features + layer.hidden
        for what, value in (("pe", self.pe), ("simd", self.simd)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"a folded lstm layer needs an integer {what}, not {value!r}")
        if not 1 <= self.pe <= rows:
            raise ConfigError(f"pe must be in 1..{rows} (4 gates x {layer.hidden} hidden "
                              f"units), not {self.pe}")
        if self.simd < 1 or cols % self.simd:
            raise ConfigError(f"simd must divide in_features + hidden ({layer.in_features} + "
                              f"{layer.hidden} = {cols}), not {self.simd}")

    def replace(self, **changes) -> LstmConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def gates(self, direction: int = 0) -> LayerConfig:
        """The dense configuration of direction ``direction``'s gate mat-vec
        (:func:`stacked_gates`): folded at ``pe, simd`` or unrolled (the unrolled cell builds
        its trees itself; this one is for estimates)."""
        dense = stacked_gates(self.layer, direction)
        if self.architecture == "folded":
            return LayerConfig.folded(dense, self.pe, self.simd, self.pipeline)
        return LayerConfig.unrolled(dense, self.pipeline)

    @property
    def dense(self) -> LayerConfig:
        """The gate mat-vec of direction 0 (:meth:`gates`): what estimates of the weights'
        logic and block RAM read (:mod:`bitfab.boards.build`)."""
        return self.gates(0)

    @property
    def serial(self) -> bool:
        """Whether the cells are :class:`FoldedLstmCell` (one nonlinear stage for all units,
        tables and cell states in memories): folded, or fed by another engine."""
        return self.architecture == "folded"

    def gate_engine(self, direction: int):
        """The component that computes direction ``direction``'s gate sums in place of the
        cell's own mat-vec (:class:`FoldedLstmCell`'s ``gates``), or None: the cell's own
        (this class). A subclass for another layer kind returns its engine
        (:class:`bitfab.hw.lstm_mps.MpsLstmConfig`: the MPS chain)."""
        return None

    @property
    def initiation_interval(self) -> int:
        """Clocks per time step at full throughput (the cell's
        :attr:`~LstmCell.initiation_interval`; built once per layer and fold to know its adder
        trees: the fold choice asks for dozens of folds)."""
        key = (type(self).__name__, self.architecture, self.pe, self.simd, self.pipeline)
        known = _INTERVALS.setdefault(self.layer, {})
        if key not in known:
            cell = _cell(self, 0)
            # elaborated once (and then dropped): its adder trees decide the depth
            Fragment.get(cell, None)
            known[key] = cell.initiation_interval
        return known[key]

    def to_json(self) -> dict:
        layer = self.layer
        return {
            "kind": layer.kind, "architecture": self.architecture, "pe": self.pe,
            "simd": self.simd, "weights": self.weights if self.architecture == "folded" else None,
            "pipeline": self.pipeline, "datapath": layer.datapath,
            "in_features": layer.in_features, "out_features": layer.out_features,
            "hidden": layer.hidden, "directions": layer.directions, "returns": layer.returns,
            "encoding": layer.encoding.to_json(),
            "input": layer.input.to_json(), "acc_bits": layer.acc_bits,
            "hidden_bits": layer.hidden_bits, "cell_bits": layer.cell_bits,
            "max_length": layer.max_length, "name": layer.name,
        }


#: per layer, the initiation intervals of the folds asked for (LstmConfig.initiation_interval)
_INTERVALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cell(config: LstmConfig, direction: int):
    """The cell of ``direction`` that ``config`` describes."""
    engine = config.gate_engine(direction)
    if engine is not None:  # another engine for the gate sums: the folded cell's serial stage
        return FoldedLstmCell(config.layer, direction, gates=engine)
    if config.architecture == "folded":
        return FoldedLstmCell(config.layer, direction, config.pe, config.simd, config.pipeline)
    return LstmCell(config.layer, direction, config.pipeline)


class LstmLayer(wiring.Component):
    """An lstm layer behind the layer contract (:mod:`bitfab.hw.kinds`).

    ``i`` takes one time step per transfer (:func:`step_layout`: ``x`` codes, ``last`` on a
    sequence's final step). ``o`` gives ``h`` and ``last`` per step (``returns="sequence"``,
    :func:`hidden_layout`) or only the final ``h`` of each sequence (``returns="last"``: an
    element array, the steps before the last are consumed inside).

    Parameters
    ----------
    config : LstmConfig
    """

    def __init__(self, config: LstmConfig):
        if not isinstance(config, LstmConfig):
            self._MustUse__silence = True
            raise ConfigError(f"config must be an LstmConfig, not {type(config).__name__}")
        layer = config.layer
        self._config = config
        self._cell = _cell(config, 0)
        out = hidden_layout(layer) if layer.returns == "sequence" else \
            data.ArrayLayout(unsigned(layer.hidden_bits), layer.hidden)
        super().__init__({
            "i": In(stream.Signature(step_layout(layer))),
            "o": Out(stream.Signature(out)),
        })

    @property
    def config(self) -> LstmConfig:
        return self._config

    @property
    def layer(self) -> Lstm:
        return self._config.layer

    @property
    def cell(self) -> LstmCell | FoldedLstmCell:
        return self._cell

    @property
    def latency(self) -> int:
        """The cell's latency (:attr:`LstmCell.latency`); with ``returns="last"`` counted from
        the transfer of a sequence's final step."""
        return self._cell.latency

    @property
    def initiation_interval(self) -> int:
        """Clocks per time step (:attr:`LstmCell.initiation_interval`)."""
        return self._cell.initiation_interval

    def elaborate(self, platform):
        m = Module()
        m.submodules.cell = cell = self._cell
        wiring.connect(m, wiring.flipped(self.i), cell.i)
        if self.layer.returns == "sequence":
            wiring.connect(m, cell.o, wiring.flipped(self.o))
            return m
        # only the final step of a sequence leaves; the others are taken and dropped here
        final = cell.o.payload.last
        m.d.comb += [
            self.o.payload.eq(cell.o.payload.h),
            self.o.valid.eq(cell.o.valid & final),
            cell.o.ready.eq(self.o.ready | ~final),
        ]
        return m


def direction_cell(config: LstmConfig, direction: int) -> wiring.Component:
    """Return the cell of one direction of ``config``'s layer (as the configuration builds
    it): a component with ``i`` (:func:`step_layout`), ``o`` (:func:`hidden_layout`),
    ``latency`` and ``initiation_interval`` (:class:`LstmCell` unrolled, :class:`FoldedLstmCell`
    folded)."""
    return _cell(config, direction)


def buffer_memories(layer: Lstm) -> list[tuple[int, int]]:
    """``(depth, width)`` of the block RAMs a bidirectional layer buffers a sequence in
    (:class:`BiLstmLayer`: ``x``, and ``h_f``, ``h_b`` with ``returns="sequence"``); none for a
    forward layer."""
    if layer.directions == 1:
        return []
    x = (layer.max_length, layer.in_features * layer.input.bits)
    h = (layer.max_length, layer.hidden * layer.hidden_bits)
    return [x, h, h] if layer.returns == "sequence" else [x]


def bi_output_layout(layer: Lstm) -> data.Layout:
    """Payload of a bidirectional layer's output: ``concat(h_fwd, h_bwd)`` codes
    (``hidden_bits`` each) and ``last`` per step (``returns="sequence"``), or the codes alone
    (``"last"``)."""
    h = data.ArrayLayout(unsigned(layer.hidden_bits), layer.out_features)
    return data.StructLayout({"h": h, "last": unsigned(1)}) if layer.returns == "sequence" \
        else h


class BiLstmLayer(wiring.Component):
    """A bidirectional lstm layer behind the layer contract: one cell per direction, the
    sequence buffered in block RAM.

    Per sequence (of length ``L <= layer.max_length``):

    1. *take*: the steps come in on ``i``; each goes to the forward cell as it arrives and into
       the ``x`` memory (``max_length`` words); the forward cell's ``h_f[t]`` go into the
       ``h_f`` memory as they leave it;
    2. *backward*: after the step flagged ``last`` is taken, ``i`` is not ready; the backward
       cell is fed ``x[L-1] .. x[0]`` from the ``x`` memory (``last`` on ``x[0]``) and its
       ``h_b[t]`` go into the ``h_b`` memory;
    3. *emit*: once both cells have given their final step, ``o`` gives
       ``concat(h_f[t], h_b[t])`` for ``t = 0 .. L-1`` with ``last`` on ``t = L-1``
       (``returns="sequence"``), or ``concat(h_f[L-1], h_b[0])`` once (``"last"``: each
       direction's final state, as :func:`bitfab.sim.lstm.lstm_layer` gives it; no ``h``
       memories then); then it takes the next sequence.

    Steps of a sequence beyond ``max_length`` (the host and the golden model refuse them) go
    through the forward cell but are not stored: the memories are never written out of range,
    the backward direction runs over the first ``max_length`` steps and ``o`` gives
    ``max_length`` steps for that sequence (``returns="sequence"``).

    With ``II`` and ``Lc`` the cells' initiation interval and latency, a sequence of ``L``
    steps occupies the layer for ``(L - 1) * II`` (take, at the producer's rate at best)
    ``+ (L - 1) * II + Lc`` (backward) ``+ L`` (emit, ``returns="sequence"`` only) ``+ 5``
    clocks (measured with a producer and a consumer that never wait; ``Lc == II`` for both
    cells): :attr:`initiation_interval` is ``2 * II + 1`` clocks per step, on average.

    Parameters
    ----------
    config : LstmConfig
        Of a layer with ``directions == 2``.
    """

    def __init__(self, config: LstmConfig):
        if not isinstance(config, LstmConfig):
            self._MustUse__silence = True
            raise ConfigError(f"config must be an LstmConfig, not {type(config).__name__}")
        layer = config.layer
        if layer.directions != 2:
            self._MustUse__silence = True
            raise ConfigError(f"BiLstmLayer needs a bidirectional layer (directions=2), not "
                              f"directions={layer.directions}")
        self._config = config
        self._cells = (direction_cell(config, 0), direction_cell(config, 1))
        super().__init__({
            "i": In(stream.Signature(step_layout(layer))),
            "o": Out(stream.Signature(bi_output_layout(layer))),
        })

    @property
    def config(self) -> LstmConfig:
        return self._config

    @property
    def layer(self) -> Lstm:
        return self._config.layer

    @property
    def cells(self) -> tuple:
        """The forward and the backward cell."""
        return self._cells

    @property
    def initiation_interval(self) -> int:
        """Clocks per step at full throughput, on average over a sequence: ``2 * II + 1`` (the
        forward pass, the backward pass and the emission one after the other)."""
        return self._cells[0].initiation_interval + self._cells[1].initiation_interval + 1

    @property
    def latency(self) -> int:
        """Clock edges from the transfer of a sequence's final step to the first output when
        nothing stalls, for the longest sequence (``max_length``): the backward pass,
        ``(max_length - 1) * II + latency`` of the backward cell, plus 4 (the first ``x``
        read, the done flag, the phase change, the output) and 1 more with
        ``returns="sequence"`` (the ``h`` memories' read). A sequence of ``L`` steps takes
        ``(max_length - L) * II`` clocks less (measured in ``tests/test_lstm_bidir.py``)."""
        bwd = self._cells[1]
        return (self.layer.max_length - 1) * bwd.initiation_interval + bwd.latency + 4 \
            + (self.layer.returns == "sequence")

    def elaborate(self, platform):
        m = Module()
        layer = self.layer
        fwd, bwd = self._cells
        m.submodules.forward = fwd
        m.submodules.backward = bwd
        n, hidden, hb = layer.max_length, layer.hidden, layer.hidden_bits
        seq = layer.returns == "sequence"
        x_bits = layer.in_features * layer.input.bits
        h_bits = hidden * hb

        m.submodules.x_mem = x_mem = Memory(shape=unsigned(x_bits), depth=n, init=[])
        x_wr, x_rd = x_mem.write_port(), x_mem.read_port()
        if seq:
            m.submodules.hf_mem = hf_mem = Memory(shape=unsigned(h_bits), depth=n, init=[])
            m.submodules.hb_mem = hb_mem = Memory(shape=unsigned(h_bits), depth=n, init=[])
            hf_wr, hf_rd = hf_mem.write_port(), hf_mem.read_port()
            hb_wr, hb_rd = hb_mem.write_port(), hb_mem.read_port()
        else:
            hf_last = Signal(h_bits, name="hf_last")
            hb_last = Signal(h_bits, name="hb_last")

        count = Signal(range(n + 1), name="count")   # steps stored (saturates at max_length)
        f_count = Signal(range(n + 1), name="f_count")  # forward outputs stored
        f_done, b_done = Signal(name="f_done"), Signal(name="b_done")
        b_idx = Signal(range(n), name="b_idx")    # the step fed to the backward cell next
        b_out = Signal(range(n), name="b_out")    # where its next output goes
        b_valid = Signal(name="b_valid")
        t = Signal(range(n + 1), name="t")        # the step read for the output next
        o_valid = Signal(name="o_valid")
        o_last = Signal(name="o_last")
        reset = Signal(name="reset")  # the sequence has left: back to taking steps

        # the phase (plain registers and expressions, no FSM: every output is a continuous
        # assignment, which event-driven simulators evaluate from time 0)
        TAKE, BACKWARD, DRAIN, EMIT = range(4)
        phase = Signal(range(4), name="phase")
        taking, backward, emitting = phase == TAKE, phase == BACKWARD, phase == EMIT
        took = self.i.valid & self.i.ready
        fed = bwd.i.valid & bwd.i.ready

        # the forward cell: every output is taken and stored (h_f[t], or the final one)
        m.d.comb += fwd.o.ready.eq(1)
        with m.If(fwd.o.valid & fwd.o.payload.last):
            m.d.sync += f_done.eq(1)
        if seq:
            m.d.comb += [hf_wr.addr.eq(f_count), hf_wr.data.eq(fwd.o.payload.h.as_value()),
                         hf_wr.en.eq(fwd.o.valid & (f_count < n))]
            with m.If(fwd.o.valid & (f_count < n)):
                m.d.sync += f_count.eq(f_count + 1)
        else:
            with m.If(fwd.o.valid & fwd.o.payload.last):
                m.d.sync += hf_last.eq(fwd.o.payload.h.as_value())
        # the backward cell likewise, from the sequence's last stored step down to step 0
        m.d.comb += bwd.o.ready.eq(1)
        with m.If(bwd.o.valid & bwd.o.payload.last):
            m.d.sync += b_done.eq(1)
        if seq:
            m.d.comb += [hb_wr.addr.eq(b_out), hb_wr.data.eq(bwd.o.payload.h.as_value()),
                         hb_wr.en.eq(bwd.o.valid)]
            with m.If(bwd.o.valid & (b_out != 0)):
                m.d.sync += b_out.eq(b_out - 1)
        else:
            with m.If(bwd.o.valid & bwd.o.payload.last):
                m.d.sync += hb_last.eq(bwd.o.payload.h.as_value())

        # take: each step to the forward cell and (while there is room) into the x memory
        m.d.comb += [
            fwd.i.payload.eq(self.i.payload),
            fwd.i.valid.eq(self.i.valid & taking),
            self.i.ready.eq(fwd.i.ready & taking),
            x_wr.addr.eq(count), x_wr.data.eq(self.i.payload.x.as_value()),
            x_wr.en.eq(took & (count < n)),
        ]
        with m.If(took & (count < n)):
            m.d.sync += count.eq(count + 1)
        with m.If(took & self.i.payload.last):
            start = Mux(count < n, count, n - 1)
            m.d.sync += [b_idx.eq(start), b_out.eq(start), b_valid.eq(0), phase.eq(BACKWARD)]

        # backward: read x[b_idx] while nothing waits for the cell; its data holds until taken
        m.d.comb += [
            x_rd.addr.eq(b_idx), x_rd.en.eq(backward & ~b_valid),
            bwd.i.payload.x.eq(x_rd.data), bwd.i.payload.last.eq(b_idx == 0),
            bwd.i.valid.eq(b_valid),
        ]
        with m.If(backward & ~b_valid):
            m.d.sync += b_valid.eq(1)
        with m.If(fed):
            m.d.sync += b_valid.eq(0)
            with m.If(b_idx == 0):
                m.d.sync += phase.eq(DRAIN)
            with m.Else():
                m.d.sync += b_idx.eq(b_idx - 1)

        # drain: wait for both cells' final outputs
        with m.If((phase == DRAIN) & f_done & b_done):
            m.d.sync += [t.eq(0), o_valid.eq(0), phase.eq(EMIT)]

        # emit
        if seq:
            load = Signal(name="load")
            m.d.comb += load.eq(emitting & (~o_valid | self.o.ready))
            for rd in (hf_rd, hb_rd):
                m.d.comb += [rd.addr.eq(t), rd.en.eq(load)]
            with m.If(load):
                m.d.sync += [o_valid.eq(t < count), o_last.eq(t == count - 1)]
                with m.If(t < count):
                    m.d.sync += t.eq(t + 1)
            m.d.comb += [self.o.valid.eq(o_valid),
                         self.o.payload.h.as_value().eq(Cat(hf_rd.data, hb_rd.data)),
                         self.o.payload.last.eq(o_last),
                         reset.eq(o_valid & self.o.ready & o_last)]
        else:
            m.d.comb += [self.o.valid.eq(emitting),
                         self.o.payload.as_value().eq(Cat(hf_last, hb_last)),
                         reset.eq(emitting & self.o.ready)]
        with m.If(reset):
            m.d.sync += [count.eq(0), f_count.eq(0), f_done.eq(0), b_done.eq(0), o_valid.eq(0),
                         phase.eq(TAKE)]
        return m


def configure_lstm(layer: Lstm, fold, pipeline: int, exact: bool) -> LstmConfig:
    """The ``configure`` hook of the lstm kind (:mod:`bitfab.hw.kinds`): unrolled cells
    (``fold`` None) or folded ones, a network-wide fold fitted unless ``exact``."""
    if fold is None:
        return LstmConfig(layer, pipeline)
    pe, simd = fold
    if not exact and isinstance(layer, Lstm):
        # a network-wide fold: cap pe at the gate rows, lower simd to the largest divisor of
        # the [x; h] columns (as a dense layer's fold is fitted, hw.layer)
        cols = layer.in_features + layer.hidden
        simd = max(k for k in range(1, min(simd, cols) + 1) if cols % k == 0)
        pe = min(pe, 4 * layer.hidden)
    return LstmConfig(layer, pipeline, "folded", pe, simd)


def build_lstm(config: LstmConfig) -> wiring.Component:
    """The ``build`` hook of the lstm kind: a :class:`BiLstmLayer` for two directions, else an
    :class:`LstmLayer`."""
    if isinstance(config, LstmConfig) and config.layer.directions == 2:
        return BiLstmLayer(config)
    return LstmLayer(config)


kinds.register("lstm", kinds.HwKind(configure_lstm, build_lstm, foldable=True))
