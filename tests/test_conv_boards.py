"""Image models on boards: the fold choice and the report count what image layers cost, the
board top-level carries an image as pixel frames (simulated board, bit-exact), and a CNN builds a
real iCE40 bitstream."""

import json

import numpy as np
import pytest

from bitfab.boards.build import (
    candidate_folds,
    choose_fold,
    estimate_luts,
    initiation_interval,
    memory_blocks,
    synthesize,
)
from bitfab.boards.host import BoardClient
from bitfab.boards.protocol import FRAME_OVERHEAD
from bitfab.boards.simboard import simulated_board
from bitfab.boards.targets import get_board
from bitfab.cli import run
from bitfab.examples import cnn, resnet1d
from bitfab.hw.layer import skip_fifo_depths
from bitfab.sim.golden import execute
from bitfab.sim.run import random_inputs


def _cnn(image=(8, 8, 1), channels=(4, 8), classes=10):
    return cnn(np.random.default_rng(0), image, channels, classes, name="cnn")


def test_fold_choice_counts_images_windows_and_line_buffers():
    model = _cnn()
    folds = candidate_folds(model)
    assert folds[0] is None and len(folds) > 3
    # unrolled, the first conv reads its padded 10x10 image at a pixel per clock
    assert initiation_interval(model, None) == 100
    # folding the windows' datapaths slows the image down and saves logic
    assert initiation_interval(model, (1, 1)) > 100
    assert estimate_luts(model, (1, 1)) < estimate_luts(model, None)
    board = get_board("icebreaker")
    # 3x3 windows keep two rows: one line buffer per conv and pool with a 2-D window
    unrolled = memory_blocks(model, None, board)
    assert unrolled == 4
    assert memory_blocks(model, (1, 1), board) > unrolled  # weights move into block RAM
    assert choose_fold(model, board) is None  # a small CNN fits unrolled
    # a 1-D network has one-row windows: no line buffer; its skip FIFOs of 32 bits or more
    # are block RAM (3 words of 13 bits and 3 of 25: one and two EBR of 16-bit words)
    res = resnet1d(np.random.default_rng(1))
    assert skip_fifo_depths(res.layers, res.edges) == {(3, 1): 4, (7, 1): 4}
    assert memory_blocks(res, None, board) == 3


def test_a_cnn_on_the_simulated_board_is_bit_exact(tmp_path, capsys):
    """Each image travels as one frame per pixel with its last bit; the board answers once
    per image, and the answers equal the golden model."""
    model = _cnn((6, 6, 1), (2,), 4)
    x, _ = random_inputs(model, 2, seed=3)
    with simulated_board(model) as transport:
        result = BoardClient(transport, model).run(x)
    assert result.bytes_sent == 2 * 36 * (1 + FRAME_OVERHEAD)  # 36 one-byte pixel frames each
    np.testing.assert_array_equal(result.outputs, execute(model, x).output)
    wrong = execute(model, x).output.copy()
    wrong[1, 0] += 1
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(result.outputs, wrong)
    path = tmp_path / "cnn.bfm"
    model.save(path)
    run(["board", "run", str(path), "--simulate", "--vectors", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["vectors"], out["mismatches"]) == (1, 0)


@pytest.mark.synth
@pytest.mark.slow
def test_a_cnn_bitstream_for_icebreaker(tmp_path):
    """yosys + nextpnr + pack of a CNN; the report gives images/s at Fmax from the clocks an
    image occupies the slowest layer."""
    model = _cnn((6, 6, 1), (2,), 4)
    outcome = synthesize(model, "icebreaker", out=tmp_path / "ice")
    assert outcome.bitstream.stat().st_size > 50_000
    report = json.loads((outcome.folder / "report.json").read_text())
    assert [la["kind"] for la in report["layers"]] == ["conv", "maxpool", "flatten", "dense"]
    assert report["clocks_per_input"] == 64  # the padded 8x8 image, a pixel per clock
    assert report["timing_met"]
    assert report["inputs_per_s_at_fmax"] == pytest.approx(report["fmax_mhz"] * 1e6 / 64, rel=1e-3)
    assert 0 < report["resources"]["lut4"]["used"] <= 5280


def test_a_slow_network_s_results_go_out_from_its_output_register():
    """A network that gives a result at most once per result frame's line time (a folded
    resnet) has its results sent from its held output register (no transmitter copy); the
    answers equal golden, a wrong reference fails."""
    model = resnet1d(np.random.default_rng(1), length=8, channels=4)
    x, _ = random_inputs(model, 2, seed=3)
    with simulated_board(model, fold=(1, 1)) as transport:
        top = transport._top
        ident = top.identity
        assert top._ftx.in_place
        assert ident.frame_clocks(top.out_bytes) <= ident.input_clocks
        result = BoardClient(transport, model).run(x)
    want = execute(model, x).output
    np.testing.assert_array_equal(result.outputs, want)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(result.outputs, want + (np.arange(2) == 1)[:, None])
