"""The serial protocol between a host and a bitfab board: framing, checksums, vector bytes.

Pure Python and numpy (no amaranth import), so the host side runs without the hardware
generators. Every message in either direction is one frame::

    START (0xA5) | TYPE | LEN_LO | LEN_HI | PAYLOAD (LEN bytes) | CHECK

``CHECK`` makes the byte sum of ``TYPE .. CHECK`` zero modulo 256 (a corrupted byte, a dropped
byte or a byte from the next frame changes the sum or the length, so a bad frame is rejected, never
computed). Types:

- ``0x49`` (``'I'``) host -> board: one input transfer, its payload the packed codes of a vector
  or of one time step with its ``last`` bit (:meth:`bitfab.formats.StreamFormat.pack`,
  little-endian, ``ceil(payload_bits / 8)`` bytes);
- ``0x52`` (``'R'``) board -> host: one output transfer, ``ceil(payload_bits / 8)`` bytes of the
  last layer's packed output codes, in the order the inputs came;
- ``0x45`` (``'E'``) board -> host: a rejected frame, one byte of :data:`ERRORS` code.

The board answers every input frame with exactly one ``R`` or ``E`` frame, in order, except the
steps of a sequence model that emits one vector per sequence: there only the frame of each
sequence's final step is answered with an ``R`` frame (a rejected frame still gets its ``E``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitfab.errors import BitfabError

__all__ = [
    "START", "TYPE_INPUT", "TYPE_RESULT", "TYPE_ERROR", "ERRORS", "ERR_CHECKSUM", "ERR_LENGTH",
    "ERR_TYPE", "ERR_OVERRUN", "ProtocolError", "Frame", "FrameParser", "checksum",
    "encode_frame", "vector_bytes", "payload_from_bytes", "payload_to_bytes",
]

START = 0xA5
TYPE_INPUT = 0x49
TYPE_RESULT = 0x52
TYPE_ERROR = 0x45

ERR_CHECKSUM = 1
ERR_LENGTH = 2
ERR_TYPE = 3
ERR_OVERRUN = 4
#: error code -> what the board rejected
ERRORS = {
    ERR_CHECKSUM: "bad checksum",
    ERR_LENGTH: "wrong payload length",
    ERR_TYPE: "unknown frame type",
    ERR_OVERRUN: "input overrun (a vector arrived before the network took the previous one)",
}


class ProtocolError(BitfabError):
    """A frame was malformed, rejected by the board, or never came."""


def checksum(body: bytes) -> int:
    """Return the byte that makes ``sum(body) + check`` zero modulo 256."""
    return -sum(body) & 0xFF


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Return the bytes of one frame of type ``kind`` carrying ``payload``."""
    payload = bytes(payload)
    if not 0 <= kind <= 0xFF:
        raise ProtocolError(f"frame type must be a byte, not {kind!r}")
    if len(payload) > 0xFFFF:
        raise ProtocolError(f"a frame payload holds at most 65535 bytes, not {len(payload)}")
    body = bytes([kind, len(payload) & 0xFF, len(payload) >> 8]) + payload
    return bytes([START]) + body + bytes([checksum(body)])


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its type, payload and whether its checksum held."""

    kind: int
    payload: bytes
    ok: bool = True

    @property
    def error(self) -> str | None:
        """For an error frame, what the board rejected; else None."""
        if self.kind != TYPE_ERROR:
            return None
        code = self.payload[0] if self.payload else -1
        return ERRORS.get(code, f"unknown error code {code}")


class FrameParser:
    """Turn a byte stream into frames (the host's receiver).

    Bytes before a start byte are skipped (line noise, a board that was reset mid-frame); a frame
    whose checksum fails is returned with ``ok=False`` so that the caller reports it.
    """

    def __init__(self, max_payload: int = 0xFFFF):
        self._buf = bytearray()
        self._max = max_payload
        self.skipped = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order."""
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < 4:
                return frames
            length = self._buf[2] | self._buf[3] << 8
            if length > self._max:  # not a frame header: resynchronize on the next start byte
                self.skipped += 1
                del self._buf[:1]
                continue
            if len(self._buf) < 5 + length:
                return frames
            body = bytes(self._buf[1:4 + length])
            ok = checksum(body) == self._buf[4 + length]
            frames.append(Frame(body[0], body[3:], ok))
            del self._buf[:5 + length]

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)


def payload_to_bytes(payload: int, n_bytes: int) -> bytes:
    """Return a packed payload integer as ``n_bytes`` little-endian bytes."""
    return int(payload).to_bytes(n_bytes, "little")


def payload_from_bytes(data: bytes) -> int:
    """Return the payload integer of little-endian bytes."""
    return int.from_bytes(bytes(data), "little")


def vector_bytes(n: int, bits: int) -> int:
    """Bytes of a frame payload holding ``n`` elements of ``bits`` bits: ``ceil(n*bits/8)``."""
    return -(-n * bits // 8)

