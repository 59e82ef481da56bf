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

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
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

__all__ = ["LstmCell", "LstmConfig", "LstmLayer", "step_layout", "hidden_layout"]


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
        A forward layer (``directions == 1``; a bidirectional one needs the whole sequence
        buffered and reversed, which hw does not build yet).
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
        if self.layer.directions != 1:
            raise ConfigError(f"a bidirectional lstm layer has no hardware yet (supported: "
                              f"forward lstm layers, directions=1; this one has "
                              f"{self.layer.directions})")

    def to_json(self) -> dict:
        layer = self.layer
        return {
            "kind": layer.kind, "architecture": self.architecture, "pe": None, "simd": None,
            "pipeline": self.pipeline, "datapath": layer.datapath,
            "in_features": layer.in_features, "out_features": layer.out_features,
            "hidden": layer.hidden, "returns": layer.returns, "encoding": layer.encoding.to_json(),
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


def _configure(layer: Lstm, fold, pipeline: int, exact: bool) -> LstmConfig:
    return LstmConfig(layer, pipeline)


kinds.register("lstm", kinds.HwKind(_configure, LstmLayer, foldable=False))
