"""The board side of the serial protocol (:mod:`bitfab.boards.protocol`) in Amaranth.

:class:`FrameReceiver` turns received bytes into input vectors, identify requests and error
codes; :class:`FrameTransmitter` turns result vectors, identify requests and error codes into
frames of bytes. Both compute the CRC-16/CCITT-FALSE a byte per clock with
:mod:`amaranth.lib.crc` (:data:`CRC16`).
"""

from __future__ import annotations

import operator

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError

from .protocol import (
    ERR_CRC,
    ERR_LENGTH,
    ERR_NOT_LOADED,
    ERR_OVERRUN,
    ERR_TYPE,
    START,
    TYPE_ERROR,
    TYPE_IDENTIFY,
    TYPE_IDENTITY,
    TYPE_INPUT,
    TYPE_LOAD,
    TYPE_LOADED,
    TYPE_RESULT,
    TYPE_SELFTEST,
    TYPE_SELFTEST_REPORT,
)

__all__ = ["CRC16", "FrameReceiver", "FrameTransmitter"]

#: the protocol's CRC (:func:`bitfab.boards.protocol.crc16`) over bytes, for ``.create()``
CRC16 = catalog.CRC16_CCITT_FALSE(data_width=8)


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
    """Assemble ``'I'`` frames of ``n_bytes`` payload bytes into vectors, and ``'?'`` frames
    (no payload) into identify requests.

    A frame that declares up to :attr:`max_payload` bytes is read to its end as its header
    declares it (a start byte in its payload begins no frame) and gives exactly one of: a vector
    on ``o``, a request on ``ident``, or an error code on ``err`` (where the transmitter sends it
    back as an ``'E'`` frame). The checks at its end, in order: the CRC (``ERR_CRC``), the type
    (``ERR_TYPE``), the length for the type (``ERR_LENGTH``), and for an input frame whether the
    previous vector still waits on ``o`` (``ERR_OVERRUN``: the host sent faster than the network
    computes; the frame is consumed, reported and dropped). ``i`` is always ready.

    A header that declares more than :attr:`max_payload` bytes is taken as corrupted (following it
    could swallow 64 KiB of later frames): ``ERR_LENGTH`` goes out at once and the receiver looks
    for the next start byte. The bytes the header declared (payload and CRC) are a quiet span: a
    frame that starts inside it reports no error (a start byte in the payload of a long frame is
    not a frame) and is abandoned where the span ends, while a good frame within it (the length,
    not the frame, was corrupted) is still taken. So every frame gets exactly one answer, whatever
    its length, unless its payload holds a whole valid frame.

    With ``load_bytes`` (a board with weights in SPRAM) it also takes ``'W'`` frames of that
    many payload bytes onto ``load`` (``ERR_OVERRUN`` when the previous one still waits) and
    answers input frames (and self-test requests) with ``ERR_NOT_LOADED`` while ``locked`` is
    high.

    Parameters
    ----------
    n_bytes : int
        Payload bytes of one input frame.
    load_bytes : int
        Payload bytes of one weight-load frame (0: no weight loads).
    selftest : bool
        Take ``'T'`` self-test requests onto ``test``.

    Members
    -------
    i : In(stream.Signature(8))
        Received bytes.
    o : Out(stream.Signature(8 * n_bytes))
        Payloads of good frames (byte k at bits ``[8k, 8k+8)``).
    ident : Out(stream.Signature(0))
        Identify requests; one arriving while another waits is dropped.
    err : Out(stream.Signature(8))
        Error codes (:data:`bitfab.boards.protocol.ERRORS`); a second error while one waits is
        dropped (the first is the one worth reading).
    test : Out(stream.Signature(0))
        Only with ``selftest``: self-test requests (``'T'`` frames, no payload; without
        ``selftest`` they are an unknown type).
    """

    def __init__(self, n_bytes: int, load_bytes: int = 0, *, selftest: bool = False):
        try:
            self._n = _n_bytes(n_bytes)
            self._nl = _n_bytes(load_bytes) if load_bytes else 0
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        self._selftest = bool(selftest)
        members = {
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(unsigned(8 * self._n))),
            "ident": Out(stream.Signature(0)),
            "err": Out(stream.Signature(8)),
        }
        if self._nl:
            members["load"] = Out(stream.Signature(unsigned(8 * self._nl)))
            members["locked"] = In(1)
        if self._selftest:
            members["test"] = Out(stream.Signature(0))
        super().__init__(members)

    @property
    def n_bytes(self) -> int:
        return self._n

    @property
    def max_payload(self) -> int:
        """The longest payload a header may declare and be followed: the larger of ``n_bytes``
        and ``load_bytes`` (the longest frame the board accepts; an identify frame has none)."""
        return max(self._n, self._nl)

    def elaborate(self, platform):
        m = Module()
        n, nl = self._n, self._nl
        big = max(n, nl)
        byte = self.i.payload
        m.submodules.crc = crc = CRC16.create()
        is_input = Signal()   # the frame's type
        is_ident = Signal()
        is_test = Signal()    # a self-test request (only with selftest)
        test_valid = Signal()
        if self._selftest:
            m.d.comb += self.test.valid.eq(test_valid)
            with m.If(self.test.valid & self.test.ready):
                m.d.sync += test_valid.eq(0)
        len_lo = Signal(8)
        left = Signal(range(big + 1))  # payload bytes still to come (at most big are followed)
        is_load = Signal()    # a weight-load frame (only with load_bytes)
        lfill = Signal()      # its payload goes into lbuf
        lbuf = Signal(8 * max(nl, 1))
        load_valid = Signal()
        if nl:
            m.d.comb += [self.load.valid.eq(load_valid), self.load.payload.eq(lbuf)]
            with m.If(self.load.valid & self.load.ready):
                m.d.sync += load_valid.eq(0)
            locked = self.locked
        else:
            locked = 0
        length_ok = Signal()  # the declared length is the one of the frame's type
        fill = Signal()       # the payload goes into buf
        overrun = Signal()    # an input frame came while the previous vector waits
        # the quiet span of a disbelieved header: its payload bytes counted down, then 0 and -1 for
        # its two CRC bytes (so the count loads without an adder, and its last byte is the one
        # where the sign bit is set)
        span = Signal()
        quiet = Signal(17)
        last = span & quiet[16]
        muted = Signal()      # this frame started inside a quiet span
        # one buffer: the frame being received, then the vector until the network takes it (a
        # second copy would cost 8n flip-flops; a frame that arrives while the vector still
        # waits is consumed and reported as an overrun instead)
        buf = Signal(8 * n)
        out_valid = Signal()
        ident_valid = Signal()
        err_valid = Signal()
        err_code = Signal(8)
        m.d.comb += [
            self.i.ready.eq(1),
            self.o.valid.eq(out_valid), self.ident.valid.eq(ident_valid),
            self.err.valid.eq(err_valid), self.err.payload.eq(err_code),
            self.o.payload.eq(buf),
            crc.data.eq(byte),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(self.ident.valid & self.ident.ready):
            m.d.sync += ident_valid.eq(0)
        with m.If(self.err.valid & self.err.ready):
            m.d.sync += err_valid.eq(0)
        with m.If(self.i.valid & span):
            m.d.sync += [quiet.eq(quiet - 1), span.eq(~last)]
        # the last byte of a quiet span ends a frame that started inside it
        abandon = self.i.valid & muted & last

        def report(code):
            with m.If(~muted & (~err_valid | self.err.ready)):
                m.d.sync += [err_valid.eq(1), err_code.eq(code)]

        def hunt():
            # a start byte that is the last byte of a quiet span begins no frame
            with m.If(self.i.valid & (byte == START) & ~last):
                m.d.comb += crc.start.eq(1)
                m.d.sync += muted.eq(span)
                m.next = "type"

        def header_byte(field, following, final=False):
            with m.If(self.i.valid):
                m.d.comb += crc.valid.eq(1)
                m.d.sync += field
                m.next = following
                if not final:
                    with m.If(abandon):
                        m.next = "start"

        declared = Cat(len_lo, byte)
        with m.FSM():
            with m.State("start"):
                hunt()
            with m.State("type"):
                header_byte([is_input.eq(byte == TYPE_INPUT), is_ident.eq(byte == TYPE_IDENTIFY),
                             is_load.eq((byte == TYPE_LOAD) if nl else 0),
                             is_test.eq(self._selftest & (byte == TYPE_SELFTEST))], "len_lo")
            with m.State("len_lo"):
                header_byte(len_lo.eq(byte), "len_hi")
            with m.State("len_hi"):
                waits = out_valid & ~self.o.ready
                lwaits = (load_valid & ~self.load.ready) if nl else 0
                header_byte([
                    left.eq(declared),
                    length_ok.eq(Mux(is_ident | is_test, declared == 0,
                                     Mux(is_load, declared == nl, declared == n))),
                    fill.eq(is_input & (declared == n) & ~waits),
                    lfill.eq(is_load & (declared == nl) & ~lwaits),
                    overrun.eq(Mux(is_load, lwaits, waits)),
                ], "payload")
                with m.If(self.i.valid):
                    with m.If(declared > big):
                        report(ERR_LENGTH)
                        with m.If(~muted):
                            m.d.sync += [quiet.eq(declared), span.eq(1)]
                        m.next = "start"
                    with m.Elif(declared == 0):
                        m.next = "crc_hi"
                    with m.If(abandon):
                        m.next = "start"
            with m.State("payload"):
                with m.If(self.i.valid):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += left.eq(left - 1)
                    with m.If(fill):
                        m.d.sync += buf.eq(byte << (8 * (n - 1)) | buf >> 8)
                    if nl:
                        with m.If(lfill):
                            m.d.sync += lbuf.eq(byte << (8 * (nl - 1)) | lbuf >> 8)
                    with m.If(left == 1):
                        m.next = "crc_hi"
                    with m.If(abandon):
                        m.next = "start"
            with m.State("crc_hi"):
                header_byte([], "crc_lo")
            with m.State("crc_lo"):
                header_byte([], "verdict", final=True)
            with m.State("verdict"):
                # the CRC register holds the frame's CRC a clock after its last byte
                with m.If(~crc.match_detected):
                    report(ERR_CRC)
                with m.Elif(~is_input & ~is_ident & ~is_load & ~is_test):
                    report(ERR_TYPE)
                with m.Elif(~length_ok):
                    report(ERR_LENGTH)
                with m.Elif(is_ident):
                    with m.If(~ident_valid | self.ident.ready):
                        m.d.sync += ident_valid.eq(1)
                with m.Elif(is_test & locked):  # the self-test runs the network's weights
                    report(ERR_NOT_LOADED)
                with m.Elif(is_test):
                    m.d.sync += test_valid.eq(1)
                with m.Elif(overrun):
                    report(ERR_OVERRUN)
                with m.Elif(is_load):
                    m.d.sync += load_valid.eq(1)
                with m.Elif(locked):
                    report(ERR_NOT_LOADED)
                with m.Else():
                    m.d.sync += out_valid.eq(1)
                m.next = "start"
                hunt()  # a byte may follow at once
        return m


class FrameTransmitter(wiring.Component):
    """Send each code of ``err`` as an ``'E'`` frame, each request of ``ident`` as an ``'F'``
    frame carrying ``identity``, and each result vector of ``i`` as an ``'R'`` frame on the byte
    stream ``o``, in that priority.

    Parameters
    ----------
    n_bytes : int
        Payload bytes of one result frame.
    identity : bytes
        The payload of the identify answer (:meth:`bitfab.boards.protocol.Identity.to_bytes`),
        constants in the bitstream.
    in_place : bool
        Send results from the producer's held payload instead of a copy (``i``). The producer
        is then held while its result goes out: for a network that gives a result at most
        once per result frame's line time (:class:`~bitfab.boards.top.SerialNetwork` decides).

    Members
    -------
    i : In(stream.Signature(8 * n_bytes))
        Result vectors. With ``in_place`` a result is read where the producer holds it and
        taken (``ready``) as its last payload byte goes out: no copy of it is kept (flip-flops
        are the scarce cells of a small FPGA), and the producer must keep ``payload`` unchanged
        while ``valid`` waits, as the network's output register does.
    ident : In(stream.Signature(0))
        Identify requests.
    err : In(stream.Signature(8))
        Error codes.
    loaded : In(stream.Signature(8))
        With ``load``: weight-load answers, sent as ``'L'`` frames of one status byte.
    o : Out(stream.Signature(8))
        The bytes of the frames.
    report : In(stream.Signature(8 * report_bytes))
        Only with ``report_bytes``: self-test reports, each sent as an ``'S'`` frame (after
        errors and identify answers, before results).
    """

    def __init__(self, n_bytes: int, identity: bytes, load: bool = False, *,
                 report_bytes: int = 0, in_place: bool = False):
        self._load = bool(load)
        self._in_place = bool(in_place)
        try:
            self._n = _n_bytes(n_bytes)
            if not isinstance(identity, (bytes, bytearray)) or not 1 <= len(identity) <= 0xFFFF:
                raise BitfabError(f"identity must be 1..65535 bytes, not {identity!r}")
            self._report = _n_bytes(report_bytes) if report_bytes else 0
        except BitfabError:
            self._MustUse__silence = True  # refused, never meant to be elaborated
            raise
        self._identity = bytes(identity)
        members = {
            "i": In(stream.Signature(unsigned(8 * self._n))),
            "ident": In(stream.Signature(0)),
            "err": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
        }
        if self._load:
            members["loaded"] = In(stream.Signature(8))
        if self._report:
            members["report"] = In(stream.Signature(unsigned(8 * self._report)))
        super().__init__(members)

    @property
    def n_bytes(self) -> int:
        return self._n

    @property
    def identity(self) -> bytes:
        return self._identity

    @property
    def in_place(self) -> bool:
        """Whether results are sent from the producer's held payload (no copy)."""
        return self._in_place

    def elaborate(self, platform):
        m = Module()
        n, ident = self._n, self._identity
        m.submodules.crc = crc = CRC16.create()
        # the frame being sent: an error, an identify answer (its payload from the constants of
        # `identity`) or a result; its length is `left` before the payload goes out
        error, rom, acked, selftest = Signal(), Signal(), Signal(), Signal()
        kind = Mux(error, Mux(acked, TYPE_LOADED, TYPE_ERROR),
                   Mux(rom, TYPE_IDENTITY, Mux(selftest, TYPE_SELFTEST_REPORT, TYPE_RESULT)))
        # in place, a result's bytes are read from i.payload (taken as its last byte goes out):
        # only the one-byte answers and self-test reports are copied into buf
        result = Signal()
        buf = Signal(8 * max(1 if self._in_place else n, self._report))
        left = Signal(range(max(n, len(ident), self._report) + 1))
        data = Signal(8)
        busy = Signal()
        m.d.comb += [self.o.payload.eq(data), self.o.valid.eq(busy)]
        sent = self.o.valid & self.o.ready

        # identity byte k goes out when `left` is len(ident) - k
        rom_byte = Signal(8)
        with m.Switch(left):
            for k, value in enumerate(ident):
                with m.Case(len(ident) - k):
                    m.d.comb += rom_byte.eq(value)

        def load(value, following, covered=True):
            # the CRC register takes a byte of TYPE .. PAYLOAD as it is loaded; it holds the CRC
            # a clock later, long before the byte has gone out
            m.d.sync += data.eq(value)
            m.d.comb += [crc.data.eq(value), crc.valid.eq(covered)]
            m.next = following

        # in place, result byte k goes out when `left` is n - k
        result_byte = Signal(8)
        if self._in_place:
            with m.Switch(left):
                for k in range(n):
                    with m.Case(n - k):
                        m.d.comb += result_byte.eq(self.i.payload[8 * k:8 * (k + 1)])

        def load_payload():
            byte = Mux(result, result_byte, buf[:8]) if self._in_place else buf[:8]
            load(Mux(rom, rom_byte, byte), "send_payload")
            m.d.sync += [buf.eq(buf >> 8), left.eq(left - 1)]
            if self._in_place:
                with m.If(result & (left == 1)):
                    m.d.comb += self.i.ready.eq(1)  # its last byte: the result is taken

        with m.FSM():
            with m.State("idle"):
                with m.If(self.err.valid):
                    m.d.comb += self.err.ready.eq(1)
                    m.d.sync += [error.eq(1), rom.eq(0), buf.eq(self.err.payload), left.eq(1),
                                 acked.eq(0), result.eq(0)]
                    m.next = "start"
                if self._load:  # a weight-load answer: like an error, one byte, another type
                    with m.Elif(self.loaded.valid):
                        m.d.comb += self.loaded.ready.eq(1)
                        m.d.sync += [error.eq(1), rom.eq(0), buf.eq(self.loaded.payload),
                                     left.eq(1), acked.eq(1), result.eq(0)]
                        m.next = "start"
                with m.Elif(self.ident.valid):
                    m.d.comb += self.ident.ready.eq(1)
                    m.d.sync += [error.eq(0), rom.eq(1), left.eq(len(ident)), result.eq(0)]
                    m.next = "start"
                if self._report:
                    with m.Elif(self.report.valid):
                        m.d.comb += self.report.ready.eq(1)
                        m.d.sync += [error.eq(0), rom.eq(0), selftest.eq(1), result.eq(0),
                                     buf.eq(self.report.payload), left.eq(self._report)]
                        m.next = "start"
                with m.Elif(self.i.valid):
                    if self._in_place:
                        m.d.sync += result.eq(1)
                    else:
                        m.d.comb += self.i.ready.eq(1)
                        m.d.sync += buf.eq(self.i.payload)
                    m.d.sync += [error.eq(0), rom.eq(0), selftest.eq(0), left.eq(n)]
                    m.next = "start"
            with m.State("start"):
                m.d.comb += crc.start.eq(1)
                m.d.sync += busy.eq(1)
                load(START, "send_start", covered=False)
            with m.State("send_start"):
                with m.If(sent):
                    load(kind, "send_type")
            with m.State("send_type"):
                with m.If(sent):
                    load(left.as_unsigned()[:8], "send_len_lo")
            with m.State("send_len_lo"):
                with m.If(sent):
                    load(left.as_unsigned()[8:], "send_len_hi")
            with m.State("send_len_hi"):
                with m.If(sent):
                    load_payload()  # every frame the board sends has a payload
            with m.State("send_payload"):
                with m.If(sent):
                    with m.If(left == 0):
                        load(crc.crc[8:], "send_crc_hi", covered=False)
                    with m.Else():
                        load_payload()
            with m.State("send_crc_hi"):
                with m.If(sent):
                    load(crc.crc[:8], "send_crc_lo", covered=False)
            with m.State("send_crc_lo"):
                with m.If(sent):
                    m.d.sync += busy.eq(0)
                    m.next = "idle"
        return m
