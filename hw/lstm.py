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

import operator
from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError
from bitfab.lstm import Lstm
from bitfab.model import Dense, NoOutput, signed_bits

from . import kinds
from .adder_tree import sum_terms
from .config import ConfigError
from .datapath import unrolled_terms

__all__ = ["LstmCell", "LstmConfig", "LstmLayer", "BiLstmLayer", "step_layout", "hidden_layout",
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
            out = Signal(signed(width), name=name)
            m.d.comb += out.eq(Mux(q == 0, 0, Mux(q == 1, v >> 1, v)))
            return out

        def rom(table, name: str, width: int):
            size = len(table)
            mem = Memory(shape=signed(width), depth=size, init=[int(v) for v in table])
            m.submodules[name] = mem
            return mem, size

        def index(value, shift: int, size: int, name: str):
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
            c = Signal(signed(layer.cell_bits), name=f"cnew{j}")
            with m.If(total < lo):
                m.d.comb += c.eq(lo)
            with m.Elif(total > hi):
                m.d.comb += c.eq(hi)
            with m.Else():
                m.d.comb += c.eq(total)
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


# --- the layer component (the hw hook of the lstm kind) -------------------------------------------


@dataclass(frozen=True, eq=False)
class LstmConfig:
    """How an lstm layer becomes hardware: one unrolled :class:`LstmCell` per direction.

    Members
    -------
    layer : Lstm
        A forward (``directions == 1``, :class:`LstmLayer`) or bidirectional layer
        (``directions == 2``, :class:`BiLstmLayer`: the sequence buffered in block RAM).
    pipeline : int
        A register stage every ``pipeline`` adder levels of the gate sums.
    """

    layer: Lstm
    pipeline: int = 1
    architecture: str = "unrolled"
    pe: None = None
    simd: None = None

    def __post_init__(self):
        if not isinstance(self.layer, Lstm):
            raise ConfigError(f"layer must be an Lstm, not {type(self.layer).__name__}")

    def to_json(self) -> dict:
        layer = self.layer
        return {
            "kind": layer.kind, "architecture": self.architecture, "pe": None, "simd": None,
            "pipeline": self.pipeline, "datapath": layer.datapath,
            "in_features": layer.in_features, "out_features": layer.out_features,
            "hidden": layer.hidden, "directions": layer.directions, "returns": layer.returns,
            "encoding": layer.encoding.to_json(),
            "input": layer.input.to_json(), "acc_bits": layer.acc_bits,
            "hidden_bits": layer.hidden_bits, "cell_bits": layer.cell_bits,
            "max_length": layer.max_length, "name": layer.name,
        }


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
        self._cell = LstmCell(layer, 0, config.pipeline)
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
    def cell(self) -> LstmCell:
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
    ``latency`` and ``initiation_interval``."""
    return LstmCell(config.layer, direction, config.pipeline)


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

    With ``II`` the cells' initiation interval, a sequence of ``L`` steps occupies the layer
    for ``L * II`` (take, at the producer's rate at best) ``+ L * II`` (backward) ``+ L``
    (emit) ``- 2`` clocks, ``2 * L * II - 2`` with ``returns="last"`` (measured with a producer
    and a consumer that never wait): :attr:`initiation_interval` is ``2 * II + 1`` clocks per
    step.

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


def _configure(layer: Lstm, fold, pipeline: int, exact: bool) -> LstmConfig:
    return LstmConfig(layer, pipeline)


def _build(config: LstmConfig) -> wiring.Component:
    if isinstance(config, LstmConfig) and config.layer.directions == 2:
        return BiLstmLayer(config)
    return LstmLayer(config)


kinds.register("lstm", kinds.HwKind(_configure, _build, foldable=False))
