"""boards/: UART, framing, the board top-level driven by the host protocol code, registry, PLL."""

import json

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfab.boards import protocol
from bitfab.boards.framing import FrameReceiver, FrameTransmitter
from bitfab.boards.host import BoardClient
from bitfab.boards.protocol import (
    ERR_CRC,
    ERR_LENGTH,
    ERR_TYPE,
    TYPE_ERROR,
    TYPE_INPUT,
    TYPE_RESULT,
    FrameParser,
    Identity,
    ProtocolError,
    crc16,
    encode_frame,
)
from bitfab.boards.simboard import SimTransport, simulated_board
from bitfab.boards.targets import BOARDS, get_board
from bitfab.boards.top import SerialNetwork
from bitfab.boards.uart import UARTRx, UARTTx, uart_divisor
from bitfab.errors import BitfabError
from bitfab.examples import mlp, random_dense
from bitfab.model import InputFormat, IntegerModel
from bitfab.sim.golden import execute

DIV = 6  # clocks per bit in simulation
IDENTITY = Identity("0123456789abcdef", 3, 3)


# --- a loopback of the byte-level blocks ----------------------------------------------------------


class _Loop(wiring.Component):
    """Bytes -> UARTTx -> line -> UARTRx -> FrameReceiver -> (vectors, errors) and, back,
    vectors -> FrameTransmitter -> bytes: the framing path of a board without a network
    (identify requests go straight back, as on a board)."""

    def __init__(self, n_bytes, in_place=False):
        self.n = n_bytes
        self.in_place = in_place
        super().__init__({
            "i": In(stream.Signature(8)),
            "vec": Out(stream.Signature(8 * n_bytes)),
            "err": Out(stream.Signature(8)),
            "res": In(stream.Signature(8 * n_bytes)),
            "res_err": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(DIV)
        m.submodules.rx = rx = UARTRx(DIV)
        m.submodules.frx = frx = FrameReceiver(self.n)
        m.submodules.ftx = ftx = FrameTransmitter(self.n, IDENTITY.to_bytes(),
                                                  in_place=self.in_place)
        wiring.connect(m, wiring.flipped(self.i), tx.i)
        m.d.comb += rx.rx.eq(tx.tx)
        wiring.connect(m, rx.o, frx.i)
        wiring.connect(m, frx.o, wiring.flipped(self.vec))
        wiring.connect(m, frx.err, wiring.flipped(self.err))
        wiring.connect(m, frx.ident, ftx.ident)
        wiring.connect(m, wiring.flipped(self.res), ftx.i)
        wiring.connect(m, wiring.flipped(self.res_err), ftx.err)
        wiring.connect(m, ftx.o, wiring.flipped(self.o))
        return m


def _loop(n_bytes, sent: bytes, results=(), errors=(), out_bytes=0, cycles=None,
          vec_ready=1, in_place=False):
    """Send ``sent`` through the loop; return (vectors, error codes, transmitted bytes)."""
    dut = _Loop(n_bytes, in_place)
    vectors, codes, out = [], [], []
    cycles = cycles or (len(sent) + 8) * 10 * DIV + 200

    async def producer(ctx):
        for b in sent:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, b)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def results_in(ctx):
        for kind, value in list(results) + [("e", c) for c in errors]:
            port = dut.res if kind == "r" else dut.res_err
            ctx.set(port.valid, 1)
            ctx.set(port.payload, value)
            await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)

    async def monitor(ctx):
        ctx.set(dut.vec.ready, vec_ready)
        ctx.set(dut.err.ready, 1)
        ctx.set(dut.o.ready, 1)
        for _ in range(cycles):
            _, _, v, p, e, c, ov, ob = await ctx.tick().sample(
                dut.vec.valid, dut.vec.payload, dut.err.valid, dut.err.payload,
                dut.o.valid, dut.o.payload)
            if v:
                vectors.append(p)
            if e:
                codes.append(c)
            if ov:
                out.append(ob)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(results_in, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return vectors, codes, bytes(out)


@settings(derandomize=True, deadline=None, max_examples=4)
@given(st.lists(st.binary(min_size=3, max_size=3), min_size=1, max_size=3))
def test_uart_framing_random_payloads_back_to_back(payloads):
    """Frames sent back to back through the UART arrive as vectors, byte for byte."""
    sent = b"".join(encode_frame(TYPE_INPUT, p) for p in payloads)
    vectors, codes, _ = _loop(3, sent)
    assert codes == []
    assert vectors == [int.from_bytes(p, "little") for p in payloads]


def test_corrupted_crc_is_rejected_and_reported():
    good = encode_frame(TYPE_INPUT, b"\x01\x02\x03")
    bad = bytearray(encode_frame(TYPE_INPUT, b"\x10\x20\x30"))
    bad[5] ^= 0x04  # one payload bit flipped on the line
    vectors, codes, _ = _loop(3, good + bytes(bad) + good)
    assert vectors == [0x030201, 0x030201]  # the bad frame gives no vector
    assert codes == [ERR_CRC]


def test_wrong_length_and_type_are_reported():
    wrong_len = encode_frame(TYPE_INPUT, b"\x01\x02")
    wrong_type = encode_frame(0x33, b"\x01\x02\x03")
    vectors, codes, _ = _loop(3, wrong_len + encode_frame(TYPE_INPUT, b"\x07\x08\x09"))
    assert codes == [ERR_LENGTH] and vectors == [0x090807]
    vectors, codes, _ = _loop(3, wrong_type)
    assert codes == [ERR_TYPE] and vectors == []


def test_overrun_is_reported():
    """A frame that arrives while the previous vector still waits is dropped and reported."""
    first = encode_frame(TYPE_INPUT, b"\x01\x02\x03")
    vectors, codes, _ = _loop(3, first + encode_frame(TYPE_INPUT, b"\x04\x05\x06"),
                              vec_ready=0)
    assert codes == [protocol.ERR_OVERRUN]
    assert vectors == [0x030201] * len(vectors) and vectors  # the first one is held


@pytest.mark.parametrize("in_place", [False, True])
def test_transmitter_frames_results_and_errors(in_place):
    """The board's transmitter output parses with the host parser: results, then an error
    (results copied, or read where the producer holds them)."""
    _, _, out = _loop(2, b"", results=[("r", 0xBEEF), ("r", 0x0102)], errors=[ERR_CRC],
                      cycles=300, in_place=in_place)
    frames = FrameParser(2).feed(out)
    assert [(f.kind, f.payload, f.ok) for f in frames] == [
        (TYPE_RESULT, b"\xef\xbe", True), (TYPE_RESULT, b"\x02\x01", True),
        (TYPE_ERROR, bytes([ERR_CRC]), True)]
    assert frames[2].error == "bad CRC"


@settings(derandomize=True, deadline=None, max_examples=4)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=3))
def test_transmitter_crc_agrees_with_the_host(results):
    """Random result vectors framed by the board's transmitter parse with the host's CRC; a bit
    flipped on the line does not (the check is not vacuous)."""
    _, _, out = _loop(2, b"", results=[("r", r) for r in results], cycles=100 * len(results))
    frames = FrameParser(2).feed(out)
    assert [(f.payload, f.ok) for f in frames] == [(r.to_bytes(2, "little"), True)
                                                   for r in results]
    bad = bytearray(out)
    bad[5] ^= 0x10
    assert not FrameParser(2).feed(bytes(bad))[0].ok


