"""The serial protocol between a host and a bitfab board: framing, CRC, identify, vector bytes.

Pure Python and numpy (no amaranth import), so the host side runs without the hardware
generators. Every message in either direction is one frame (``docs/protocol.md`` has the whole
protocol)::

    START (0xA5) | TYPE | LEN_LO | LEN_HI | PAYLOAD (LEN bytes) | CRC_HI | CRC_LO

``CRC`` is the CRC-16/CCITT-FALSE (:func:`crc16`: polynomial 0x1021, initial value 0xFFFF, no
reflection, no final XOR) of ``TYPE .. PAYLOAD``, sent high byte first, so that the CRC of
``TYPE .. CRC_LO`` is zero. It catches every odd number of bit errors, every error of up to three
bits in a frame of up to 4,093 bytes, every burst of up to 16 bits, and bytes that were swapped or
changed in compensating ways (which a byte sum accepts). ``LEN`` is little-endian. Types:

- ``0x49`` (``'I'``) host -> board: one input transfer, its payload the packed codes of a vector
  or of one time step with its ``last`` bit (:meth:`bitfab.formats.StreamFormat.pack`,
  little-endian, ``ceil(payload_bits / 8)`` bytes);
- ``0x3F`` (``'?'``) host -> board: identify, no payload;
- ``0x52`` (``'R'``) board -> host: one output transfer, ``ceil(payload_bits / 8)`` bytes of the
  last layer's packed output codes, in the order the inputs came;
- ``0x46`` (``'F'``) board -> host: the answer to identify, an :class:`Identity` (the first 8
  bytes of the model's fingerprint, built into the bitstream, and the payload bytes of an input
  and a result frame);
- ``0x45`` (``'E'``) board -> host: a rejected frame, one byte of :data:`ERRORS` code;
- ``0x57`` (``'W'``) host -> board: a chunk of weights for the SPRAM weight memories of a board
  built with weights in SPRAM (:func:`load_frames`): a 2-byte little-endian chunk index (0 starts
  a new load) and :data:`LOAD_WORDS` 16-bit little-endian words; the board answers each with
- ``0x4C`` (``'L'``) board -> host: one :data:`LOAD_STATUS` byte. Until a whole image has come
  and its CRC matched the one built into the bitstream, the board answers input and self-test
  frames with ``ERR_NOT_LOADED`` (docs/protocol.md, "Weight load");
- ``0x54`` (``'T'``) host -> board: run the on-board self-test, no payload (a board built
  without one answers ``E`` 3, unknown type);
- ``0x53`` (``'S'``) board -> host: the self-test's :class:`SelfTestReport`.

The board answers every frame it receives with exactly one ``R``, ``F``, ``L``, ``S`` or ``E``
frame, except the
steps of a sequence model that emits one vector per sequence: there only the frame of each
sequence's final step is answered with an ``R`` frame (a rejected frame still gets its ``E``).
A frame that declares more payload bytes than the receiver's largest accepted frame is taken as
a corrupted header: the receiver resynchronizes at the next start byte instead of reading that
many bytes (the board still answers it with one ``E``; :class:`FrameParser`,
:class:`bitfab.boards.framing.FrameReceiver`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from bitfab.errors import BitfabError

__all__ = [
    "START", "IDLE", "TYPE_INPUT", "TYPE_IDENTIFY", "TYPE_RESULT", "TYPE_IDENTITY", "TYPE_ERROR",
    "ERRORS", "ERR_CRC", "ERR_LENGTH", "ERR_TYPE", "ERR_OVERRUN", "ERR_NOT_LOADED", "CRC_INIT",
    "CRC_POLY", "TYPE_LOAD", "TYPE_LOADED", "LOAD_WORDS", "LOAD_BYTES", "LOAD_STATUS",
    "LOAD_MORE", "LOAD_DONE", "LOAD_BAD_CRC", "LOAD_ORDER", "load_crc", "load_frames",
    "FRAME_OVERHEAD", "IDENTITY_BYTES", "ProtocolError", "Frame", "FrameParser", "Identity",
    "crc16", "encode_frame", "vector_bytes", "payload_from_bytes", "payload_to_bytes",
    "TYPE_SELFTEST", "TYPE_SELFTEST_REPORT", "SELFTEST_BYTES", "SelfTestReport",
]

START = 0xA5
#: A filler byte between frames (anything but :data:`START`: the frame receiver skips it while it
#: hunts for the next frame's start byte).
IDLE = 0x00
TYPE_INPUT = 0x49
TYPE_IDENTIFY = 0x3F
TYPE_RESULT = 0x52
TYPE_IDENTITY = 0x46
TYPE_ERROR = 0x45
TYPE_LOAD = 0x57
TYPE_LOADED = 0x4C
#: 16-bit words in one weight-load frame; its payload is a 2-byte chunk index and the words
LOAD_WORDS = 8
LOAD_BYTES = 2 + 2 * LOAD_WORDS
#: the answer to a weight-load frame
LOAD_MORE, LOAD_DONE, LOAD_BAD_CRC, LOAD_ORDER = 0, 1, 2, 3
LOAD_STATUS = {
    LOAD_MORE: "chunk taken, more to come",
    LOAD_DONE: "image complete, CRC matched: the board takes inputs",
    LOAD_BAD_CRC: "image complete but its CRC differs from the bitstream's: not loaded",
    LOAD_ORDER: "chunk out of order (not the next one, nor 0 which restarts): ignored",
}
TYPE_SELFTEST = 0x54
TYPE_SELFTEST_REPORT = 0x53

#: CRC-16/CCITT-FALSE: the generator polynomial x^16 + x^12 + x^5 + 1 and the initial value
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
#: bytes of a frame besides its payload: START, TYPE, LEN_LO, LEN_HI, CRC_HI, CRC_LO
FRAME_OVERHEAD = 6
#: payload bytes of an identify answer (:class:`Identity`)
IDENTITY_BYTES = 18
#: payload bytes of an identify answer of a bitstream from before the link fields (no
#: ``input_clocks`` and ``divisor``)
_IDENTITY_BYTES_V1 = 12
#: payload bytes of a self-test report (:class:`SelfTestReport`)
SELFTEST_BYTES = 20

ERR_CRC = 1
ERR_LENGTH = 2
ERR_TYPE = 3
ERR_OVERRUN = 4
ERR_NOT_LOADED = 5
#: error code -> what the board rejected
ERRORS = {
    ERR_CRC: "bad CRC",
    ERR_LENGTH: "wrong payload length",
    ERR_TYPE: "unknown frame type",
    ERR_OVERRUN: "input overrun (a vector arrived before the network took the previous one)",
    ERR_NOT_LOADED: "weights not loaded (the SPRAM weight memories take a weight load first)",
}


class ProtocolError(BitfabError):
    """A frame was malformed, rejected by the board, or never came."""


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ CRC_POLY if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """Return the CRC-16/CCITT-FALSE of ``data``, continuing from ``crc``.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    for byte in bytes(data):
        crc = (crc << 8 & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Return the bytes of one frame of type ``kind`` carrying ``payload``."""
    payload = bytes(payload)
    if not 0 <= kind <= 0xFF:
        raise ProtocolError(f"frame type must be a byte, not {kind!r}")
    if len(payload) > 0xFFFF:
        raise ProtocolError(f"a frame payload holds at most 65535 bytes, not {len(payload)}")
    body = bytes([kind, len(payload) & 0xFF, len(payload) >> 8]) + payload
    return bytes([START]) + body + crc16(body).to_bytes(2, "big")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its type, payload and whether its CRC held.

    Members
    -------
    kind : int
    payload : bytes
    ok : bool
        The CRC held (and the header was believable).
    declared : int or None
        For a header that declared more payload bytes than the parser accepts, that length: the
        frame was not read (``payload`` is empty, ``ok`` False) and the parser resynchronized at
        the next start byte.
    """

    kind: int
    payload: bytes
    ok: bool = True
    declared: int | None = None

    @property
    def error(self) -> str | None:
        """For an error frame, what the board rejected; else None."""
        if self.kind != TYPE_ERROR:
            return None
        code = self.payload[0] if self.payload else -1
        return ERRORS.get(code, f"unknown error code {code}")

    @property
    def problem(self) -> str | None:
        """What is wrong with the frame on the line (None: it arrived intact)."""
        if self.declared is not None:
            return f"a frame header declared {self.declared} bytes"
        if not self.ok:
            return (f"the board's frame (type 0x{self.kind:02x}, {len(self.payload)} bytes) has a "
                    f"bad CRC")
        return None


class FrameParser:
    """Turn a byte stream into frames (the host's receiver).

    Bytes before a start byte are skipped (line noise, a board that was reset mid-frame); a frame
    whose CRC fails is returned with ``ok=False`` so that the caller reports it. A header that
    declares more than ``max_payload`` bytes is a corrupted header: it is returned as a frame
    with ``declared`` set, and parsing resumes at the next start byte after its own (a frame is
    never completed with the bytes of the frames after it).

    Parameters
    ----------
    max_payload : int
        The largest payload accepted: for a :class:`~bitfab.boards.host.BoardClient`, the larger
        of the result size and :data:`IDENTITY_BYTES`.
    """

    def __init__(self, max_payload: int):
        if isinstance(max_payload, bool):
            raise ProtocolError(f"max_payload must be an integer in 0..65535, not {max_payload!r}")
        try:
            limit = operator.index(max_payload)
        except TypeError:
            raise ProtocolError(f"max_payload must be an integer in 0..65535, "
                                f"not {max_payload!r}") from None
        if not 0 <= limit <= 0xFFFF:
            raise ProtocolError(f"max_payload must be an integer in 0..65535, not {max_payload!r}")
        self._buf = bytearray()
        self._max = limit
        self.skipped = 0

    @property
    def max_payload(self) -> int:
        """The largest payload accepted; a longer declared length is a corrupted header."""
        return self._max

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
                frames.append(Frame(self._buf[1], b"", False, declared=length))
                self.skipped += 1
                del self._buf[:1]
                continue
            if len(self._buf) < FRAME_OVERHEAD + length:
                return frames
            body = bytes(self._buf[1:4 + length])
            ok = crc16(self._buf[1:FRAME_OVERHEAD + length]) == 0
            frames.append(Frame(body[0], body[3:], ok))
            del self._buf[:FRAME_OVERHEAD + length]

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)

    @property
    def declared(self) -> int | None:
        """The payload length the header held in :attr:`pending` declares (None: no header)."""
        if len(self._buf) < 4:
            return None
        return self._buf[2] | self._buf[3] << 8


