"""The on-board self-test: input vectors and their expected results in ROMs, streamed through the
network at full clock with no host in the loop.

:class:`SelfTest` sits beside the network in :class:`~bitfab.boards.top.SerialNetwork`: on a
self-test request (a ``'T'`` frame) it takes the network's input and output streams over, feeds
the input ROM's words one per clock (as fast as the network takes them), compares every result
with the expected ROM's word, counts clocks and mismatches, and hands a
:class:`~bitfab.boards.protocol.SelfTestReport` to the frame transmitter (an ``'S'`` frame). The
ROMs are :class:`amaranth.lib.memory.Memory` with synchronous read ports, so yosys maps them to
block RAM initialised in the bitstream. The vectors come from the caller (the golden model's
results of random inputs, :func:`bitfab.sim.run.selftest_vectors`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Shape, Signal, Value, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError

from .protocol import SELFTEST_BYTES

__all__ = ["SelfTestData", "SelfTest", "rom_bits", "MAX_VECTORS"]

#: the most vectors a self-test holds (its counters are 32 bits; a ROM this deep fits no board)
MAX_VECTORS = 1 << 20


class SelfTestData:
    """The self-test ROMs' contents: input transfers and the results expected for them, as
    payload integers (:meth:`bitfab.formats.StreamFormat.pack`).

    Parameters
    ----------
    inputs, expected : sequences of int
        One payload per input transfer, and one per result, in stream order.
    seed : int or None
        The seed the inputs were drawn with (recorded in ``report.json``).
    """

    def __init__(self, inputs, expected, seed=None):
        self.inputs = [int(p) for p in inputs]
        self.expected = [int(p) for p in expected]
        self.seed = seed
        if not self.inputs or not self.expected:
            raise BitfabError("a self-test needs at least one vector")
        if len(self.inputs) > MAX_VECTORS or len(self.expected) > MAX_VECTORS:
            raise BitfabError(f"a self-test holds at most {MAX_VECTORS} vectors, not "
                              f"{max(len(self.inputs), len(self.expected))}")

    @property
    def vectors(self) -> int:
        """Results the self-test checks."""
        return len(self.expected)

    def to_json(self) -> dict:
        return {"vectors": self.vectors, "input_transfers": len(self.inputs), "seed": self.seed}


def rom_bits(data: SelfTestData, in_bits: int, out_bits: int) -> int:
    """Bits the two ROMs hold."""
    return len(data.inputs) * in_bits + len(data.expected) * out_bits


class SelfTest(wiring.Component):
    """Stream the input ROM through a network and check its results against the expected ROM.

    Parameters
    ----------
    data : SelfTestData
    in_shape, out_shape : shape-castable
        The network's input and output payload shapes.
    clock_hz : float
        The design clock, reported with the counts (a constant of the bitstream).
    input_words : int
        ROM words per input transfer (default 1): an input ROM ``input_words`` times deeper and
        as many times narrower, read a word per clock, so a vector is ready ``input_words + 2``
        clocks after the network took the previous one. A network that takes an input every
        ``II`` clocks runs at full rate when ``input_words + 2 <= II``
        (:func:`bitfab.boards.build.check_selftest` picks it so); a wide input of a folded
        network then costs fewer block RAMs (an iCE40 EBR is at most 16 bits wide).

    Members
    -------
    start : In(stream.Signature(0))
        Requests; one arriving while a test runs waits for its end.
    report : Out(stream.Signature(8 * SELFTEST_BYTES))
        The :class:`~bitfab.boards.protocol.SelfTestReport` bytes, little-endian fields.
    net_i : Out(stream.Signature(in_shape))
        To the network's input while the test runs.
    net_o : In(stream.Signature(out_shape))
        From the network's output while the test runs (always ready then).
    active : Out(1)
        The test owns the network's streams.
    """

    def __init__(self, data: SelfTestData, in_shape, out_shape, clock_hz: float,
                 input_words: int = 1):
        if not isinstance(data, SelfTestData):
            self._MustUse__silence = True
            raise BitfabError(f"data must be a SelfTestData, not {type(data).__name__}")
        if isinstance(input_words, bool) or not isinstance(input_words, int) or \
                input_words < 1:
            self._MustUse__silence = True
            raise BitfabError(f"input_words must be an integer >= 1, not {input_words!r}")
        self._data = data
        self._words = input_words
        self._in_bits = Shape.cast(in_shape).width
        self._out_bits = Shape.cast(out_shape).width
        self._clock = int(round(clock_hz))
        for name, values, bits in (("input", data.inputs, self._in_bits),
                                   ("expected", data.expected, self._out_bits)):
            bad = [v for v in values if not 0 <= v < 1 << bits]
            if bad:
                self._MustUse__silence = True
                raise BitfabError(f"self-test {name} payload {bad[0]:#x} does not fit the "
                                  f"network's {bits}-bit stream")
        super().__init__({
            "start": In(stream.Signature(0)),
            "report": Out(stream.Signature(unsigned(8 * SELFTEST_BYTES))),
            "net_i": Out(stream.Signature(in_shape)),
            "net_o": In(stream.Signature(out_shape)),
            "active": Out(1),
        })

    @property
    def data(self) -> SelfTestData:
        return self._data

    @property
    def input_words(self) -> int:
        """ROM words per input transfer."""
        return self._words

    @property
    def word_bits(self) -> int:
        """Bits of an input ROM word: ``ceil(in_bits / input_words)``."""
        return -(-self._in_bits // self._words)

    def elaborate(self, platform):
        m = Module()
        data = self._data
        n_in, n_out = len(data.inputs), len(data.expected)
        k, w = self._words, self.word_bits
        words = [(p >> (w * j)) & ((1 << w) - 1) for p in data.inputs for j in range(k)]
        # block RAM, whatever the depth: yosys maps a shallow ROM to logic by cost otherwise (a
        # 64 x 320-bit one took thousands of LUT4s on the iCEBreaker)
        block = {"rom_style": "block", "ram_style": "block"}
        m.submodules.in_rom = in_rom = memory.Memory(
            shape=unsigned(w), depth=n_in * k, init=words, attrs=block)
        m.submodules.exp_rom = exp_rom = memory.Memory(
            shape=unsigned(self._out_bits), depth=n_out, init=data.expected, attrs=block)
        rd_in = in_rom.read_port()
        rd_exp = exp_rom.read_port()

        running = Signal()
        done = Signal()        # the report waits for the transmitter
        ra = Signal(range(n_in * k + 1))  # the next input word to read
        wa = Signal(range(n_out + 1))    # results seen
        cycles = Signal(32)
        first = Signal(32)     # cycle of the first result
        last = Signal(32)      # cycle of the last result
        mismatches = Signal(32)
        m.d.comb += self.active.eq(running)
        if k == 1:
            self._source_wide(m, rd_in, ra, running, n_in)
        else:
            self._source_words(m, rd_in, ra, running, n_in)

        # the expected ROM: always reads the word of the next result
        taken = self.net_o.valid & running
        m.d.comb += [self.net_o.ready.eq(running),
                     rd_exp.addr.eq(wa + taken), rd_exp.en.eq(1)]
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(taken):
            m.d.sync += [wa.eq(wa + 1), last.eq(cycles)]
            with m.If(wa == 0):
                m.d.sync += first.eq(cycles)
            with m.If(Value.cast(self.net_o.payload) != rd_exp.data):
                m.d.sync += mismatches.eq(mismatches + 1)
            with m.If(wa == n_out - 1):
                m.d.sync += [running.eq(0), done.eq(1)]

        m.d.comb += self.start.ready.eq(~running & ~done)
        with m.If(self.start.valid & self.start.ready):
            m.d.sync += [running.eq(1), ra.eq(0), wa.eq(0), cycles.eq(1),
                         first.eq(0), last.eq(0), mismatches.eq(0)]
            m.d.sync += [s.eq(0) for s in self._restart]

        # the report: vectors, mismatches, cycles (request to last result, counting the request's
        # clock), steady cycles (first result to last), clock
        m.d.comb += [
            self.report.valid.eq(done),
            self.report.payload.eq(Cat(Const(n_out, 32), mismatches, last, (last - first)[:32],
                                       Const(self._clock, 32))),
        ]
        with m.If(self.report.valid & self.report.ready):
            m.d.sync += done.eq(0)
        return m

    def _source_wide(self, m, rd_in, ra, running, n_in):
        # one word a vector: a synchronous read port is a one-word pipeline; its word is held
        # while the network does not take it (en low)
        have = Signal()  # rd_in.data holds an input word not yet taken
        self._restart = [have]
        m.d.comb += [
            self.net_i.valid.eq(running & have),
            Value.cast(self.net_i.payload).eq(rd_in.data),
        ]
        advance = ~have | self.net_i.ready
        m.d.comb += [rd_in.addr.eq(ra), rd_in.en.eq(running & advance)]
        with m.If(running & advance):
            m.d.sync += have.eq(ra < n_in)
            with m.If(ra < n_in):
                m.d.sync += ra.eq(ra + 1)

    def _source_words(self, m, rd_in, ra, running, n_in):
        # k words a vector, read one a clock after the network took the previous vector: the
        # first k - 1 into a register (lowest word first), the last one straight from the read
        # port, which holds it until the vector is taken (no read is issued meanwhile)
        k, w = self._words, self.word_bits
        held = Signal((k - 1) * w)
        issued = Signal(range(k + 1))  # reads issued for the vector being gathered
        got = Signal(range(k))         # words arrived for it
        pend = Signal()                # a read issued last clock: its word is on rd_in.data
        full = Signal()                # held and rd_in.data make a whole vector
        self._restart = [issued, got, pend, full]
        m.d.comb += [
            self.net_i.valid.eq(running & full),
            Value.cast(self.net_i.payload).eq(Cat(held, rd_in.data)[:self._in_bits]),
        ]
        issue = running & (issued < k) & (ra < n_in * k)
        m.d.comb += [rd_in.addr.eq(ra), rd_in.en.eq(issue)]
        m.d.sync += pend.eq(issue)
        with m.If(issue):
            m.d.sync += [ra.eq(ra + 1), issued.eq(issued + 1)]
        with m.If(pend):
            with m.If(got == k - 1):
                m.d.sync += [full.eq(1), got.eq(0)]
            with m.Else():
                m.d.sync += got.eq(got + 1)
                m.d.sync += held.eq(rd_in.data << ((k - 2) * w) | held >> w) if k > 2 else \
                    held.eq(rd_in.data)
        with m.If(self.net_i.valid & self.net_i.ready):
            m.d.sync += [full.eq(0), issued.eq(0)]
