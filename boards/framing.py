"""The board side of the serial protocol (:mod:`bitfab.boards.protocol`) in Amaranth.

:class:`FrameReceiver` turns received bytes into input vectors and error codes;
:class:`FrameTransmitter` turns result vectors and error codes into frames of bytes.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError

from .protocol import (
    ERR_CHECKSUM,
    ERR_LENGTH,
    ERR_OVERRUN,
    ERR_TYPE,
    START,
    TYPE_ERROR,
    TYPE_INPUT,
    TYPE_RESULT,
)

__all__ = ["FrameReceiver", "FrameTransmitter"]


def _n_bytes(n_bytes) -> int:
    if isinstance(n_bytes, bool):
        raise BitfabError(f"n_bytes must be an integer in 1..65535, not {n_bytes!r}")
    try:
        n = operator.index(n_bytes)
    except TypeError:
        raise BitfabError(f"n_bytes must be an integer in 1..65535, not {n_bytes!r}") from None
    if not 1 <= n <= 0xFFFF:
        raise BitfabError(f"n_bytes must be an integer in 1..65535, not {n_bytes!r}")
    return n


class FrameReceiver(wiring.Component):
    """Assemble ``'I'`` frames of ``n_bytes`` payload bytes into vectors.

    A frame whose checksum, length or type is wrong gives no vector: its error code goes out on
    ``err`` (where the transmitter sends it back as an ``'E'`` frame). A frame that completes while
    the previous vector still waits on ``o`` is an overrun (the host sent faster than the network
    computes); it is consumed, reported and dropped. ``i`` is always ready.

    Parameters
    ----------
    n_bytes : int
        Payload bytes of one input frame.

    Members
    -------
    i : In(stream.Signature(8))
        Received bytes.
    o : Out(stream.Signature(8 * n_bytes))
        Payloads of good frames (byte k at bits ``[8k, 8k+8)``).
    err : Out(stream.Signature(8))
        Error codes (:data:`bitfab.boards.protocol.ERRORS`); a second error while one waits is
        dropped (the first is the one worth reading).
    """

    def __init__(self, n_bytes: int):
        try:
            self._n = _n_bytes(n_bytes)
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(unsigned(8 * self._n))),
            "err": Out(stream.Signature(8)),
        })

    @property
    def n_bytes(self) -> int:
        return self._n

    def elaborate(self, platform):
        m = Module()
        n = self._n
        byte = self.i.payload
        total = Signal(8)  # running byte sum from TYPE on
        length = Signal(16)
        kind = Signal(8)
        count = Signal(range(n + 1))
        # one buffer: the frame being received, then the vector until the network takes it (a
        # second copy would cost 8n flip-flops; a frame that arrives while the vector still
        # waits is consumed and reported as an overrun instead)
        buf = Signal(8 * n)
        out_valid = Signal()
        err_valid = Signal()
        err_code = Signal(8)
        m.d.comb += [
            self.i.ready.eq(1),
            self.o.valid.eq(out_valid), self.err.valid.eq(err_valid),
            self.err.payload.eq(err_code),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(self.err.valid & self.err.ready):
            m.d.sync += err_valid.eq(0)

        def report(code):
            with m.If(~err_valid | self.err.ready):
                m.d.sync += [err_valid.eq(1), err_code.eq(code)]

        with m.FSM():
            with m.State("start"):
                with m.If(self.i.valid & (byte == START)):
                    m.d.sync += total.eq(0)
                    m.next = "type"
            with m.State("type"):
                with m.If(self.i.valid):
                    m.d.sync += [kind.eq(byte), total.eq(byte)]
                    m.next = "len_lo"
            with m.State("len_lo"):
                with m.If(self.i.valid):
                    m.d.sync += [length[:8].eq(byte), total.eq(total + byte)]
                    m.next = "len_hi"
            with m.State("len_hi"):
                with m.If(self.i.valid):
                    m.d.sync += [length[8:].eq(byte), total.eq(total + byte), count.eq(0)]
                    # a frame of another length cannot be followed: report it and look for the
                    # next start byte
                    with m.If((byte != n >> 8) | (length[:8] != (n & 0xFF))):
                        report(ERR_LENGTH)
                        m.next = "start"
                    with m.Elif(out_valid & ~self.o.ready):
                        m.next = "discard"
                    with m.Else():
                        m.next = "payload"
            with m.State("payload"):
                with m.If(self.i.valid):
                    m.d.sync += [buf.eq(byte << (8 * (n - 1)) | buf >> 8),
                                 total.eq(total + byte), count.eq(count + 1)]
                    with m.If(count == n - 1):
                        m.next = "check"
            with m.State("discard"):
                with m.If(self.i.valid):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == n):  # the payload and the check byte
                        report(ERR_OVERRUN)
                        m.next = "start"
            with m.State("check"):
                with m.If(self.i.valid):
                    with m.If(((total + byte) & 0xFF) != 0):
                        report(ERR_CHECKSUM)
                    with m.Elif(kind != TYPE_INPUT):
                        report(ERR_TYPE)
                    with m.Else():
                        m.d.sync += out_valid.eq(1)
                    m.next = "start"
        m.d.comb += self.o.payload.eq(buf)
        return m


class FrameTransmitter(wiring.Component):
    """Send each result vector of ``i`` as an ``'R'`` frame and each code of ``err`` as an
    ``'E'`` frame on the byte stream ``o``; an error waiting goes first.

    Parameters
    ----------
    n_bytes : int
        Payload bytes of one result frame.
    """

    def __init__(self, n_bytes: int):
        try:
            self._n = _n_bytes(n_bytes)
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * self._n))),
            "err": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
        })

    @property
    def n_bytes(self) -> int:
        return self._n

    def elaborate(self, platform):
        m = Module()
        n = self._n
        kind = Signal(8)
        length = Signal(16)
        buf = Signal(8 * n)
        left = Signal(range(n + 1))
        total = Signal(8)
        data = Signal(8)
        busy = Signal()
        m.d.comb += [self.o.payload.eq(data), self.o.valid.eq(busy)]
        sent = self.o.valid & self.o.ready

        with m.FSM():
            with m.State("idle"):
                with m.If(self.err.valid):
                    m.d.comb += self.err.ready.eq(1)
                    m.d.sync += [kind.eq(TYPE_ERROR), length.eq(1), buf.eq(self.err.payload),
                                 left.eq(1)]
                    m.next = "start"
                with m.Elif(self.i.valid):
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += [kind.eq(TYPE_RESULT), length.eq(n), buf.eq(self.i.payload),
                                 left.eq(n)]
                    m.next = "start"
            with m.State("start"):
                m.d.sync += [data.eq(START), busy.eq(1), total.eq(0)]
                m.next = "send_start"
            with m.State("send_start"):
                with m.If(sent):
                    m.d.sync += [data.eq(kind), total.eq(kind)]
                    m.next = "send_type"
            with m.State("send_type"):
                with m.If(sent):
                    m.d.sync += [data.eq(length[:8]), total.eq(total + length[:8])]
                    m.next = "send_len_lo"
            with m.State("send_len_lo"):
                with m.If(sent):
                    m.d.sync += [data.eq(length[8:]), total.eq(total + length[8:])]
                    m.next = "send_len_hi"
            with m.State("send_len_hi"):
                with m.If(sent):
                    m.d.sync += [data.eq(buf[:8]), total.eq(total + buf[:8]),
                                 buf.eq(buf >> 8), left.eq(left - 1)]
                    m.next = "send_payload"
            with m.State("send_payload"):
                with m.If(sent):
                    with m.If(left == 0):
                        m.d.sync += data.eq(-total)
                        m.next = "send_check"
                    with m.Else():
                        m.d.sync += [data.eq(buf[:8]), total.eq(total + buf[:8]),
                                     buf.eq(buf >> 8), left.eq(left - 1)]
            with m.State("send_check"):
                with m.If(sent):
                    m.d.sync += busy.eq(0)
                    m.next = "idle"
        return m
