"""Folded weight memories in iCE40 UP single-port RAM (SB_SPRAM256KA, 16k x 16 bits each).

SPRAM has no initial contents in the bitstream: a layer whose :class:`LayerConfig` says
``weights="spram"`` starts with an empty weight memory and is written, one 16-bit word per clock,
through its ``load`` port (:meth:`LayerConfig.load_image` gives the words in load order;
:class:`Network` routes one stream of them to its SPRAM layers in layer order). docs/boards.md
("Weights in SPRAM") says how a board loads them.

:class:`SpramWeights` is the memory: on an iCE40 UP platform (a board build, or :class:`Ice40Cells`
for a netlist without a board) it is ``SB_SPRAM256KA`` instances, ``ceil(width / 16)`` side by side
and ``ceil(depth / 16384)`` deep; on any other platform (the Amaranth simulator, plain Verilog) a
behavioural :class:`amaranth.lib.memory.Memory` of the same width and depth that also starts
empty (zeros: the real one holds whatever it powered up with, which only a load defines).
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import SPRAM_DEPTH, SPRAM_WIDTH

__all__ = ["SpramWeights", "Ice40Cells", "is_ice40_up", "load_layout", "word_layout",
           "NetworkLoader", "BootLoad"]


class Ice40Cells:
    """A stand-in platform for :func:`amaranth.back.verilog.convert`: elaborate iCE40 UP
    primitives (``SB_SPRAM256KA``) without a board, e.g. for the netlist simulation of
    :func:`bitfab.sim.verilog.run_bench` with ``netlist="ice40"``."""

    device = "iCE40UP5K"
    family = "iCE40"


def is_ice40_up(platform) -> bool:
    """Whether ``platform`` builds for an iCE40 UP device (the family with SPRAM)."""
    return str(getattr(platform, "device", "") or "").upper().startswith("ICE40UP")


def load_layout(depth: int, columns: int) -> data.StructLayout:
    """The payload of a layer's ``load`` port: the memory word, its 16-bit column, the data."""
    return data.StructLayout({"addr": range(max(depth, 2)), "col": range(max(columns, 2)),
                              "data": unsigned(SPRAM_WIDTH)})


