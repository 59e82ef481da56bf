"""A simulated board: :class:`~bitfab.boards.top.SerialNetwork` in the Amaranth simulator, driven
bit by bit on its ``rx`` pin and read bit by bit on its ``tx`` pin.

:class:`SimTransport` is a :class:`~bitfab.boards.host.Transport`: ``write`` queues bytes that a
testbench shifts onto ``rx`` as 8N1 characters, ``read`` advances simulated time until the
monitor on ``tx`` has decoded the bytes asked for (or a time limit passes), so
:class:`~bitfab.boards.host.BoardClient` runs unchanged against it.
"""

from __future__ import annotations

from collections import deque

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from bitfab.errors import BitfabError
from bitfab.hw.config import DEFAULT_PIPELINE

from .top import SerialNetwork

__all__ = ["SimTransport", "simulated_board", "SIM_DIVISOR"]

_PERIOD = 1e-6  # simulated clock period (only clock counts matter)


class SimTransport:
    """Serial bytes to and from a :class:`SerialNetwork` in simulation.

    Parameters
    ----------
    top : SerialNetwork
    timeout_bits : int
        ``read`` gives up after this many bit times without a new byte.
    """

    def __init__(self, top: SerialNetwork, timeout_bits: int = 4000):
        if not isinstance(top, SerialNetwork):
            raise BitfabError(f"top must be a SerialNetwork, not {type(top).__name__}")
        self._top = top
        self._div = top._divisor
        self._out: deque[int] = deque()
        self._in: deque[int] = deque()
        self._timeout = timeout_bits * self._div * _PERIOD
        self._now = 0.0
        self.cycles = 0
        m = Module()
        m.submodules.top = top
        self._stop = Signal()  # the driver raises it on close, so both testbenches return
        self._sim = Simulator(m)
        self._sim.add_clock(_PERIOD)
        self._sim.add_testbench(self._driver, background=True)
        self._sim.add_testbench(self._monitor, background=True)
        self._closed = False

    async def _driver(self, ctx):
        rx, div = self._top.rx, self._div
        ctx.set(rx, 1)
        while not self._closed:
            if not self._out:
                await ctx.tick().repeat(div)
                continue
            byte = self._out.popleft()
            for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                ctx.set(rx, bit)
                await ctx.tick().repeat(div)
        ctx.set(self._stop, 1)

    async def _monitor(self, ctx):
        tx, div = self._top.tx, self._div
        while True:
            await ctx.tick().until(~tx | self._stop)
            if ctx.get(self._stop):
                return
            await ctx.tick().repeat(div // 2)
            if ctx.get(tx):
                continue  # a glitch
            byte = 0
            for k in range(8):
                await ctx.tick().repeat(div)
                byte |= ctx.get(tx) << k
            await ctx.tick().repeat(div)
            if ctx.get(tx):  # the stop bit; a framing error is a lost byte, as on a real line
                self._in.append(byte)

    @property
    def divisor(self) -> int:
        """Clocks per UART bit."""
        return self._div

    def write(self, data: bytes) -> None:
        self._out.extend(bytes(data))

    def read(self, n: int) -> bytes:
        waited = 0.0
        step = 10 * self._div * _PERIOD  # one character time
        while len(self._in) < n and waited < self._timeout:
            before = len(self._in)
            self._now += step
            self._sim.run_until(self._now)
            # the timeout runs from the last byte either way: a board cannot answer a frame
            # (e.g. an image's final pixel) that the line has not finished carrying to it
            waited = 0.0 if len(self._in) > before or self._out else waited + step
        self.cycles = round(self._now / _PERIOD)
        return bytes(self._in.popleft() for _ in range(min(n, len(self._in))))

    def close(self) -> None:
        """End the simulation (its testbenches return, so nothing is left running)."""
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        self._now += 12 * self._div * _PERIOD
        self._sim.run_until(self._now)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: clocks per UART bit of a simulated board: the iCEBreaker's link (3 Mbaud from 12 MHz), the
#: fewest the UART allows, so a simulated vector costs as few clocks as the line allows
SIM_DIVISOR = 4


def simulated_board(model, fold=None, pipeline: int = DEFAULT_PIPELINE,
                    divisor: int = SIM_DIVISOR, *, weights=None, selftest=None,
                    clock_hz: float = 12e6, timeout_bits: int = 4000,
                    selftest_words: int = 1) -> SimTransport:
    """Return a :class:`SimTransport` to the board top-level of ``model`` (unrolled, or folded
    with ``fold = (pe, simd)``, answering identify with its fingerprint), its UART at ``divisor``
    clocks per bit; ``weights`` places the weight memories
    (:func:`bitfab.hw.layer.network_configs`: with a layer in SPRAM the board needs a weight
    load, :meth:`bitfab.boards.host.BoardClient.load_weights`, before its first input);
    ``selftest`` (:class:`~bitfab.boards.selftest.SelfTestData`) builds the on-board self-test
    in (``selftest_words`` ROM words per input), reporting ``clock_hz`` as its clock;
    ``timeout_bits`` as :class:`SimTransport`'s."""
    from bitfab.hw.layer import build_network
    return SimTransport(SerialNetwork(build_network(model, fold, pipeline, weights), divisor,
                                      fingerprint=model.fingerprint(), heartbeat_bits=8,
                                      selftest=selftest, clock_hz=clock_hz,
                                      selftest_words=selftest_words),
                        timeout_bits=timeout_bits)
