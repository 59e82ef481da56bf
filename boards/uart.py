"""A small 8N1 UART in Amaranth (amaranth-stdio is not on PyPI).

:class:`UARTTx` sends the bytes of a stream; :class:`UARTRx` gives the bytes it receives as a
stream. Both count ``divisor`` clocks per bit (``round(f_clk / baud)``; at 12 MHz and 115200 baud
that is 104, a 0.16 % rate error, well inside the ~2 % an 8N1 link tolerates).
"""


import operator

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError

__all__ = ["UARTTx", "UARTRx", "uart_divisor", "check_baud", "link_baud", "STANDARD_BAUDS"]

#: rates :func:`link_baud` falls back to, fastest first (each one an FTDI bridge makes exactly)
STANDARD_BAUDS = (3_000_000, 2_000_000, 1_500_000, 1_000_000, 500_000, 230_400, 115_200)


def uart_divisor(clk_hz: float, baud: int) -> int:
    """Return the clocks per bit for ``baud`` at ``clk_hz``; refuse a rate error above 2 %."""
    if baud <= 0 or clk_hz <= 0:
        raise BitfabError(f"baud and clock must be positive, not {baud!r} and {clk_hz!r}")
    div = round(clk_hz / baud)
    if div < 4:
        raise BitfabError(f"a {clk_hz / 1e6:g} MHz clock is too slow for {baud} baud "
                          f"(needs at least 4 clocks per bit, has {clk_hz / baud:.2f}): give a "
                          f"--clock of at least {4 * baud / 1e6:g} MHz or a lower --baud")
    error = abs(clk_hz / div - baud) / baud
    if error > 0.02:
        raise BitfabError(f"{baud} baud from {clk_hz / 1e6:g} MHz is off by {100 * error:.1f} % "
                          f"(more than the 2 % an 8N1 link tolerates): give a --clock near a "
                          f"multiple of {baud / 1e6:g} MHz or another --baud")
    return div


def check_baud(board, baud: int) -> None:
    """Refuse a ``baud`` above what ``board``'s USB bridge makes (:attr:`Board.bridge`)."""
    top = board.bridge.max_baud
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise BitfabError(f"baud must be a positive integer, not {baud!r}")
    if top is not None and baud > top:
        raise BitfabError(f"baud {baud} is more than the {board.bridge.name} USB bridge of "
                          f"{board.name} makes (at most {top})")


def link_baud(board, clock_hz: float, baud: int | None = None) -> int:
    """Return the UART rate of a build of ``board`` clocked at ``clock_hz``: ``baud`` when given
    (checked against the bridge, :func:`check_baud`, and the clock, :func:`uart_divisor`), else
    the board's link rate (:attr:`Board.baud`) when the clock makes it within 2 %, else the
    fastest of :data:`STANDARD_BAUDS` below it that the clock makes (a clock is chosen with the
    rate in mind by :func:`bitfab.boards.pll.choose_clock`; an explicit clock may not be)."""
    if baud is not None:
        check_baud(board, baud)
        uart_divisor(clock_hz, baud)
        return baud
    for rate in (board.baud,) + tuple(b for b in STANDARD_BAUDS if b < board.baud):
        try:
            uart_divisor(clock_hz, rate)
        except BitfabError:
            continue
        return rate
    raise BitfabError(f"a {clock_hz / 1e6:g} MHz clock makes none of the UART rates "
                      f"{', '.join(map(str, STANDARD_BAUDS))} within 2 %: give --baud")


def _divisor(divisor) -> int:
    if isinstance(divisor, bool):
        raise BitfabError(f"divisor must be an integer >= 4, not {divisor!r}")
    try:
        divisor = operator.index(divisor)
    except TypeError:
        raise BitfabError(f"divisor must be an integer >= 4, not {divisor!r}") from None
    if divisor < 4:
        raise BitfabError(f"divisor must be an integer >= 4, not {divisor!r}")
    return divisor


class _Uart(wiring.Component):
    """What the transmitter and the receiver share: the bit-time divisor, validated."""

    def __init__(self, divisor: int):
        try:
            self._divisor = _divisor(divisor)
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor


class UARTTx(_Uart):
    """Send the bytes of ``i`` on ``tx``: a start bit, 8 data bits LSB first, a stop bit.

    Parameters
    ----------
    divisor : int
        Clocks per bit (>= 4).

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; one is taken when the previous one's stop bit has ended.
    tx : Out(1)
        The serial line (idle high).
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start; shifted out LSB first
        bits = Signal(range(11))
        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(self.i.payload << 1 | 1 << 9), bits.eq(10),
                         timer.eq(self._divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(shreg >> 1 | 1 << 9), bits.eq(bits - 1),
                             timer.eq(self._divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(_Uart):
    """Receive bytes on ``rx`` and give them on ``o``.

    The line goes through two flip-flops (it is asynchronous to the clock); a start bit is
    confirmed at its middle, then each bit is sampled at its middle. A byte whose stop bit is low
    is dropped and pulses ``frame_error``; a byte that ``o`` cannot take (``ready`` low) is
    dropped and pulses ``overrun`` (a serial line has no backpressure).

    Parameters
    ----------
    divisor : int
        Clocks per bit (>= 4).

    Members
    -------
    rx : In(1)
        The serial line (idle high).
    o : Out(stream.Signature(8))
        Received bytes, ``valid`` for one clock or until taken.
    frame_error, overrun : Out(1)
        One-clock pulses.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        sync0 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync0.eq(self.rx), line.eq(sync0)]
        timer = Signal(range(div))
        shreg = Signal(8)
        bits = Signal(range(9))
        data = Signal(8)
        valid = Signal()
        m.d.comb += [self.o.payload.eq(data), self.o.valid.eq(valid)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += valid.eq(0)
        with m.FSM():
            with m.State("idle"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "start"
            with m.State("start"):
                with m.If(timer == 0):
                    with m.If(line):  # a glitch, not a start bit
                        m.next = "idle"
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bits.eq(8)]
                        m.next = "data"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("data"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(line << 7 | shreg >> 1), timer.eq(div - 1),
                                 bits.eq(bits - 1)]
                    with m.If(bits == 1):
                        m.next = "stop"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("stop"):
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.comb += self.frame_error.eq(1)
                    with m.Elif(valid & ~self.o.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [data.eq(shreg), valid.eq(1)]
                    m.next = "idle"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m