class SpramWeights(wiring.Component):
    """A ``width`` x ``depth`` single-port weight memory in SPRAM, read like a synchronous
    :class:`~amaranth.lib.memory.Memory` read port and written a 16-bit column at a time.

    A write has priority over a read (the memory is single-ported: one address); after a write
    the read data is undefined until the next read, so nothing may read while a load runs.

    Members
    -------
    addr : In(range(depth))
    en : In(1)
        Read enable: ``data`` holds the word at ``addr`` a clock after ``en``, and holds while
        ``en`` is low.
    data : Out(width)
    load : In(stream.Signature(load_layout(depth, columns)))
        Column writes (always ready).
    """

    def __init__(self, width: int, depth: int):
        self._width, self._depth = width, depth
        self._cols = -(-width // SPRAM_WIDTH)
        super().__init__({
            "addr": In(range(max(depth, 2))),
            "en": In(1),
            "data": Out(width),
            "load": In(stream.Signature(load_layout(depth, self._cols))),
        })

    @property
    def columns(self) -> int:
        return self._cols

    @property
    def blocks(self) -> int:
        """SB_SPRAM256KA on an iCE40 UP platform."""
        return self._cols * -(-self._depth // SPRAM_DEPTH)

    def elaborate(self, platform):
        m = Module()
        cols, depth = self._cols, self._depth
        we = self.load.valid
        w = self.load.payload
        m.d.comb += self.load.ready.eq(1)
        addr = Signal.like(self.addr, name="addr_mux")
        m.d.comb += addr.eq(self.addr)
        with m.If(we):
            m.d.comb += addr.eq(w.addr)
        if not is_ice40_up(platform):
            mem = memory.Memory(shape=unsigned(cols * SPRAM_WIDTH), depth=depth, init=[])
            m.submodules.mem = mem
            wp = mem.write_port(granularity=SPRAM_WIDTH)
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(addr), rp.addr.eq(addr), rp.en.eq(self.en & ~we),
                         wp.data.eq(w.data.replicate(cols)),
                         self.data.eq(rp.data[:self._width])]
            for c in range(cols):
                m.d.comb += wp.en[c].eq(we & (w.col == c))
            return m
        rows = -(-depth // SPRAM_DEPTH)
        row = Signal(range(max(rows, 2)), name="row")      # the block row of the address
        row_q = Signal.like(row, name="row_q")             # ... of the word being read
        if rows > 1:
            m.d.comb += row.eq(addr >> 14)
            with m.If(self.en & ~we):
                m.d.sync += row_q.eq(row)
        word = Signal(cols * SPRAM_WIDTH, name="word")
        outs = []
        for r in range(rows):
            selected = (row == r) if rows > 1 else Const(1)
            out_row = Signal(cols * SPRAM_WIDTH, name=f"row{r}_data")
            outs.append(out_row)
            for c in range(cols):
                m.submodules[f"spram_{r}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14],
                    i_DATAIN=w.data,
                    i_MASKWREN=Const(0b1111, 4),
                    i_WREN=we & (w.col == c),
                    i_CHIPSELECT=selected & ((self.en & ~we) | (we & (w.col == c))),
                    i_CLOCK=ClockSignal("sync"),
                    i_STANDBY=Const(0, 1),
                    i_SLEEP=Const(0, 1),
                    i_POWEROFF=Const(1, 1),
                    o_DATAOUT=out_row[c * SPRAM_WIDTH:(c + 1) * SPRAM_WIDTH],
                )
        if rows > 1:
            with m.Switch(row_q):
                for r in range(rows):
                    with m.Case(r):
                        m.d.comb += word.eq(outs[r])
        else:
            m.d.comb += word.eq(outs[0])
        m.d.comb += self.data.eq(word[:self._width])
        return m


class NetworkLoader(wiring.Component):
    """Route one stream of 16-bit load words to the ``load`` ports of a network's SPRAM layers:
    the first ``len(layer 0's image)`` words to the first SPRAM layer, word by word through its
    memory words and columns, then the next layer's, and so on; after the last word it starts
    again at the first (a full image per load). A word with ``restart`` set is taken as the
    first word of an image whatever came before (a load the host abandoned half way).

    Parameters
    ----------
    shapes : sequence of ``(depth, columns)``
        The SPRAM layers' memories, in load order.

    Members
    -------
    i : In(stream.Signature(StructLayout({"data": 16, "restart": 1})))
        Always ready.
    out{k} : Out(stream.Signature(load_layout(depth_k, columns_k)))
        To SPRAM layer ``k`` (no backpressure: a memory write takes a clock).
    """

    def __init__(self, shapes):
        self._shapes = tuple(shapes)
        members = {"i": In(stream.Signature(word_layout()))}
        for k, (depth, cols) in enumerate(self._shapes):
            members[f"out{k}"] = Out(stream.Signature(load_layout(depth, cols)))
        super().__init__(members)

    @property
    def words(self) -> int:
        """Words of a full image: the layers' ``depth * columns``, summed."""
        return sum(d * c for d, c in self._shapes)

    def elaborate(self, platform):
        m = Module()
        n = len(self._shapes)
        m.d.comb += self.i.ready.eq(1)
        valid, restart = self.i.valid, self.i.payload.restart
        layer = Signal(range(max(n, 2)), name="layer")
        target = Signal.like(layer, name="target")
        m.d.comb += target.eq(Mux(restart, 0, layer))
        for k, (depth, cols) in enumerate(self._shapes):
            out = getattr(self, f"out{k}")
            addr = Signal(range(max(depth, 2)), name=f"addr{k}")
            col = Signal(range(max(cols, 2)), name=f"col{k}")
            cur_addr = Mux(restart, 0, addr)
            cur_col = Mux(restart, 0, col)
            m.d.comb += [
                out.valid.eq(valid & (target == k)),
                out.payload.data.eq(self.i.payload.data),
                out.payload.addr.eq(cur_addr),
                out.payload.col.eq(cur_col),
            ]
            with m.If(valid & restart):
                m.d.sync += [addr.eq(0), col.eq(0)]
            with m.If(out.valid):
                end_word = cur_col == cols - 1
                m.d.sync += [col.eq(Mux(end_word, 0, cur_col + 1)),
                             addr.eq(Mux(end_word, cur_addr + 1, cur_addr)), layer.eq(k)]
                with m.If(end_word & (cur_addr == depth - 1)):
                    m.d.sync += [addr.eq(0), layer.eq((k + 1) % n)]
        return m


def word_layout() -> data.StructLayout:
    """The payload of a network's ``load`` stream: a 16-bit word and the restart flag."""
    return data.StructLayout({"data": unsigned(SPRAM_WIDTH), "restart": 1})


class BootLoad(wiring.Component):
    """A network with SPRAM layers that loads its own weights after reset from a ROM of the
    words (a block RAM with initial contents, or logic): the input stream is held off until the
    last word is written. For simulations and netlist checks that drive only ``i`` and ``o``
    (:func:`bitfab.sim.verilog.run_bench`); a board loads over the UART instead (docs/boards.md),
    since the ROM would take the block RAM that SPRAM was chosen to spare.

    Parameters
    ----------
    network : wiring.Component
        A :class:`~bitfab.hw.layer.Network` with a ``load`` port.
    image : sequence of int
        The 16-bit words to load (:meth:`~bitfab.hw.layer.Network.load_image`; a test may pass
        a wrong one).
    """

    def __init__(self, network, image):
        self._network = network
        self._image = [int(w) & 0xFFFF for w in image]
        if not self._image:
            self._MustUse__silence = True
            raise ValueError("image must hold at least one word")
        members = network.signature.members
        super().__init__({"i": members["i"], "o": members["o"]})

    @property
    def network(self):
        return self._network

    @property
    def latency(self) -> int:
        """The network's latency (the load happens once, before the first input)."""
        return self._network.latency + len(self._image) + 2

    @property
    def initiation_interval(self) -> int:
        return self._network.initiation_interval

    def elaborate(self, platform):
        m = Module()
        net = self._network
        m.submodules.network = net
        n = len(self._image)
        m.submodules.rom = rom = memory.Memory(shape=unsigned(SPRAM_WIDTH), depth=max(n, 2),
                                               init=self._image)
        rd = rom.read_port(domain="comb")
        pos = Signal(range(n + 1), name="pos")
        done = pos == n
        m.d.comb += rd.addr.eq(pos)
        load = net.load
        m.d.comb += [load.payload.data.eq(rd.data), load.payload.restart.eq(pos == 0)]
        m.d.comb += load.valid.eq(~done)
        with m.If(~done & load.ready):
            m.d.sync += pos.eq(pos + 1)
        m.d.comb += [
            net.i.payload.eq(self.i.payload), net.i.valid.eq(self.i.valid & done),
            self.i.ready.eq(net.i.ready & done),
        ]
        wiring.connect(m, net.o, wiring.flipped(self.o))
        return m
