"""The board top-level: UART -> frame receiver -> input packer -> network -> output unpacker ->
frame transmitter -> UART, and a status LED; the frame receiver's identify requests go straight
to the transmitter, which answers with the model's fingerprint (constants in the bitstream).

:class:`SerialNetwork` is the whole design behind the pins (what the simulated board runs);
:class:`BoardTop` puts it on a board: pins through ``io.Buffer``, the clock domain from the board
oscillator or a PLL (:mod:`bitfab.boards.pll`).
"""


from amaranth.build import Subsignal
from amaranth.hdl import Elaboratable, Module, Mux, Shape, Signal, Value
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError

from .framing import FrameReceiver, FrameTransmitter
from .protocol import LOAD_BYTES, SELFTEST_BYTES, Identity, vector_bytes
from .selftest import SelfTest
from .uart import UARTRx, UARTTx
from .weightload import WeightLoader

__all__ = ["Repack", "Select", "Route", "SerialNetwork", "BoardTop"]


class Repack(wiring.Component):
    """Pass a stream through, zero-extending or truncating its payload to another shape (the
    input packer and output unpacker: frame bytes <-> a network's element array)."""

    def __init__(self, in_shape, out_shape):
        super().__init__({
            "i": In(stream.Signature(in_shape)),
            "o": Out(stream.Signature(out_shape)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            Value.cast(self.o.payload).eq(Value.cast(self.i.payload)),
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready),
        ]
        return m


def _stream_shape(component, name: str):
    return component.signature.members[name].signature.members["payload"].shape


class SerialNetwork(wiring.Component):
    """A network behind a UART speaking the :mod:`bitfab.boards.protocol` frames.

    Parameters
    ----------
    network : wiring.Component
        A component with an ``i`` and an ``o`` stream (:class:`bitfab.hw.layer.Network` or a
        layer), whose payloads are element arrays.
    divisor : int
        Clocks per UART bit.
    fingerprint : str
        The fingerprint of the model the network was built from
        (:meth:`bitfab.model.IntegerModel.fingerprint`); its first 8 bytes answer identify.
    heartbeat_bits : int
        The LED blinks with counter bit ``heartbeat_bits - 1`` (23 at 12 MHz: every 0.7 s).
    selftest : bitfab.boards.selftest.SelfTestData or None
        Build the on-board self-test with these ROM contents (:class:`~.selftest.SelfTest`),
        run by a ``'T'`` frame; None: no self-test (a ``'T'`` frame is an unknown type).
    clock_hz : float
        The design clock, reported by the self-test (default: 0, unknown).
    selftest_words : int
        The self-test's ROM words per input (:class:`~.selftest.SelfTest`'s ``input_words``).

    Members
    -------
    rx : In(1)
    tx : Out(1)
    led : Out(1)
        The heartbeat, inverted for a while after every result frame (activity) and held on
        after a rejected frame until the next good one.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    led: Out(1)

    def __init__(self, network, divisor: int, *, fingerprint: str, heartbeat_bits: int = 23,
                 selftest=None, clock_hz: float = 0, selftest_words: int = 1):
        self._network = network
        in_shape = _stream_shape(network, "i")
        out_shape = _stream_shape(network, "o")
        in_bits = Shape.cast(in_shape).width
        out_bits = Shape.cast(out_shape).width
        self._in_bytes = vector_bytes(in_bits, 1)
        self._out_bytes = vector_bytes(out_bits, 1)
        try:
            self._identity = Identity(fingerprint, self._in_bytes, self._out_bytes,
                                      _input_clocks(network), int(divisor))
            self._selftest = None if selftest is None else \
                SelfTest(selftest, in_shape, out_shape, clock_hz, selftest_words)
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        self._divisor = divisor
        self._heartbeat = heartbeat_bits
        self._uart_rx = UARTRx(divisor)
        self._uart_tx = UARTTx(divisor)
        # weights in SPRAM: 'W' frames load them before the first input (boards/weightload.py)
        loads = "load" in network.signature.members
        self._loader = WeightLoader(network.load_image()) if loads else None
        test = self._selftest is not None
        self._frx = FrameReceiver(self._in_bytes, LOAD_BYTES if loads else 0, selftest=test)
        # a network that gives a result at most once per result frame's line time is never
        # held up by the transmitter reading the result where the network holds it (no copy)
        ident = self._identity
        in_place = bool(ident.divisor and ident.input_clocks and
                        ident.frame_clocks(self._out_bytes) <= ident.input_clocks)
        self._ftx = FrameTransmitter(self._out_bytes, ident.to_bytes(), load=loads,
                                     report_bytes=SELFTEST_BYTES if test else 0,
                                     in_place=in_place)
        self._pack = Repack(8 * self._in_bytes, in_shape)
        self._unpack = Repack(out_shape, 8 * self._out_bytes)
        super().__init__()

    @property
    def network(self):
        return self._network

    @property
    def identity(self) -> Identity:
        """What the board answers to identify: the fingerprint's first 8 bytes, the frame sizes."""
        return self._identity

    @property
    def selftest(self):
        """The :class:`~.selftest.SelfTest` (None when built without one)."""
        return self._selftest

    @property
    def in_bytes(self) -> int:
        """Payload bytes of an input frame: ``ceil(n_in * in_bits / 8)``."""
        return self._in_bytes

    @property
    def out_bytes(self) -> int:
        """Payload bytes of a result frame: ``ceil(n_out * out_bits / 8)``."""
        return self._out_bytes

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = self._uart_rx
        m.submodules.uart_tx = self._uart_tx
        m.submodules.frame_rx = self._frx
        m.submodules.frame_tx = self._ftx
        m.submodules.pack = self._pack
        m.submodules.unpack = self._unpack
        m.submodules.network = self._network
        m.d.comb += [self._uart_rx.rx.eq(self.rx), self.tx.eq(self._uart_tx.tx)]
        wiring.connect(m, self._uart_rx.o, self._frx.i)
        wiring.connect(m, self._frx.o, self._pack.i)
        if self._selftest is None:
            wiring.connect(m, self._pack.o, self._network.i)
            wiring.connect(m, self._network.o, self._unpack.i)
        else:
            self._share_network(m)
        wiring.connect(m, self._unpack.o, self._ftx.i)
        wiring.connect(m, self._frx.ident, self._ftx.ident)
        wiring.connect(m, self._frx.err, self._ftx.err)
        wiring.connect(m, self._ftx.o, self._uart_tx.i)
        if self._loader is not None:
            m.submodules.weight_loader = loader = self._loader
            wiring.connect(m, self._frx.load, loader.i)
            wiring.connect(m, loader.o, self._network.load)
            wiring.connect(m, loader.ack, self._ftx.loaded)
            m.d.comb += self._frx.locked.eq(~loader.loaded)

        beat = Signal(self._heartbeat)
        m.d.sync += beat.eq(beat + 1)
        activity = Signal(max(self._heartbeat - 3, 1))
        failed = Signal()
        with m.If(self._ftx.i.valid & self._ftx.i.ready):
            m.d.sync += [activity.eq(~0), failed.eq(0)]
        with m.Elif(activity != 0):
            m.d.sync += activity.eq(activity - 1)
        with m.If(self._ftx.err.valid & self._ftx.err.ready):
            m.d.sync += failed.eq(1)
        m.d.comb += self.led.eq(failed | (beat[-1] ^ (activity != 0)))
        return m

    def _share_network(self, m):
        """The self-test takes the network's streams while it runs (input frames that arrive
        then wait in the receiver and overrun, as with a busy network)."""
        test, net = self._selftest, self._network
        m.submodules.selftest = test
        m.submodules.net_in = into = Select(_stream_shape(net, "i"))
        m.submodules.net_out = outof = Route(_stream_shape(net, "o"))
        wiring.connect(m, self._frx.test, test.start)
        wiring.connect(m, test.report, self._ftx.report)
        wiring.connect(m, self._pack.o, into.a)
        wiring.connect(m, test.net_i, into.b)
        wiring.connect(m, into.o, net.i)
        wiring.connect(m, net.o, outof.i)
        wiring.connect(m, outof.a, self._unpack.i)
        wiring.connect(m, outof.b, test.net_o)
        m.d.comb += [into.sel.eq(test.active), outof.sel.eq(test.active)]


class Select(wiring.Component):
    """Pass stream ``a`` (``sel`` low) or ``b`` (``sel`` high) to ``o``; the other waits."""

    def __init__(self, shape):
        super().__init__({
            "a": In(stream.Signature(shape)),
            "b": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "sel": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.o.valid.eq(Mux(self.sel, self.b.valid, self.a.valid)),
            Value.cast(self.o.payload).eq(Mux(self.sel, Value.cast(self.b.payload),
                                              Value.cast(self.a.payload))),
            self.a.ready.eq(~self.sel & self.o.ready),
            self.b.ready.eq(self.sel & self.o.ready),
        ]
        return m


class Route(wiring.Component):
    """Pass stream ``i`` to ``a`` (``sel`` low) or ``b`` (``sel`` high)."""

    def __init__(self, shape):
        super().__init__({
            "i": In(stream.Signature(shape)),
            "a": Out(stream.Signature(shape)),
            "b": Out(stream.Signature(shape)),
            "sel": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            Value.cast(self.a.payload).eq(Value.cast(self.i.payload)),
            Value.cast(self.b.payload).eq(Value.cast(self.i.payload)),
            self.a.valid.eq(~self.sel & self.i.valid),
            self.b.valid.eq(self.sel & self.i.valid),
            self.i.ready.eq(Mux(self.sel, self.b.ready, self.a.ready)),
        ]
        return m


def _input_clocks(network) -> int:
    """Clocks between inputs of ``network`` at full rate (what identify reports)."""
    from .report import input_clocks
    try:
        return int(input_clocks(network))
    except AttributeError:  # a bare layer
        return int(getattr(network, "initiation_interval", 0) or 0)


class BoardTop(Elaboratable):
    """Put a :class:`SerialNetwork` on a board.

    Parameters
    ----------
    board : bitfab.boards.targets.Board
        The board (platform, UART and LED resources).
    network : wiring.Component
        The network.
    fingerprint : str
        The fingerprint of the model the network was built from (see :class:`SerialNetwork`).
    clock_hz : float or None
        The design clock: None runs on the board oscillator, a frequency makes a PLL
        (:func:`bitfab.boards.pll.clock_domain`).
    baud : int
        UART rate.
    selftest : bitfab.boards.selftest.SelfTestData or None
        The on-board self-test's ROM contents (see :class:`SerialNetwork`).
    selftest_words : int
        The self-test's ROM words per input (see :class:`SerialNetwork`).
    divisor : int or None
        Clocks per UART bit (default: from ``baud``, :func:`~.uart.uart_divisor`, which refuses a
        rate the clock does not make within 2 %).
    """

    def __init__(self, board, network, clock_hz: float | None = None, baud: int = 115200, *,
                 fingerprint: str, selftest=None, divisor: int | None = None,
                 selftest_words: int = 1):
        from .pll import plan
        from .uart import uart_divisor
        self._board = board
        self._plan = plan(board, clock_hz)
        self.clock_hz = self._plan.f_out
        self.core = SerialNetwork(network,
                                  uart_divisor(self.clock_hz, baud) if divisor is None else divisor,
                                  fingerprint=fingerprint,
                                  heartbeat_bits=max(8, int(self.clock_hz).bit_length() - 1),
                                  selftest=selftest, clock_hz=self.clock_hz,
                                  selftest_words=selftest_words)

    def elaborate(self, platform):
        from .pll import clock_domain
        m = Module()
        clock_domain(m, platform, self._board, self._plan)
        m.submodules.core = self.core
        # every subsignal raw (some boards also wire rts/dtr/cts to the FPGA)
        subsignals = [io.name for io in platform.lookup(self._board.uart, 0).ios
                      if isinstance(io, Subsignal)]
        uart = platform.request(self._board.uart, 0, dir={n: "-" for n in subsignals})
        m.submodules.rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [self.core.rx.eq(rx.i), tx.o.eq(self.core.tx)]
        name, _, part = self._board.led.partition(".")
        if part:  # one colour of an RGB LED
            led = getattr(platform.request(name, 0, dir={c: "-" for c in "rgb"}), part)
        else:
            led = platform.request(name, 0, dir="-")
        m.submodules.led_buf = led_buf = io.Buffer("o", led)
        m.d.comb += led_buf.o.eq(self.core.led)
        for name in self._board.drive_high:
            pin = platform.request(name, 0, dir="-")
            m.submodules[f"{name}_buf"] = buf = io.Buffer("o", pin)
            m.d.comb += buf.o.eq(1)
        return m
