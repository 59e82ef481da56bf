"""The `bitfab` command line: info and eval on a hand-built model file, errors as one line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitfab import Dense, InputFormat, IntegerModel, Ternary, Threshold
from bitfab.sim.golden import predict

ROOT = Path(__file__).resolve().parents[1]


def bitfab(capsys, *args):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    from conftest import bitfab_cli
    return bitfab_cli(capsys, *args)


@pytest.fixture
def model_file(tmp_path):
    """A hand-built 2-layer model: ternary with 50 % zeros, then thresholds, then raw outputs."""
    w0 = np.tile([1, 0, -1, 0], (6, 4))  # 6 x 16, half zeros
    layer0 = Dense(w0, Ternary(), InputFormat.int(8), Threshold(np.tile([[-20], [0]], (3, 1))))
    rng = np.random.default_rng(0)
    layer1 = Dense(rng.integers(-1, 2, (3, 6)), Ternary(), InputFormat.int(1))
    path = tmp_path / "hand.bfm"
    IntegerModel((layer0, layer1), name="hand").save(path)
    return path


def test_info_table_and_json(capsys, model_file):
    code, out, err = bitfab(capsys, "info", model_file)
    assert code == 0, err
    assert "dense 16->6" in out and "ternary" in out and "reduction 93.75 %" in out
    code, out, _ = bitfab(capsys, "info", model_file, "--json")
    facts = json.loads(out)
    assert facts["weight_bits"] == 2 * (96 + 18) and facts["fp32_bits"] == 32 * (96 + 18)
    assert facts["memory_reduction"] == 0.9375
    assert facts["layers"][0]["sparsity"] == 0.5
    assert facts["layers"][0]["datapath"] == "ternary"
    assert [la["acc_bits"] for la in facts["layers"]] == \
        [la.acc_bits for la in IntegerModel.load(model_file).layers]


def test_eval_accuracy_against_golden(capsys, model_file, tmp_path):
    model = IntegerModel.load(model_file)
    x = np.random.default_rng(1).integers(0, 256, (50, 16))
    labels = predict(model, x)
    labels[:10] = (labels[:10] + 1) % 3  # exactly 10 wrong
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    code, out, err = bitfab(capsys, "eval", model_file, "--inputs", tmp_path / "x.npy",
                            "--labels", tmp_path / "y.npy", "--json", "--out", tmp_path / "p.npy")
    assert code == 0, err
    assert json.loads(out) == {"accuracy": 0.8, "correct": 40, "n": 50}
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), predict(model, x))
    code, out, _ = bitfab(capsys, "eval", model_file, "--inputs", tmp_path / "x.npy")
    assert code == 0 and "50 predictions" in out


@pytest.mark.parametrize("args, message", [
    (["info", "{tmp}/missing.bfm"], r"^error: .*missing.bfm: no such model file$"),
    (["info", "{tmp}/x.npy"], r"^error: .*x.npy: not a bitfab model"),
    (["eval", "{model}", "--inputs", "{tmp}/none.npy"],
     r"^error: inputs .*none.npy: no such file$"),
    (["eval", "{model}", "--inputs", "{tmp}/bad.npy"], r"^error: inputs must have shape"),
    (["eval", "{model}", "--inputs", "{tmp}/big.npy"], r"^error: inputs must be uint8 values in "),
    (["eval", "{model}", "--inputs", "{tmp}/x.npy", "--labels", "{tmp}/bad.npy"],
     r"^error: labels must be integers of shape \(4,\), one per input"),
    (["eval", "{model}", "--inputs", "{model}"], r"^error: inputs .*: not a readable .npy"),
])
def test_errors_are_one_line_and_nonzero(capsys, tmp_path, model_file, args, message):
    np.save(tmp_path / "x.npy", np.zeros((4, 16), dtype=np.int64))
    np.save(tmp_path / "bad.npy", np.zeros((4, 3), dtype=np.int64))
    np.save(tmp_path / "big.npy", np.full((4, 16), 300))
    args = [a.format(tmp=tmp_path, model=model_file) for a in args]
    code, out, err = bitfab(capsys, *args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err.strip()), err


def test_help_on_every_command(capsys):
    from bitfab.cli import COMMANDS
    for name in COMMANDS:
        code, out, _ = bitfab(capsys, name, "--help")
        assert code == 0 and "Usage: bitfab" in out, name


def test_the_installed_command_runs(model_file):
    """The console script (not just the function) is installed and exits non-zero on errors."""
    exe = Path(sys.executable).with_name("bitfab")
    ok = subprocess.run([exe, "info", model_file, "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["name"] == "hand"
    bad = subprocess.run([exe, "info", "/nonexistent.bfm"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(make demo.*?\nmake test.*?)\n```", readme, re.S)
    assert block, "the README must show exactly the two commands `make demo` and `make test`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: \$\(STAMP\)\n\t\$\(PY\) -m pytest", makefile, re.M)


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.cocotb
@pytest.mark.synth
def test_demo_runs(capsys, tmp_path):
    code, out, err = bitfab(capsys, "demo", "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "demo.bfm").exists()


def test_eval_runs_sequence_models_and_execute_checks_their_shape(capsys, tmp_path):
    from bitfab.errors import ModelRangeError
    from bitfab.lstm import random_lstm
    from bitfab.model import IntWeights
    from bitfab.sim.golden import execute, predict

    rng = np.random.default_rng(6)
    lstm = random_lstm(rng, 3, 4, returns="last")
    head = Dense(rng.integers(-3, 4, (2, 4)), IntWeights(3), lstm.out_format)
    model = IntegerModel((lstm, head), name="seq")
    model.save(tmp_path / "seq.bfm")
    x = rng.integers(lstm.input.min_value, lstm.input.max_value + 1, (6, 5, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", predict(model, x))
    code, out, err = bitfab(capsys, "eval", tmp_path / "seq.bfm", "--inputs", tmp_path / "x.npy",
                            "--labels", tmp_path / "y.npy", "--json")
    assert code == 0, err
    assert json.loads(out) == {"accuracy": 1.0, "correct": 6, "n": 6}
    with pytest.raises(ModelRangeError, match=r"sequences must have shape \(batch, steps, 3\)"):
        execute(model, x[:, 0, 0])