@dataclass(frozen=True)
class Identity:
    """What a board says it runs (the payload of a ``'F'`` frame, :data:`IDENTITY_BYTES` bytes:
    the fingerprint bytes, then ``in_bytes`` and ``out_bytes`` as little-endian 16-bit numbers,
    ``input_clocks`` as a little-endian 32-bit number and ``divisor`` as a 16-bit one).

    Members
    -------
    fingerprint : str
        The first 8 bytes of the model's fingerprint
        (:meth:`bitfab.model.IntegerModel.fingerprint`) as 16 hex digits.
    in_bytes, out_bytes : int
        Payload bytes of an input frame and of a result frame.
    input_clocks : int
        Clocks between inputs of the network at full rate (its initiation interval; 0: not
        said, a bitstream from before this field).
    divisor : int
        Clocks per UART bit (0: not said). With ``input_clocks`` it tells the host whether the
        board keeps up with the line (:meth:`keeps_up`).
    """

    fingerprint: str
    in_bytes: int
    out_bytes: int
    input_clocks: int = 0
    divisor: int = 0

    def __post_init__(self):
        fp = self.fingerprint
        if not isinstance(fp, str) or len(fp) < 16 or \
                any(c not in "0123456789abcdef" for c in fp.lower()):
            raise ProtocolError(f"fingerprint must be a hex string of at least 16 digits, "
                                f"not {fp!r}")
        object.__setattr__(self, "fingerprint", fp[:16].lower())
        for name, top in (("in_bytes", 0xFFFF), ("out_bytes", 0xFFFF),
                          ("input_clocks", 0xFFFFFFFF), ("divisor", 0xFFFF)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 <= value <= top:
                raise ProtocolError(f"{name} must be an integer in 0..{top}, not {value!r}")

    def to_bytes(self) -> bytes:
        """Return the payload of the identify answer."""
        return (bytes.fromhex(self.fingerprint) + self.in_bytes.to_bytes(2, "little")
                + self.out_bytes.to_bytes(2, "little")
                + self.input_clocks.to_bytes(4, "little") + self.divisor.to_bytes(2, "little"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        """Read the payload of an identify answer (or the 12 bytes of one from before
        ``input_clocks`` and ``divisor``, which read as 0)."""
        data = bytes(data)
        if len(data) not in (IDENTITY_BYTES, _IDENTITY_BYTES_V1):
            raise ProtocolError(f"an identify answer holds {IDENTITY_BYTES} bytes, "
                                f"not {len(data)}")
        data = data.ljust(IDENTITY_BYTES, b"\0")
        return cls(data[:8].hex(), int.from_bytes(data[8:10], "little"),
                   int.from_bytes(data[10:12], "little"), int.from_bytes(data[12:16], "little"),
                   int.from_bytes(data[16:18], "little"))

    def same_model(self, other: Identity) -> bool:
        """Whether ``other`` is the same model with the same frame sizes (the link fields,
        which depend on the build, are not compared)."""
        return (self.fingerprint, self.in_bytes, self.out_bytes) == \
            (other.fingerprint, other.in_bytes, other.out_bytes)

    def frame_clocks(self, payload: int) -> int:
        """Clocks the line takes to carry a frame of ``payload`` bytes (10 bits a byte)."""
        return (payload + FRAME_OVERHEAD) * 10 * self.divisor

    def keeps_up(self) -> bool:
        """Whether the board takes input frames as fast as the line brings them and sends
        results as fast (so a host may keep many frames outstanding without an overrun): the
        network's ``input_clocks`` and a result frame's line time are at most an input frame's
        line time. False when the board does not say (``divisor`` 0)."""
        if not self.divisor or not self.input_clocks:
            return False
        line = self.frame_clocks(self.in_bytes)
        return self.input_clocks <= line and self.frame_clocks(self.out_bytes) <= line

    def idle_bytes(self) -> int:
        """Filler bytes (:data:`IDLE`) a host sends after an input frame that gets no answer (a
        step before a sequence's last) so that the next frame arrives after the network took
        this one: the bytes whose line time covers ``input_clocks`` beyond the frame's own,
        plus one; 0 when the board keeps up or does not say its timing."""
        if not self.divisor or not self.input_clocks:
            return 0
        extra = self.input_clocks - self.frame_clocks(self.in_bytes)
        return 0 if extra <= 0 else -(-extra // (10 * self.divisor)) + 1


@dataclass(frozen=True)
class SelfTestReport:
    """What the on-board self-test measured (the payload of an ``'S'`` frame,
    :data:`SELFTEST_BYTES` bytes, five little-endian 32-bit numbers in this order).

    Members
    -------
    vectors : int
        Vectors the self-test ROM streamed through the network.
    mismatches : int
        Results that differed from the expected ones in the ROM.
    cycles : int
        Clocks from the request to the last result.
    steady_cycles : int
        Clocks from the first result to the last (``(vectors - 1) * II`` at full rate).
    clock_hz : int
        The design clock, a constant of the bitstream.
    """

    vectors: int
    mismatches: int
    cycles: int
    steady_cycles: int
    clock_hz: int

    FIELDS = ("vectors", "mismatches", "cycles", "steady_cycles", "clock_hz")

    def to_bytes(self) -> bytes:
        return b"".join(int(getattr(self, f)).to_bytes(4, "little") for f in self.FIELDS)

    @classmethod
    def from_bytes(cls, data: bytes) -> SelfTestReport:
        data = bytes(data)
        if len(data) != SELFTEST_BYTES:
            raise ProtocolError(f"a self-test report holds {SELFTEST_BYTES} bytes, "
                                f"not {len(data)}")
        return cls(*(int.from_bytes(data[4 * k:4 * k + 4], "little") for k in range(5)))

    @property
    def clocks_per_vector(self) -> float | None:
        """Clocks between results at full rate (None for fewer than two vectors)."""
        return self.steady_cycles / (self.vectors - 1) if self.vectors > 1 else None

    @property
    def vectors_per_s(self) -> float | None:
        """Vectors per second at the board clock, from the steady-state clocks."""
        per = self.clocks_per_vector
        return self.clock_hz / per if per else None

    def to_json(self) -> dict:
        return {f: getattr(self, f) for f in self.FIELDS} | {
            "clocks_per_vector": self.clocks_per_vector, "vectors_per_s": self.vectors_per_s}


def payload_to_bytes(payload: int, n_bytes: int) -> bytes:
    """Return a packed payload integer as ``n_bytes`` little-endian bytes."""
    return int(payload).to_bytes(n_bytes, "little")


def payload_from_bytes(data: bytes) -> int:
    """Return the payload integer of little-endian bytes."""
    return int.from_bytes(bytes(data), "little")


def vector_bytes(n: int, bits: int) -> int:
    """Bytes of a frame payload holding ``n`` elements of ``bits`` bits: ``ceil(n*bits/8)``."""
    return -(-n * bits // 8)


def load_crc(image) -> int:
    """Return the CRC-16 of a weight image (16-bit words, each high byte first): the value a
    board built with weights in SPRAM holds as a constant and compares after a load."""
    return crc16(b"".join(int(w).to_bytes(2, "big") for w in image))


def load_frames(image) -> list[bytes]:
    """Return the ``'W'`` frames that load ``image`` (16-bit words; the last chunk padded with
    zero words, which the board drops)."""
    words = [int(w) for w in image]
    if not words:
        raise ProtocolError("a weight image holds at least one word")
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise ProtocolError("weight image words must be 16-bit")
    frames = []
    for k in range(0, len(words), LOAD_WORDS):
        chunk = words[k:k + LOAD_WORDS]
        chunk += [0] * (LOAD_WORDS - len(chunk))
        payload = (k // LOAD_WORDS).to_bytes(2, "little") + \
            b"".join(w.to_bytes(2, "little") for w in chunk)
        frames.append(encode_frame(TYPE_LOAD, payload))
    return frames
