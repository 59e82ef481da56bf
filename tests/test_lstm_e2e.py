"""A trained lstm-gates model through every command, by the code paths dense models use: train,
eval (golden vs torch), verilog, sim on Verilator and Icarus and on the iCE40 netlist, synth for
the iCEBreaker and the ULX3S, and the simulated board, each with 0 mismatches."""

import numpy as np
import pytest

from bitfab.cli import run
from bitfab.model import IntegerModel

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.cocotb, pytest.mark.synth]


def bitfab(capsys, *args):
    """Run the CLI in-process; return (exit status, the JSON it printed, stderr)."""
    from conftest import bitfab_json
    return bitfab_json(capsys, *args)


@pytest.fixture(scope="module")
def lstm_file(tmp_path_factory):
    """The small cell: 4 hidden units of 4 bits reading 8-pixel digit rows (fits the iCEBreaker).
    """
    path = tmp_path_factory.mktemp("lstm") / "lstm.bfm"
    try:
        run(["train", "--recipe", "lstm-gates", "--dataset", "digits", "--hidden", "4",
             "--epochs", "2", "--option", "hidden_bits=4", "--no-reference", "--out",
             str(path), "--json"])
    except SystemExit as exc:
        assert not exc.code, exc
    return path


def test_info_eval_verilog(lstm_file, capsys, tmp_path):
    code, info, err = bitfab(capsys, "info", lstm_file, "--json")
    assert code == 0, err
    assert [la["kind"] for la in info["layers"]] == ["lstm", "dense"]
    code, result, err = bitfab(capsys, "eval", lstm_file, "--dataset", "auto", "--json")
    assert code == 0, err
    assert (result["mismatches"], result["accumulator_mismatches"]) == (0, 0)
    assert result["n"] == 359 and result["golden_accuracy"] == result["torch_accuracy"]
    code, facts, err = bitfab(capsys, "verilog", lstm_file, "--out", tmp_path, "--json")
    assert code == 0, err
    assert [la["kind"] for la in facts["layers"]] == ["lstm", "dense"]
    assert facts["input"]["last_bit"] == 8 * 8 and facts["output"]["last_bit"] is None
    assert facts["initiation_interval"] == facts["layers"][0]["initiation_interval"] > 1


@pytest.mark.parametrize("args", [
    ("--simulator", "verilator", "--vectors", "200"),
    ("--simulator", "icarus", "--vectors", "40"),
], ids=["verilator", "icarus"])
def test_sim(lstm_file, capsys, tool, args):
    if "icarus" in args:
        tool("iverilog", "Icarus is optional outside CI")
    code, result, err = bitfab(capsys, "sim", lstm_file, *args, "--json")
    assert code == 0, err
    assert result["mismatches"] == 0 and result["first_mismatch"] is None
    vectors = int(args[-1])
    assert result["vectors"] == vectors and result["inputs"] > vectors  # steps in, one h out


@pytest.mark.parametrize("args,n", [(("--simulator", "verilator"), 100),
                                    (("--netlist", "ice40"), 40)],
                         ids=["verilator", "ice40-netlist"])
def test_sim_on_the_test_split(lstm_file, capsys, tmp_path, args, n):
    """The real digit rows (8 steps of 8 pixels) on Verilator and on the iCE40 netlist: the
    golden model's outputs."""
    from bitfab.quant.lstm_data import row_sequences
    _, _, x_test, _, _, _ = row_sequences("digits", 0)
    np.save(tmp_path / "x.npy", x_test[:n])
    code, result, err = bitfab(capsys, "sim", lstm_file, *args, "--inputs", tmp_path / "x.npy",
                               "--json")
    assert code == 0, err
    assert (result["vectors"], result["inputs"], result["mismatches"]) == (n, 8 * n, 0)
    if "--netlist" in args:
        assert result["netlist"] == "ice40" and result["flow"] in ("abc", "abc9-dff")


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s"])
def test_synth(lstm_file, capsys, tmp_path, board):
    # the oscillator (one pass; without --clock the clock is chosen from a first pass's Fmax)
    clock = "12" if board == "icebreaker" else "25"
    code, report, err = bitfab(capsys, "synth", lstm_file, "--board", board, "--clock", clock,
                               "--out", tmp_path / board, "--json")
    assert code == 0, err
    # the lstm kind folds: the fold is the estimator's choice (unrolled when it is estimated to
    # fit), and a refold after synthesis would show as a later fold
    from bitfab.boards.build import choose_fold
    from bitfab.boards.targets import get_board
    from bitfab.model import IntegerModel
    first = choose_fold(IntegerModel.load(lstm_file), get_board(board))
    assert report["fold"] == (None if first is None else list(first)) and report["timing_met"]
    assert [la["kind"] for la in report["layers"]] == ["lstm", "dense"]
    assert report["resources"]["bram"]["used"] >= 1  # weights / tanh tables: yosys decides
    assert (tmp_path / board / report["bitstream"].split("/")[-1]).exists()


def test_board_run_simulated(lstm_file, capsys):
    code, result, err = bitfab(capsys, "board", "run", lstm_file, "--simulate", "--vectors", "3",
                               "--json")
    assert code == 0, err
    assert (result["mismatches"], result["torch_mismatches"]) == (0, 0)
    assert result["vectors"] == 3 and result["inputs"] == 3


def test_fold_builds_the_folded_cell(lstm_file, capsys, tmp_path):
    code, facts, err = bitfab(capsys, "verilog", lstm_file, "--out", tmp_path, "--fold", "2,5",
                              "--json")
    assert code == 0, err
    cfg = facts["layers"][0]["config"]
    # pe 2 of 16 gate rows, simd 5 lowered to 4 (a divisor of 8 inputs + 4 hidden = 12)
    assert (cfg["architecture"], cfg["pe"], cfg["simd"]) == ("folded", 2, 4)
    code, result, err = bitfab(capsys, "sim", lstm_file, "--fold", "2,5", "--vectors", "20",
                               "--json")
    assert code == 0, err
    assert result["mismatches"] == 0
    model = IntegerModel.load(lstm_file)
    assert model.sequential and not model.out_stream.framed
