"""A trained lstm_mps model (the MPS chain in hardware) through the commands dense models use:
eval (golden vs torch), verilog, sim on Verilator (unrolled and folded chain stages), and on the
iCE40 netlist, each with 0 mismatches."""

import numpy as np
import pytest

from bitfab.cli import run

pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.cocotb, pytest.mark.synth]


def bitfab(capsys, *args):
    """Run the CLI in-process; return (exit status, the JSON it printed, stderr)."""
    from conftest import bitfab_json
    return bitfab_json(capsys, *args)


@pytest.fixture(scope="module")
def mps_file(tmp_path_factory):
    """4 hidden units reading 8-pixel digit rows, the gate matrix an MPS chain of rank 2 with
    ternary cores."""
    path = tmp_path_factory.mktemp("mps") / "mps.bfm"
    try:
        run(["train", "--recipe", "lstm-gates", "--dataset", "digits", "--hidden", "4",
             "--epochs", "2", "--option", "compress=mps:2", "--option", "weights=ternary",
             "--option", "hidden_bits=4", "--no-reference", "--out", str(path), "--json"])
    except SystemExit as exc:
        assert not exc.code, exc
    return path


def test_eval_and_verilog_facts(mps_file, capsys, tmp_path):
    code, result, err = bitfab(capsys, "eval", mps_file, "--dataset", "auto", "--json")
    assert code == 0, err
    assert (result["mismatches"], result["accumulator_mismatches"]) == (0, 0)
    code, facts, err = bitfab(capsys, "verilog", mps_file, "--out", tmp_path, "--fold", "2,4",
                              "--json")
    assert code == 0, err
    layer = facts["layers"][0]
    assert layer["kind"] == "lstm_mps" and layer["config"]["gates"] == "mps chain"
    cfg = layer["config"]
    assert cfg["encoding"]["kind"] == "ternary" and cfg["datapath"] == "ternary"
    # the chain stores its cores: in_modes (3, 4), out_modes (4, 4), ranks (1, 2, 2, 2, 1)
    assert cfg["chain_weights"] == 3 * 2 + 2 * 4 * 2 + 2 * 4 * 2 + 2 * 4
    assert [(s["rows"], s["cols"], s["vectors"]) for s in cfg["stages"]] == \
        [(2, 3, 4), (2, 8, 1), (8, 2, 1), (4, 2, 4)]


@pytest.mark.parametrize("args", [
    ("--simulator", "verilator", "--vectors", "100"),
    ("--simulator", "verilator", "--fold", "2,4", "--vectors", "100"),
], ids=["verilator", "verilator-folded"])
def test_sim(mps_file, capsys, args):
    code, result, err = bitfab(capsys, "sim", mps_file, *args, "--json")
    assert code == 0, err
    assert result["mismatches"] == 0 and result["first_mismatch"] is None
    vectors = int(args[-1])
    assert result["vectors"] == vectors and result["inputs"] > vectors  # steps in, one h out


def test_netlist_on_test_rows(mps_file, capsys, tmp_path):
    """The iCE40 netlist of the folded chain on the first 20 real test sequences."""
    from bitfab.quant.lstm_data import row_sequences
    _, _, x_test, _, _, _ = row_sequences("digits", 0)
    np.save(tmp_path / "x.npy", x_test[:20])
    code, result, err = bitfab(capsys, "sim", mps_file, "--netlist", "ice40", "--fold", "2,4",
                               "--inputs", tmp_path / "x.npy", "--json")
    assert code == 0, err
    assert (result["vectors"], result["inputs"], result["mismatches"]) == (20, 160, 0)
    assert result["netlist"] == "ice40" and result["flow"] in ("abc", "abc9-dff")


def test_synth_icebreaker_and_simulated_board(mps_file, capsys, tmp_path):
    """The chain on the iCEBreaker: the fold choice's pick places, and the simulated board
    agrees with golden and the torch eval."""
    from bitfab.boards.build import choose_fold
    from bitfab.boards.targets import get_board
    from bitfab.model import IntegerModel
    code, report, err = bitfab(capsys, "synth", mps_file, "--board", "icebreaker", "--clock",
                               "12", "--out", tmp_path / "ib", "--json")
    assert code == 0, err
    first = choose_fold(IntegerModel.load(mps_file), get_board("icebreaker"))
    assert report["fold"] == list(first) and report["timing_met"]
    assert [la["kind"] for la in report["layers"]] == ["lstm_mps", "dense"]
    assert report["layers"][0]["datapath"] == "ternary"
    assert (tmp_path / "ib" / report["bitstream"].split("/")[-1]).exists()
    code, result, err = bitfab(capsys, "board", "run", mps_file, "--simulate", "--vectors", "3",
                               "--fold", ",".join(map(str, first)), "--json")
    assert code == 0, err
    assert (result["mismatches"], result["torch_mismatches"], result["vectors"]) == (0, 0, 3)
