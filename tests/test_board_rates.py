"""boards/: the link at the USB bridge's rate, the pipelined host, the on-board self-test and the
clock chosen from Fmax (issue 14, part 2)."""

import json

import numpy as np
import pytest

from bitfab.boards.host import DEEP_WINDOW, BoardClient
from bitfab.boards.pll import MARGIN, choose_clock, frequencies, plan
from bitfab.boards.protocol import (
    FRAME_OVERHEAD,
    Identity,
    ProtocolError,
    SelfTestReport,
)
from bitfab.boards.report import link_rates
from bitfab.boards.selftest import SelfTestData
from bitfab.boards.simboard import SIM_DIVISOR, simulated_board
from bitfab.boards.targets import BOARDS, LINK_BAUD, get_board
from bitfab.boards.uart import check_baud, link_baud, uart_divisor
from bitfab.errors import BitfabError
from bitfab.examples import digits_like, mlp
from bitfab.sim.golden import execute
from bitfab.sim.run import selftest_vectors


def _tiny():
    return mlp(np.random.default_rng(0), (16, 8, 4), "binary", name="tiny")


# --- the link rate of each board ----------------------------------------------------------------


def test_each_board_links_at_its_bridges_rate():
    """3 Mbaud on every board; the FT2232H boards make it from their 12 MHz oscillator at the
    UART's floor of 4 clocks per bit, exactly; the ULX3S's 25 MHz does not (4.2 % off), so
    without a PLL clock it falls back to the fastest standard rate within 2 %."""
    assert {b.name: (b.bridge.max_baud, b.baud) for b in BOARDS.values()} == {
        "icebreaker": (12_000_000, LINK_BAUD), "ice40-hx8k": (12_000_000, LINK_BAUD),
        "ulx3s": (3_000_000, LINK_BAUD), "orangecrab": (None, LINK_BAUD)}
    assert LINK_BAUD == 3_000_000
    for name in ("icebreaker", "ice40-hx8k"):
        board = get_board(name)
        assert link_baud(board, board.clock_hz) == 3_000_000
        assert uart_divisor(board.clock_hz, 3_000_000) == 4
    ulx3s = get_board("ulx3s")
    assert link_baud(ulx3s, 25e6) == 1_500_000  # 17 clocks per bit, 1.96 % off
    assert link_baud(ulx3s, 75e6) == 3_000_000
    assert link_baud(get_board("orangecrab"), 48e6) == 3_000_000  # 16 clocks per bit
    with pytest.raises(BitfabError, match=r"^baud 4000000 is more than the FTDI FT231X USB "
                                          r"bridge of ulx3s makes \(at most 3000000\)$"):
        check_baud(ulx3s, 4_000_000)
    with pytest.raises(BitfabError, match="too slow for 12000000 baud"):
        link_baud(get_board("icebreaker"), 12e6, 12_000_000)
    assert link_baud(get_board("icebreaker"), 48e6, 12_000_000) == 12_000_000


