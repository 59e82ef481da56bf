"""The board link (docs/protocol.md): the CRC in host and hardware, the parser's frame size limit,
one answer per frame, identify."""

import binascii

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfab.boards.framing import CRC16
from bitfab.boards.host import BoardClient
from bitfab.boards.protocol import (
    ERR_CRC,
    ERR_LENGTH,
    IDENTITY_BYTES,
    TYPE_ERROR,
    TYPE_IDENTIFY,
    TYPE_IDENTITY,
    TYPE_INPUT,
    TYPE_RESULT,
    FrameParser,
    Identity,
    ProtocolError,
    crc16,
    encode_frame,
    payload_from_bytes,
)
from bitfab.boards.simboard import simulated_board
from bitfab.examples import mlp
from bitfab.sim.golden import execute


def _tiny(seed):
    """16 binary inputs (2-byte input frames) -> 4 outputs (3-byte result frames)."""
    return mlp(np.random.default_rng(seed), (16, 8, 4), "binary", name="tiny")


def _inputs(n, seed=0):
    return np.random.default_rng(seed).choice(np.array([-1, 1]), size=(n, 16))


def _additive_check(body: bytes) -> int:
    """The one-byte check of the protocol before the CRC (a wrong reference)."""
    return -sum(body) & 0xFF


# --- the CRC ----------------------------------------------------------------------------------


def test_crc16_known_answers():
    """CRC-16/CCITT-FALSE check values (the reveng catalogue's check, and the usual extras)."""
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF
    assert crc16(b"A") == 0xB915
    assert crc16(b"A" * 256) == 0xEA0B
    assert crc16(b"56789", crc16(b"1234")) == 0x29B1  # continued
    # a wrong reference fails: the same polynomial from another initial value (XMODEM)
    assert crc16(b"123456789", 0) == 0x31C3 != 0x29B1


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.binary(max_size=64))
def test_crc16_equals_the_standard_library(data):
    assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)
    assert crc16(data) != binascii.crc_hqx(data, 0)  # the wrong initial value never agrees


def _hardware_crcs(messages) -> list[int]:
    """The CRC register of :data:`bitfab.boards.framing.CRC16` after each message."""
    dut = CRC16.create()
    crcs = []

    async def bench(ctx):
        for message in messages:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for byte in message:
                ctx.set(dut.data, byte)
                ctx.set(dut.valid, 1)
                await ctx.tick()
            ctx.set(dut.valid, 0)
            crcs.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return crcs


@settings(derandomize=True, deadline=None, max_examples=5)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8))
def test_hardware_crc_equals_host_crc(messages):
    """The Amaranth CRC the framing blocks use computes the host's CRC, byte for byte."""
    got = _hardware_crcs(messages + [b"123456789"])
    assert got == [crc16(m) for m in messages] + [0x29B1]
    assert all(g != binascii.crc_hqx(m, 0) for g, m in zip(got, messages))  # wrong reference


# --- swapped bytes ----------------------------------------------------------------------------


def _swapped(frame: bytes) -> bytes:
    """The frame with its first two payload bytes swapped on the line (its CRC kept)."""
    bad = bytearray(frame)
    bad[4], bad[5] = bad[5], bad[4]
    return bytes(bad)


def test_host_parser_rejects_swapped_bytes():
    frame = encode_frame(TYPE_RESULT, b"\x01\x02")
    swapped = _swapped(frame)
    assert swapped[4:6] == b"\x02\x01"
    # the wrong reference: the old additive check cannot tell the two apart
    assert _additive_check(frame[1:-2]) == _additive_check(swapped[1:-2])
    good, bad = FrameParser(2).feed(frame + swapped)
    assert (good.payload, good.ok) == (b"\x01\x02", True)
    assert (bad.payload, bad.ok) == (b"\x02\x01", False)
    assert bad.problem == "the board's frame (type 0x52, 2 bytes) has a bad CRC"


def test_board_rejects_swapped_bytes_with_a_crc_error():
    model = _tiny(1)
    x = _inputs(2)
    with simulated_board(model) as transport:
        client = BoardClient(transport, model)
        frame = encode_frame(TYPE_INPUT, b"\x01\x02")
        client.send(frame)  # the unswapped frame is computed (the checker's wrong reference)
        assert client.receive().kind == TYPE_RESULT
        client.send(_swapped(frame))
        answer = client.receive()
        assert (answer.kind, answer.payload, answer.ok) == (TYPE_ERROR, bytes([ERR_CRC]), True)
        assert answer.error == "bad CRC"
        run = client.run(x)  # the board goes on
    np.testing.assert_array_equal(run.outputs, execute(model, x).output)


