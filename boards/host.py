"""The host side of ``bitfab board run``: stream input vectors to a board, read its results.

A :class:`Transport` moves bytes; :class:`SerialTransport` is a real serial port (pyserial),
:class:`bitfab.boards.simboard.SimTransport` the board top-level in simulation. :class:`BoardClient`
speaks :mod:`bitfab.boards.protocol` over either, so the bytes a simulated board sees are the
bytes a real one would.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from bitfab.model import IntegerModel

from .protocol import (
    TYPE_ERROR,
    TYPE_INPUT,
    TYPE_RESULT,
    Frame,
    FrameParser,
    ProtocolError,
    encode_frame,
    payload_from_bytes,
    payload_to_bytes,
    vector_bytes,
)

__all__ = ["Transport", "SerialTransport", "BoardClient", "RunResult"]


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

    def __init__(self, port: str, baud: int = 115200, timeout: float = 2.0):
        import serial
        try:
            self._port = serial.Serial(port, baud, timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise ProtocolError(f"cannot open serial port {port}: {exc}") from None

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

    Parameters
    ----------
    transport : Transport
    model : IntegerModel
        The model the board was built from (it fixes the frame sizes and the value formats).
    window : int
        Answers outstanding before the client waits for one (the board holds one vector while
        the network computes another; more than two risks an overrun on a slow network).
    """

    def __init__(self, transport: Transport, model: IntegerModel, window: int = 2):
        if not isinstance(model, IntegerModel):
            raise ProtocolError(f"model must be an IntegerModel, not {type(model).__name__}")
        if window < 1:
            raise ProtocolError(f"window must be at least 1, not {window!r}")
        self._t = transport
        self._model = model
        self._window = window
        self.in_stream, self.out_stream = model.in_stream, model.out_stream
        self.in_bytes = vector_bytes(self.in_stream.payload_bits, 1)
        self.out_bytes = vector_bytes(self.out_stream.payload_bits, 1)
        self._parser = FrameParser()
        self._frames: list[Frame] = []
        self.sent = 0
        self.received = 0

    def frame_of(self, payload: int) -> bytes:
        """Return the input frame of one payload (:meth:`~bitfab.formats.StreamFormat.pack`:
        a vector, or one time step with its ``last`` bit)."""
        return encode_frame(TYPE_INPUT, payload_to_bytes(int(payload), self.in_bytes))

    def send(self, frame: bytes) -> None:
        """Send raw frame bytes (a test may send a corrupted one)."""
        self._t.write(frame)
        self.sent += len(frame)

    def receive(self) -> Frame:
        """Return the next frame from the board; raise :class:`ProtocolError` if none comes."""
        while not self._frames:
            data = self._t.read(max(1, 5 + self.out_bytes - self._parser.pending))
            if not data:
                raise ProtocolError(f"no answer from the board ({self._parser.pending} bytes of "
                                    f"a frame, {self._parser.skipped} stray bytes received)")
            self.received += len(data)
            self._frames += self._parser.feed(data)
        return self._frames.pop(0)

    def _result(self, frame: Frame, index: int) -> int:
        if not frame.ok:
            raise ProtocolError(f"answer {index}: the board's frame has a bad checksum")
        if frame.kind == TYPE_ERROR:
            raise ProtocolError(f"answer {index}: the board rejected the frame: {frame.error}")
        if frame.kind != TYPE_RESULT or len(frame.payload) != self.out_bytes:
            raise ProtocolError(f"answer {index}: expected a result frame of {self.out_bytes} "
                                f"bytes, got type 0x{frame.kind:02x} with "
                                f"{len(frame.payload)} bytes")
        return payload_from_bytes(frame.payload)

    def run(self, x, lengths=None, progress=None) -> RunResult:
        """Send ``x`` (vectors of the first layer's input values, or sequences with ``lengths``,
        one frame per step); return the output code rows, one per answer, in order.
        ``progress(done)`` is called after each answer."""
        from bitfab.errors import ModelRangeError
        try:
            payloads = self.in_stream.pack(x, lengths)
            _, last = self.in_stream.rows(x, lengths)
        except ModelRangeError as exc:
            raise ProtocolError(f"inputs: {exc}") from None
        answers = self.in_stream.answers(self.out_stream, last)
        frames = [self.frame_of(p) for p in payloads]
        expected = int(answers.sum())
        results = []
        start = time.perf_counter()
        sent0, received0 = self.sent, self.received
        issued = pending = 0
        while len(results) < expected:
            while issued < len(frames) and pending < self._window:
                self.send(frames[issued])
                pending += int(answers[issued])
                issued += 1
            results.append(self._result(self.receive(), len(results)))
            pending -= 1
            if progress is not None:
                progress(len(results))
        seconds = time.perf_counter() - start
        stream = self.out_stream
        codes = stream.unpack_codes(results) if results else \
            np.zeros((0, stream.count + int(stream.framed)), dtype=np.int64)
        return RunResult(codes, stream.values(codes), seconds, self.sent - sent0,
                         self.received - received0)
