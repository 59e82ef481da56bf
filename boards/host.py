"""The host side of ``bitfab board run``: stream input vectors to a board, read its results.

A :class:`Transport` moves bytes; :class:`SerialTransport` is a real serial port (pyserial),
:class:`bitfab.boards.simboard.SimTransport` the board top-level in simulation. :class:`BoardClient`
speaks :mod:`bitfab.boards.protocol` over either, so the bytes a simulated board sees are the
bytes a real one would. Before its first run it asks the board what it runs (identify) and
refuses a board whose bitstream was built from another model.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from bitfab.model import IntegerModel

from .protocol import (
    ERR_TYPE,
    FRAME_OVERHEAD,
    IDENTITY_BYTES,
    IDLE,
    LOAD_DONE,
    LOAD_MORE,
    LOAD_STATUS,
    SELFTEST_BYTES,
    TYPE_ERROR,
    TYPE_IDENTIFY,
    TYPE_IDENTITY,
    TYPE_INPUT,
    TYPE_LOADED,
    TYPE_RESULT,
    TYPE_SELFTEST,
    TYPE_SELFTEST_REPORT,
    Frame,
    FrameParser,
    Identity,
    ProtocolError,
    SelfTestReport,
    encode_frame,
    load_frames,
    payload_from_bytes,
    payload_to_bytes,
    vector_bytes,
)

__all__ = ["Transport", "SerialTransport", "BoardClient", "RunResult", "DEEP_WINDOW",
           "HOST_BUFFER"]

#: frames a host keeps outstanding to a board that keeps up with the line
#: (:meth:`~bitfab.boards.protocol.Identity.keeps_up`): enough to cover a USB round trip of
#: ~1 ms (the FTDI latency timer at 1 ms, pyserial's low-latency mode) at 3 Mbaud, where a
#: frame of the digits network takes 0.15 ms
DEEP_WINDOW = 64
#: bytes of answers a host lets queue unread (the Linux tty layer buffers 4 KiB)
HOST_BUFFER = 4096


class Transport(Protocol):
    """Moves bytes to and from a board."""

    def write(self, data: bytes) -> None:
        """Send ``data``."""

    def read(self, n: int) -> bytes:
        """Return up to ``n`` received bytes, waiting at most the transport's timeout; fewer (or
        none) means nothing more came in time."""

    def close(self) -> None:
        """Release the transport."""


class SerialTransport:
    """A serial port (``/dev/ttyUSB1``, ``COM3``) at ``baud``, 8N1, opened with pyserial."""

    def __init__(self, port: str, baud: int = 3_000_000, timeout: float = 2.0):
        import serial
        try:
            self._port = serial.Serial(port, baud, timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise ProtocolError(f"cannot open serial port {port}: {exc}") from None
        try:  # Linux: the FTDI latency timer at 1 ms instead of 16 (ASYNC_LOW_LATENCY)
            self._port.set_low_latency_mode(True)
        except (AttributeError, NotImplementedError, ValueError, OSError):
            pass

    def write(self, data: bytes) -> None:
        self._port.write(data)

    def read(self, n: int) -> bytes:
        return self._port.read(n)

    def close(self) -> None:
        self._port.close()


class RunResult:
    """What :meth:`BoardClient.run` measured: the answers as code rows (``codes``, one per
    answer, a framed output's ``last`` as the final column) and as element values
    (``outputs``), and the throughput."""

    def __init__(self, codes: np.ndarray, outputs: np.ndarray, seconds: float, bytes_sent: int,
                 bytes_received: int):
        self.codes = codes
        self.outputs = outputs
        self.seconds = seconds
        self.bytes_sent = bytes_sent
        self.bytes_received = bytes_received

    @property
    def vectors_per_s(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds > 0 else 0.0


class BoardClient:
    """Run a model's inputs on a board over a transport.

    The first :meth:`run` (or an explicit :meth:`check_board`) asks the board what it runs and
    refuses a board whose bitstream holds another model's fingerprint. Answers are parsed with a
    :class:`~bitfab.boards.protocol.FrameParser` that accepts no payload longer than a result
    (or an identify answer), so a corrupted length byte is reported as such at once.

    Parameters
    ----------
    transport : Transport
    model : IntegerModel
        The model the board was built from (it fixes the frame sizes and the value formats).
    window : int or None
        Answers outstanding before the client waits for one. None (default) chooses after
        identify (:meth:`pick_window`): :data:`DEEP_WINDOW` (at most :data:`HOST_BUFFER` bytes
        of answers) when the board says it keeps up with the line, else 2 (the board holds one
        vector while the network computes another; more risks an overrun on a slow network).
    weights : sequence of int or None
        The weight image of a board built with weights in SPRAM
        (:meth:`bitfab.hw.layer.Network.load_image`): the first run (or self-test) loads it
        after the identify check (:meth:`load_weights`), one frame at a time, before vectors are
        pipelined. None: the weights are in the bitstream.
    """

    def __init__(self, transport: Transport, model: IntegerModel, window: int | None = None,
                 weights=None):
        if not isinstance(model, IntegerModel):
            raise ProtocolError(f"model must be an IntegerModel, not {type(model).__name__}")
        if window is not None and window < 1:
            raise ProtocolError(f"window must be at least 1, not {window!r}")
        self._t = transport
        self._model = model
        self._window = window
        self.in_stream, self.out_stream = model.in_stream, model.out_stream
        self.in_bytes = vector_bytes(self.in_stream.payload_bits, 1)
        self.out_bytes = vector_bytes(self.out_stream.payload_bits, 1)
        self._parser = FrameParser(max(self.out_bytes, IDENTITY_BYTES, SELFTEST_BYTES))
        self._frames: list[Frame] = []
        self.sent = 0
        self.received = 0
        #: what the board said it runs (None until :meth:`check_board`)
        self.identity: Identity | None = None
        self._weights = None if weights is None else [int(w) for w in weights]
        #: whether the board confirmed a weight load (:meth:`load_weights`)
        self.loaded = False

    @property
    def expected_identity(self) -> Identity:
        """What a board built from the model answers to identify."""
        return Identity(self._model.fingerprint(), self.in_bytes, self.out_bytes)

    def frame_of(self, payload: int) -> bytes:
        """Return the input frame of one payload (:meth:`~bitfab.formats.StreamFormat.pack`:
        a vector, or one time step with its ``last`` bit)."""
        return encode_frame(TYPE_INPUT, payload_to_bytes(int(payload), self.in_bytes))

    def send(self, frame: bytes) -> None:
        """Send raw frame bytes (a test may send a corrupted one)."""
        self._t.write(frame)
        self.sent += len(frame)

    def receive(self, what: str = "the answer") -> Frame:
        """Return the next frame from the board; raise :class:`ProtocolError` if none comes
        (``what`` names the awaited frame in the message)."""
        while not self._frames:
            # never ask for more than the frame under way holds: a read waits for all it asks
            declared = self._parser.declared
            want = 4 if declared is None else FRAME_OVERHEAD + declared
            data = self._t.read(max(1, want - self._parser.pending))
            if not data:
                if declared is not None:
                    raise ProtocolError(
                        f"{what}: the board's frame is incomplete: its header declared "
                        f"{declared} bytes, {self._parser.pending - 4} of {declared + 2} "
                        f"payload and CRC bytes came")
                raise ProtocolError(f"{what}: no answer from the board ({self._parser.pending} "
                                    f"bytes of a frame, {self._parser.skipped} stray bytes "
                                    f"received)")
            self.received += len(data)
            self._frames += self._parser.feed(data)
        return self._frames.pop(0)

    def _intact(self, frame: Frame, what: str, expected: str) -> None:
        if frame.declared is not None:
            raise ProtocolError(f"{what}: a frame header declared {frame.declared} bytes; "
                                f"expected {expected} (a length byte corrupted on the line; "
                                f"the host resynchronized at the next start byte)")
        if not frame.ok:
            raise ProtocolError(f"{what}: {frame.problem}")
        if frame.kind == TYPE_ERROR:
            raise ProtocolError(f"{what}: the board rejected the frame: {frame.error}")

    def _result(self, frame: Frame, index: int) -> int:
        what = f"answer {index}"
        self._intact(frame, what, str(self.out_bytes))
        if frame.kind != TYPE_RESULT or len(frame.payload) != self.out_bytes:
            raise ProtocolError(f"{what}: expected a result frame of {self.out_bytes} "
                                f"bytes, got type 0x{frame.kind:02x} with "
                                f"{len(frame.payload)} bytes")
        return payload_from_bytes(frame.payload)

    def identify(self) -> Identity:
        """Ask the board what it runs; return its answer."""
        self.send(encode_frame(TYPE_IDENTIFY, b""))
        what = "identify"
        try:
            frame = self.receive(what)
            self._intact(frame, what, str(IDENTITY_BYTES))
        except ProtocolError as exc:
            raise ProtocolError(f"{exc} (is the board running a bitfab bitstream of this "
                                f"version? build and load {self._model.name}'s bitstream)"
                                ) from None
        if frame.kind != TYPE_IDENTITY:
            raise ProtocolError(f"{what}: expected an identify answer, got type "
                                f"0x{frame.kind:02x} with {len(frame.payload)} bytes")
        return Identity.from_bytes(frame.payload)

    def check_board(self) -> Identity:
        """Identify the board and raise :class:`ProtocolError` unless it runs the model's
        bitstream; return its identity."""
        got, want = self.identify(), self.expected_identity
        if got.fingerprint != want.fingerprint:
            raise ProtocolError(f"the board runs model {got.fingerprint}, not "
                                f"{self._model.name}'s {want.fingerprint}: build and load its "
                                f"bitstream")
        if not got.same_model(want):  # one model, other frame sizes: another bitfab's
            raise ProtocolError(f"the board runs {self._model.name} with {got.in_bytes}-byte "
                                f"input and {got.out_bytes}-byte result frames, not "
                                f"{want.in_bytes} and {want.out_bytes}: rebuild its bitstream")
        self.identity = got
        return got

    def load_weights(self, image=None) -> int:
        """Send the weight image (``image``, default the one given to the client) in ``'W'``
        frames, one at a time, each answered by an ``'L'`` status; return the frames sent.
        Raises :class:`ProtocolError` unless the board confirms the whole image matched the CRC
        in its bitstream (a wrong image is refused and the board keeps refusing inputs)."""
        image = self._weights if image is None else [int(w) for w in image]
        if not image:
            raise ProtocolError("no weight image to load: the model's bitstream keeps its "
                                "weights in block RAM")
        frames = load_frames(image)
        self._parser = FrameParser(max(self.out_bytes, IDENTITY_BYTES, SELFTEST_BYTES))
        for k, frame in enumerate(frames):
            self.send(frame)
            what = f"weight load chunk {k} of {len(frames)}"
            got = self.receive(what)
            self._intact(got, what, "1")
            if got.kind != TYPE_LOADED or len(got.payload) != 1:
                raise ProtocolError(f"{what}: expected a load answer, got type "
                                    f"0x{got.kind:02x} with {len(got.payload)} bytes")
            status = got.payload[0]
            want = LOAD_DONE if k == len(frames) - 1 else LOAD_MORE
            if status != want:
                raise ProtocolError(f"{what}: the board answered "
                                    f"{LOAD_STATUS.get(status, f'status {status}')!r}, not "
                                    f"{LOAD_STATUS[want]!r}")
        self.loaded = True
        return len(frames)

    @property
    def window(self) -> int:
        """Answers kept outstanding (:meth:`pick_window` until set)."""
        return self._window if self._window is not None else self.pick_window()

    def pick_window(self) -> int:
        """The window for the board identified (2 before identify): :data:`DEEP_WINDOW`, capped
        so that the answers fit :data:`HOST_BUFFER`, when the board keeps up with the line
        (:meth:`~bitfab.boards.protocol.Identity.keeps_up`: it then holds at most one frame
        at a time, however many are on the way), else 2."""
        if self.identity is None or not self.identity.keeps_up():
            return 2
        return max(2, min(DEEP_WINDOW, HOST_BUFFER // (self.out_bytes + FRAME_OVERHEAD)))

    def selftest(self) -> SelfTestReport:
        """Run the board's self-test (identifying it first); return its report. A board built
        without one answers the request as an unknown frame type, reported as such."""
        if self.identity is None:
            self.check_board()
        if self._weights is not None and not self.loaded:
            self.load_weights()  # the self-test runs the network's weights
        self.send(encode_frame(TYPE_SELFTEST, b""))
        what = "self-test"
        frame = self.receive(what)
        if frame.kind == TYPE_ERROR and frame.ok and frame.payload[:1] == bytes([ERR_TYPE]):
            raise ProtocolError(f"{what}: the board's bitstream has no self-test: build it with "
                                f"bitfab synth --selftest N")
        self._intact(frame, what, str(SELFTEST_BYTES))
        if frame.kind != TYPE_SELFTEST_REPORT:
            raise ProtocolError(f"{what}: expected a self-test report, got type "
                                f"0x{frame.kind:02x} with {len(frame.payload)} bytes")
        return SelfTestReport.from_bytes(frame.payload)

    def run(self, x, lengths=None, progress=None) -> RunResult:
        """Send ``x`` (vectors of the first layer's input values, or sequences with ``lengths``,
        one frame per step); return the output code rows, one per answer, in order.
        ``progress(done)`` is called after each answer. The first run checks the board first
        (:meth:`check_board`)."""
        from bitfab.errors import ModelRangeError
        try:
            payloads = self.in_stream.pack(x, lengths)
            _, last = self.in_stream.rows(x, lengths)
        except ModelRangeError as exc:
            raise ProtocolError(f"inputs: {exc}") from None
        if self.identity is None:
            self.check_board()
        if self._weights is not None and not self.loaded:
            self.load_weights()
        answers = self.in_stream.answers(self.out_stream, last).astype(np.int64)
        window = self.window
        if self._model.holds_sequences:
            # no answer of a sequence comes before its last step is in, and the board takes no
            # step while it answers: a whole sequence goes out, then all its answers come back
            if self.out_stream.framed:
                ends = np.flatnonzero(last)
                answers = np.zeros(len(last), dtype=np.int64)
                answers[ends] = np.diff(np.concatenate([[-1], ends]))
            window = 1
        frames = [self.frame_of(p) for p in payloads]
        # a step that gets no answer is followed by idle bytes where the network is slower than
        # the line (the answers pace the others): the next step then finds it free
        idle = bytes([IDLE]) * self.identity.idle_bytes()
        if idle:
            frames = [f + idle if a == 0 else f for f, a in zip(frames, answers)]
        expected = int(answers.sum())
        results = []
        start = time.perf_counter()
        sent0, received0 = self.sent, self.received
        issued = pending = 0
        while len(results) < expected:
            while issued < len(frames) and pending < window:
                self.send(frames[issued])
                pending += int(answers[issued])
                issued += 1
            index = len(results)
            results.append(self._result(self.receive(f"answer {index}"), index))
            pending -= 1
            if progress is not None:
                progress(len(results))
        seconds = time.perf_counter() - start
        stream = self.out_stream
        codes = stream.unpack_codes(results) if results else \
            np.zeros((0, stream.count + int(stream.framed)), dtype=np.int64)
        return RunResult(codes, stream.values(codes), seconds, self.sent - sent0,
                         self.received - received0)