# --- a corrupted length byte ------------------------------------------------------------------


def _corrupt(frame: bytes, at: int, value: int) -> bytes:
    bad = bytearray(frame)
    bad[at] = value
    return bytes(bad)


def test_parser_resynchronizes_after_a_corrupted_length():
    frames = [encode_frame(TYPE_RESULT, bytes([k, k + 1, k + 2])) for k in (1, 4, 7, 10)]
    line = frames[0] + _corrupt(frames[1], 3, 0x9C) + frames[2] + frames[3]
    got = FrameParser(IDENTITY_BYTES).feed(line)
    assert [(f.payload, f.ok, f.declared) for f in got] == [
        (b"\x01\x02\x03", True, None), (b"", False, 0x9C03),
        (b"\x07\x08\x09", True, None), (b"\x0a\x0b\x0c", True, None)]
    assert got[1].problem == "a frame header declared 39939 bytes"
    # the wrong reference: a parser that believes any length swallows the later frames
    old = FrameParser(0xFFFF)
    assert [f.payload for f in old.feed(line)] == [b"\x01\x02\x03"]
    assert old.pending == len(line) - len(frames[0])


class _Corrupting:
    """A transport that changes the received byte number ``at`` (counted from the first)."""

    def __init__(self, inner, at: int | None, value: int):
        self._inner, self._at, self._value, self._seen = inner, at, value, 0

    def write(self, data):
        self._inner.write(data)

    def read(self, n):
        data = bytearray(self._inner.read(n))
        if self._at is not None and self._seen <= self._at < self._seen + len(data):
            data[self._at - self._seen] = self._value
        self._seen += len(data)
        return bytes(data)

    def close(self):
        self._inner.close()


@pytest.mark.parametrize("at", [None, 24 + 9 + 3])
def test_client_names_a_corrupted_length(at):
    """The length byte of answer 1 corrupted on the way to the host: the error says so at once
    (the identify answer is 24 bytes, each result 9); None: the same run, uncorrupted."""
    model = _tiny(2)
    x = _inputs(4)
    with simulated_board(model) as board:
        client = BoardClient(_Corrupting(board, at, 0x9C), model)
        if at is None:
            run = client.run(x)
            np.testing.assert_array_equal(run.outputs, execute(model, x).output)
            return
        with pytest.raises(ProtocolError) as info:
            client.run(x)
    assert str(info.value) == ("answer 1: a frame header declared 39939 bytes; expected 3 (a "
                               "length byte corrupted on the line; the host resynchronized at "
                               "the next start byte)")


class _Canned:
    """A transport whose board sent ``data`` and then nothing."""

    def __init__(self, data: bytes):
        self._data = bytearray(data)

    def write(self, data):
        pass

    def read(self, n):
        out = bytes(self._data[:n])
        del self._data[:n]
        return out

    def close(self):
        pass


def test_client_says_what_came_when_nothing_more_comes():
    model = _tiny(2)
    frame = encode_frame(TYPE_RESULT, b"\x01\x02\x03")
    assert BoardClient(_Canned(frame), model).receive("answer 0").payload == b"\x01\x02\x03"
    with pytest.raises(ProtocolError, match=r"^answer 0: the board's frame is incomplete: its "
                                            r"header declared 3 bytes, 2 of 5 payload and CRC "
                                            r"bytes came$"):
        BoardClient(_Canned(frame[:6]), model).receive("answer 0")
    with pytest.raises(ProtocolError, match=r"^answer 0: no answer from the board \(2 bytes of "
                                            r"a frame, 1 stray bytes received\)$"):
        BoardClient(_Canned(b"\x00" + frame[:2]), model).receive("answer 0")


def test_board_corrupted_length_does_not_swallow_later_frames():
    """An input frame whose length byte was corrupted gets one E; the good frames after it
    (inside the span its header declared) are computed."""
    model = _tiny(3)
    x = _inputs(3)
    golden = model.out_stream.pack(execute(model, x).output)
    with simulated_board(model) as board:
        client = BoardClient(board, model)
        frames = [client.frame_of(p) for p in model.in_stream.pack(x)]
        client.send(_corrupt(frames[0], 3, 0x9C) + b"".join(frames[1:]))
        answers = [client.receive() for _ in range(3)]
    assert [(a.kind, a.payload) for a in answers] == [(TYPE_ERROR, bytes([ERR_LENGTH]))] + [
        (TYPE_RESULT, p.to_bytes(3, "little")) for p in golden[1:]]
    assert golden[1] != golden[2]  # each answer is checked against its own vector