def test_uart_tx_rx_every_byte():
    """All 256 byte values survive the line (the UART on its own)."""
    data = bytes(range(256))
    dut_tx, dut_rx = UARTTx(DIV), UARTRx(DIV)
    m = Module()
    m.submodules.tx, m.submodules.rx = dut_tx, dut_rx
    m.d.comb += dut_rx.rx.eq(dut_tx.tx)
    got = []

    async def bench(ctx):
        ctx.set(dut_rx.o.ready, 1)
        for b in data:
            ctx.set(dut_tx.i.valid, 1)
            ctx.set(dut_tx.i.payload, b)
            await ctx.tick().until(dut_tx.i.ready)
        ctx.set(dut_tx.i.valid, 0)
        for _ in range(12 * DIV):
            await ctx.tick()

    async def watch(ctx):
        while True:
            _, _, v, p = await ctx.tick().sample(dut_rx.o.valid, dut_rx.o.payload)
            if v:
                got.append(p)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert bytes(got) == data


# --- protocol (pure python) -----------------------------------------------------------------------


def test_parser_skips_noise_and_flags_bad_crc():
    frame = encode_frame(TYPE_RESULT, b"\x05\x06")
    bad = bytearray(frame)
    bad[-1] ^= 0xFF
    parser = FrameParser(2)
    frames = parser.feed(b"\x00\x13" + frame[:3]) + parser.feed(frame[3:] + bytes(bad))
    assert [(f.payload, f.ok) for f in frames] == [(b"\x05\x06", True), (b"\x05\x06", False)]
    assert parser.skipped == 2