def test_digits_network_link_rate_is_over_20x_the_old_one():
    """The digits network's frames: 46 bytes in, 15 out. 115200 baud carried 250 of them a
    second (the 256 of the old report counted a 5-byte frame overhead); 3 Mbaud carries 6522."""
    model = digits_like()
    in_bytes = -(-model.in_stream.payload_bits // 8)
    out_bytes = -(-model.out_stream.payload_bits // 8)
    assert (in_bytes, out_bytes, FRAME_OVERHEAD) == (40, 9, 6)
    old, new = link_rates(115200, in_bytes, out_bytes), link_rates(3_000_000, in_bytes, out_bytes)
    assert (new["frame_in_bytes"], new["frame_out_bytes"]) == (46, 15)
    assert old["vectors_per_s"] == 250.4 and new["vectors_per_s"] == 6521.7
    assert new["vectors_per_s"] >= 20 * 256


# --- the pipelined host -------------------------------------------------------------------------


def test_identity_says_whether_the_board_keeps_up():
    fp = "0123456789abcdef"
    # digits at fold 1,32 (128 clocks a vector) behind 3 Mbaud from 12 MHz: 1840 clocks a frame
    assert Identity(fp, 40, 9, 128, 4).keeps_up()
    assert not Identity(fp, 40, 9, 2000, 4).keeps_up()   # the network is slower than the line
    assert not Identity(fp, 2, 3, 1, 4).keeps_up()       # results longer than inputs
    assert not Identity(fp, 40, 9).keeps_up()            # a board that does not say


def _streaming(window):
    """A model whose results are shorter than its inputs (14-byte input, 8-byte result frames)
    run through the simulated board; returns (client, clocks between answers)."""
    model = mlp(np.random.default_rng(3), (64, 8, 2), "binary", name="wide")
    x = np.where(np.random.default_rng(1).integers(0, 2, (12, 64)) > 0, 1, -1)
    stamps = []
    with simulated_board(model) as board:
        client = BoardClient(board, model, window=window)
        run = client.run(x, progress=lambda k: stamps.append(board.cycles))
    np.testing.assert_array_equal(run.outputs, execute(model, x).output)
    return client, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def test_pipelined_host_streams_at_the_line_rate():
    """A board that keeps up gets a deep window and answers one frame per line time (14 bytes x
    10 bits x 4 clocks) with no overrun; stop-and-wait (window 1) leaves the line idle while
    each result comes back."""
    deep, per = _streaming(None)
    assert deep.identity.keeps_up() and deep.window == DEEP_WINDOW
    line = 14 * 10 * SIM_DIVISOR
    assert line <= per <= 1.01 * line
    _, waiting = _streaming(1)
    assert waiting > 1.5 * line


# --- the on-board self-test ---------------------------------------------------------------------


def _selftest(model, fold, data, words=1):
    """Run the self-test on the simulated board; return its report and the network it ran."""
    with simulated_board(model, fold, selftest=data, timeout_bits=8000,
                         selftest_words=words) as board:
        return BoardClient(board, model).selftest(), board._top.network


@pytest.mark.parametrize("fold, words", [(None, 1), ((1, 4), 1), ((1, 4), 30)])
def test_selftest_counts_clocks_and_mismatches(fold, words):
    """The ROM's 16 vectors through the network at full clock: no mismatch, one result every
    initiation interval from the first to the last, and the first latency + 2 clocks (the
    request's and the ROM read's) after the request, plus the words of a vector read from a
    narrow ROM (30 words of a 16-bit input: still one every II = 32 clocks)."""
    model = _tiny()
    inputs, expected = selftest_vectors(model, 16, seed=0)
    report, net = _selftest(model, fold, SelfTestData(inputs, expected, 0), words)
    ii = net.initiation_interval
    assert (report.vectors, report.mismatches, report.clock_hz) == (16, 0, 12_000_000)
    assert report.steady_cycles == 15 * ii
    assert report.cycles == net.latency + 2 + (words if words > 1 else 0) + 15 * ii
    assert report.vectors_per_s == 12e6 / ii  # exactly clock / II


def test_selftest_reports_a_wrong_expected_result():
    """One expected result flipped in the ROM: one mismatch."""
    model = _tiny()
    inputs, expected = selftest_vectors(model, 16, seed=0)
    expected[5] ^= 1
    report, _ = _selftest(model, (2, 8), SelfTestData(inputs, expected))
    assert (report.vectors, report.mismatches) == (16, 1)
    report, _ = _selftest(model, (1, 4), SelfTestData(inputs, expected), words=4)
    assert (report.vectors, report.mismatches) == (16, 1)


def test_selftest_cli_exits_nonzero_on_a_mismatch(capsys, tmp_path, monkeypatch):
    from bitfab.cli import board as board_cli
    from bitfab.cli import run
    path = tmp_path / "tiny.bfm"
    _tiny().save(path)
    run(["board", "selftest", str(path), "--simulate", "--vectors", "8", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert (got["vectors"], got["mismatches"], got["clocks_per_vector"]) == (8, 0, 1.0)
    assert got["vectors_per_s"] == 12e6

    made = board_cli.selftest_data

    def wrong(model, vectors, seed=0):  # the ROM with one deliberately wrong expected result
        data = made(model, vectors, seed)
        data.expected[0] ^= 1 << 3
        return data
    monkeypatch.setattr(board_cli, "selftest_data", wrong)
    with pytest.raises(SystemExit) as info:
        run(["board", "selftest", str(path), "--simulate", "--vectors", "8"])
    assert info.value.code == 1
    err = capsys.readouterr()
    assert "1 mismatches" in err.out
    assert err.err == ("error: the self-test found 1 of 8 results that differ from the expected "
                       "ones in its ROM\n")


def test_a_board_without_selftest_says_so():
    model = _tiny()
    with simulated_board(model) as board, pytest.raises(
            ProtocolError, match="^self-test: the board's bitstream has no self-test: build it "
                                 "with bitfab synth --selftest N$"):
        BoardClient(board, model).selftest()


def test_selftest_report_bytes_round_trip():
    r = SelfTestReport(256, 1, 33000, 32640, 27_375_000)
    assert SelfTestReport.from_bytes(r.to_bytes()) == r
    assert r.clocks_per_vector == 128 and r.vectors_per_s == 27_375_000 / 128
    with pytest.raises(ProtocolError, match="a self-test report holds 20 bytes, not 3"):
        SelfTestReport.from_bytes(b"abc")


def test_selftest_roms_fit_beside_the_network():
    """The digits network on the iCEBreaker at fold 1,32: 64 vectors fit when the 320-bit
    inputs are read as two 160-bit words (II 128 leaves the time); 256 do not."""
    from bitfab.boards.build import FitError, check_selftest
    from bitfab.cli.board import selftest_data
    model, ice = digits_like(), get_board("icebreaker")
    got = check_selftest(model, ice, (1, 32), selftest_data(model, 64))
    assert (got["input_words"], got["rom_blocks"], got["vectors"]) == (2, 15, 64)
    assert check_selftest(model, get_board("ulx3s"), (1, 64),
                          selftest_data(model, 64))["input_words"] == 1
    with pytest.raises(FitError, match=r"^the self-test's 256 vectors need 25 block RAMs \(320 \+ "
                                       r"70 bits each\), 24 of 30 are free beside digits's at "
                                       r"fold 1,32: try --selftest 128$"):
        check_selftest(model, ice, (1, 32), selftest_data(model, 256))


def test_selftest_refuses_sequence_models_and_bad_roms():
    from bitfab.boards.selftest import SelfTest
    with pytest.raises(BitfabError, match="at least one vector"):
        SelfTestData([], [])
    with pytest.raises(BitfabError, match="does not fit the network's 4-bit stream"):
        SelfTest(SelfTestData([1], [16]), 8, 4, 12e6)


# --- the clock chosen from Fmax -----------------------------------------------------------------


@pytest.mark.parametrize("board, fmax, want", [
    # the digits builds of docs/results/boards.md
    ("icebreaker", 33.4e6, 27.375e6), ("ice40-hx8k", 72.2e6, 60.75e6),
    ("ulx3s", 93.8e6, 79.1666e6), ("orangecrab", 127.8e6, 108e6),
])
def test_clock_from_fmax_keeps_the_margin_and_carries_the_baud(board, fmax, want):
    target = get_board(board)
    clock, why = choose_clock(target, fmax, LINK_BAUD)
    assert clock == pytest.approx(want, rel=1e-5)
    assert clock <= (1 - MARGIN) * fmax and clock in frequencies(target)
    uart_divisor(clock, LINK_BAUD)  # carried within 2 %
    assert plan(target, clock).f_out == clock  # the PLL makes it
    # nothing the PLL makes between it and the ceiling carries the baud
    for f in frequencies(target):
        if clock < f <= (1 - MARGIN) * fmax:
            with pytest.raises(BitfabError):
                uart_divisor(f, LINK_BAUD)
    assert "15 % margin" in why


def test_slow_design_stays_on_the_oscillator():
    ice = get_board("icebreaker")
    clock, why = choose_clock(ice, 13e6, LINK_BAUD)
    assert clock == 12e6 and "the oscillator" in why
    with pytest.raises(BitfabError, match="carries 12000000 baud"):
        choose_clock(ice, 13e6, 12_000_000)


@pytest.mark.synth
@pytest.mark.slow
def test_synth_chooses_the_clock_and_builds_the_selftest(tmp_path, capsys):
    """`bitfab synth` without --clock: a first place and route on the oscillator, then the
    fastest PLL clock 15 % below its Fmax that carries 3 Mbaud; the self-test ROM in the build
    and in report.json."""
    from bitfab.cli import run
    path = tmp_path / "tiny.bfm"
    _tiny().save(path)
    run(["synth", str(path), "--board", "icebreaker", "--selftest", "256", "--out",
         str(tmp_path / "b"), "--json"])
    report = json.loads(capsys.readouterr().out)
    choice = report["clock_choice"]
    first = choice["passes"][0]
    assert choice["mode"] == "auto" and first["clock_mhz"] == 12
    assert choice["clock_mhz"] <= (1 - MARGIN) * first["fmax_mhz"]
    assert report["clock"]["clock_mhz"] == choice["clock_mhz"] > 16
    assert report["timing_met"] and report["clock"]["pll"]
    assert report["uart"]["baud"] == 3_000_000
    assert report["uart"]["divisor"] == uart_divisor(choice["clock_mhz"] * 1e6, 3_000_000)
    assert report["selftest"]["vectors"] == 256 and report["selftest"]["rom_blocks"] >= 2
    assert report["resources"]["bram"]["used"] >= 2  # the ROMs are block RAM
    assert json.loads((tmp_path / "b" / "report.json").read_text()) == report