# --- one answer per frame ---------------------------------------------------------------------


@pytest.mark.parametrize("kind, payload", [
    (TYPE_INPUT, b"\xa5"),                              # shorter than an input frame
    (TYPE_INPUT, b"\xa5\x49\x02\x00\x11\x22\xa5"),       # longer, a frame header inside
    (TYPE_INPUT, b"\x11\x22\x33\xa5\x49\x02\x00"),       # one running past its end
    (TYPE_IDENTIFY, b"\xa5"),                           # identify has no payload
])
def test_one_answer_per_wrong_length_frame(kind, payload):
    """A wrong-length frame with a start byte in its payload gets exactly one E; the next good
    frame is computed and an identify after it is answered: E, R, F and nothing between."""
    model = _tiny(4)
    x = _inputs(2)
    golden = model.out_stream.pack(execute(model, x).output)
    with simulated_board(model) as board:
        client = BoardClient(board, model)
        client.send(encode_frame(kind, payload) + client.frame_of(model.in_stream.pack(x)[0])
                    + encode_frame(TYPE_IDENTIFY, b""))
        answers = [client.receive() for _ in range(3)]
        kinds = [a.kind for a in answers]
        assert kinds == [TYPE_ERROR, TYPE_RESULT, TYPE_IDENTITY], kinds
        assert answers[0].payload == bytes([ERR_LENGTH])
        assert payload_from_bytes(answers[1].payload) == golden[0] != golden[1]
        assert Identity.from_bytes(answers[2].payload).same_model(client.expected_identity)
        assert client._parser.pending == 0


# --- identify ---------------------------------------------------------------------------------


def test_identify_answers_the_fingerprint_built_in():
    model, other = _tiny(5), _tiny(6)
    with simulated_board(model) as board:
        client = BoardClient(board, model)
        got = client.check_board()
    # an unrolled network takes a vector a clock; the simulated UART has 4 clocks per bit
    assert got == Identity(model.fingerprint(), 2, 3, 1, 4) == client.identity
    assert got.fingerprint == model.fingerprint()[:16]
    assert got.to_bytes() == bytes.fromhex(model.fingerprint()[:16]) + \
        b"\x02\x00\x03\x00" + b"\x01\x00\x00\x00\x04\x00"
    assert not got.same_model(Identity(other.fingerprint(), 2, 3))  # a wrong reference differs
    # a bitstream from before the link fields answers 12 bytes: read as "not said"
    old = Identity.from_bytes(got.to_bytes()[:12])
    assert old.same_model(got) and (old.input_clocks, old.divisor) == (0, 0)
    assert not old.keeps_up()


def test_identify_refuses_another_models_bitstream():
    from bitfab.cli.board import compare_run
    model, other = _tiny(5), _tiny(6)
    with simulated_board(other) as board:
        client = BoardClient(board, model)
        with pytest.raises(ProtocolError) as info:
            client.run(_inputs(2))
        assert client.sent == 6  # the identify frame only: no input was sent
        with pytest.raises(ProtocolError, match="the board runs model"):
            compare_run(model, _inputs(2), board)
    assert str(info.value) == (f"the board runs model {other.fingerprint()[:16]}, not tiny's "
                               f"{model.fingerprint()[:16]}: build and load its bitstream")


def test_board_run_cli_refuses_another_models_bitstream(tmp_path, monkeypatch, capsys):
    from bitfab.boards import simboard
    from bitfab.cli import run
    model, other = _tiny(5), _tiny(6)
    path = tmp_path / "tiny.bfm"
    model.save(path)
    built = simboard.simulated_board
    monkeypatch.setattr(simboard, "simulated_board", lambda m, *a, **k: built(other, *a, **k))
    with pytest.raises(SystemExit) as info:
        run(["board", "run", str(path), "--simulate", "--vectors", "2"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        f"error: the board runs model {other.fingerprint()[:16]}, not tiny's "
        f"{model.fingerprint()[:16]}: build and load its bitstream\n")


def test_identity_and_parser_refuse_bad_values():
    with pytest.raises(ProtocolError, match="fingerprint must be a hex string of at least 16 "
                                            "digits, not 'xyz'"):
        Identity("xyz", 1, 1)
    with pytest.raises(ProtocolError, match="out_bytes must be an integer in 0..65535, not -1"):
        Identity("0" * 16, 1, -1)
    with pytest.raises(ProtocolError, match="an identify answer holds 18 bytes, not 3"):
        Identity.from_bytes(b"abc")
    with pytest.raises(ProtocolError, match="max_payload must be an integer in 0..65535, "
                                            "not 70000"):
        FrameParser(70000)