def test_crc_of_a_whole_frame_is_zero():
    frame = encode_frame(TYPE_INPUT, bytes(range(40)))
    assert crc16(frame[1:]) == 0 and crc16(frame[1:-1]) != 0
    with pytest.raises(ProtocolError, match="at most 65535 bytes, not 65536"):
        encode_frame(TYPE_INPUT, bytes(65536))


# --- the whole top-level, driven by the host code -------------------------------------------------


def _tiny(rng):
    return mlp(rng, (16, 8, 4), "binary", name="tiny")


def test_board_top_level_equals_golden():
    """Input frames in on rx, result frames out on tx, through BoardClient: golden outputs."""
    rng = np.random.default_rng(3)
    model = _tiny(rng)
    x = rng.choice(np.array([-1, 1]), size=(8, 16))
    with simulated_board(model) as transport:
        client = BoardClient(transport, model, window=3)
        run = client.run(x)
    np.testing.assert_array_equal(run.outputs, execute(model, x).output)
    out_bits = model.layers[-1].out_bits * 4
    assert client.in_bytes == 2 and client.out_bytes == -(-out_bits // 8)
    assert run.bytes_sent == 8 * (6 + 2) and run.bytes_received == 8 * (6 + client.out_bytes)


def test_board_top_level_int_inputs_folded_requant():
    """A folded layer with int inputs and a signed requant output, across byte boundaries."""
    rng = np.random.default_rng(5)
    layer = random_dense(rng, 6, 3, "ternary", input_format=InputFormat.int(5, signed=True),
                         output="requant", requant_bits=6)
    model = IntegerModel((layer,), name="q")
    x = rng.integers(-16, 16, size=(5, 6))
    with simulated_board(model, fold=(2, 3)) as transport:
        run = BoardClient(transport, model).run(x)
    np.testing.assert_array_equal(run.outputs, execute(model, x).output)


def test_board_rejects_corrupted_frame_and_host_reports_it():
    rng = np.random.default_rng(4)
    model = _tiny(rng)
    x = rng.choice(np.array([-1, 1]), size=(2, 16))
    with simulated_board(model) as transport:
        client = BoardClient(transport, model)
        frame = bytearray(client.frame_of(model.in_stream.pack(x[:1])[0]))
        frame[4] ^= 0x80
        client.send(bytes(frame))
        answer = client.receive()
        assert answer.kind == TYPE_ERROR and answer.error == "bad CRC"
        # the board goes on: the next good vectors are computed
        run = client.run(x)
        np.testing.assert_array_equal(run.outputs, execute(model, x).output)
        client.send(bytes(frame))
        with pytest.raises(ProtocolError, match="answer 0: the board rejected the frame: "
                                                "bad CRC"):
            client.run(x[:1])


def test_board_check_fails_on_a_wrong_reference():
    """The comparison catches a board whose answers differ from the reference (here a board
    that says it runs the model but computes another network: identify does not replace the
    comparison)."""
    from bitfab.cli.board import compare_run
    from bitfab.hw.layer import build_network
    rng = np.random.default_rng(6)
    model = _tiny(rng)
    other = _tiny(np.random.default_rng(7))  # the board runs a different network
    x = rng.choice(np.array([-1, 1]), size=(6, 16))
    top = SerialNetwork(build_network(other), 8, fingerprint=model.fingerprint(),
                        heartbeat_bits=8)
    with SimTransport(top) as transport:
        result = compare_run(model, x, transport)
    assert result["mismatches"] > 0
    assert result["first_mismatch"]["vector"] == int(
        np.flatnonzero(np.any(execute(model, x).output != execute(other, x).output, axis=1))[0])


def test_host_without_answer_raises():
    rng = np.random.default_rng(8)
    model = _tiny(rng)

    class Silent:
        def write(self, data):
            pass

        def read(self, n):
            return b""

        def close(self):
            pass

    with pytest.raises(ProtocolError, match="no answer from the board"):
        BoardClient(Silent(), model).run(np.ones((1, 16), dtype=int))
    with pytest.raises(ProtocolError,
                       match=r"inputs: vectors must have shape \(batch, 16\), not \(1, 3\)"):
        BoardClient(Silent(), model).run(np.ones((1, 3), dtype=int))


def test_sim_transport_needs_a_serial_network():
    with pytest.raises(BitfabError, match="top must be a SerialNetwork, not int"):
        SimTransport(3)


def test_board_run_cli_simulated(tmp_path):
    from click.testing import CliRunner

    from bitfab.cli import main
    rng = np.random.default_rng(9)
    path = tmp_path / "tiny.bfm"
    _tiny(rng).save(path)
    result = CliRunner().invoke(main, ["board", "run", str(path), "--simulate", "--vectors", "5",
                                       "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["vectors"] == 5 and facts["mismatches"] == 0


# --- registry, UART rates, PLL --------------------------------------------------------------------


def test_registry_has_the_four_boards():
    assert {"icebreaker", "ice40-hx8k", "ulx3s", "orangecrab"} <= set(BOARDS)
    assert get_board("icebreaker").limits.luts == 5280
    assert get_board("ULX3S").device == "LFE5U-85F-BG381"
    with pytest.raises(BitfabError, match="board must be one of .* not 'de0'"):
        get_board("de0")
    for b in BOARDS.values():
        b.make_platform()  # the UART and LED resources exist
    plat = get_board("orangecrab").make_platform()
    assert plat.lookup("uart", 0)


def test_uart_divisor():
    assert uart_divisor(12e6, 115200) == 104
    with pytest.raises(BitfabError, match="too slow for 115200 baud"):
        uart_divisor(300e3, 115200)
    with pytest.raises(BitfabError, match="off by 8.5 %"):
        uart_divisor(1e6, 115200 * 2)
    with pytest.raises(BitfabError, match="divisor must be an integer >= 4, not 2"):
        UARTTx(2)


def test_pll_plans():
    from bitfab.boards.pll import plan
    ice = plan(get_board("icebreaker"), 30e6)
    p = ice.params
    assert abs(ice.f_out - 30e6) < 0.5e6
    assert ice.f_out == 12e6 * (p["DIVF"] + 1) / ((p["DIVR"] + 1) * 2 ** p["DIVQ"])
    ecp = plan(get_board("ulx3s"), 50e6)
    q = ecp.params
    assert ecp.f_out == 50e6 == 25e6 * q["CLKFB_DIV"] / q["CLKI_DIV"]
    assert 400e6 <= ecp.f_out * q["CLKOP_DIV"] <= 800e6
    assert plan(get_board("ulx3s"), None).params is None


def test_protocol_constants_are_distinct():
    types = (protocol.TYPE_INPUT, protocol.TYPE_IDENTIFY, protocol.TYPE_RESULT,
             protocol.TYPE_IDENTITY, protocol.TYPE_ERROR)
    assert len(set(types)) == 5
    assert protocol.START not in types


@pytest.mark.train
@pytest.mark.slow
def test_board_run_on_a_trained_model_agrees_with_golden_and_torch():
    """A trained digits net on the simulated board, compared with both references."""
    from bitfab.cli.board import compare_run
    from bitfab.quant.data import load_dataset
    from bitfab.quant.recipes import TrainConfig
    from bitfab.quant.train import export, fit
    data = load_dataset("digits", 0)
    model = export(fit(TrainConfig("binary", "digits", hidden=(16,), epochs=2, limit=300), data))
    with simulated_board(model, fold=(4, 16)) as transport:
        result = compare_run(model, data.x_test[:3], transport)
    assert result["mismatches"] == 0 and result["torch_mismatches"] == 0
    assert result["golden_prediction_mismatches"] == 0
