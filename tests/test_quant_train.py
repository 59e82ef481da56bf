"""quant/: short training runs, export bit-exact with the golden model, eval, the CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bitfab.cli import run
from bitfab.cli.evaluate import compare
from bitfab.errors import BitfabError
from bitfab.model import IntegerModel, Lut, Ternary
from bitfab.quant.data import FASHION_MNIST_DIR, load_dataset
from bitfab.quant.recipes import RECIPES, TrainConfig
from bitfab.quant.train import export, fit
from bitfab.sim.golden import execute

torch.set_num_threads(1)

DIGITS = load_dataset("digits", 0)

#: minimum test accuracy on digits after 10 epochs, hidden (32,), seed 0. Measured here (binary
#: 0.936, sparse-binary 0.919, ternary 0.955, pow2 0.961, denseshift 0.964, lutq 0.958,
#: twobit 0.950, int8 0.967, float 0.969); the floors leave a few points for platform noise.
MIN_ACCURACY = {"float": 0.93, "binary": 0.88, "sparse-binary": 0.86, "ternary": 0.91,
                "pow2": 0.92, "denseshift": 0.92, "lutq": 0.92, "twobit": 0.91, "int8": 0.92}


def assert_torch_matches_golden(result, data):
    """The eval-mode torch network and the golden model agree bit for bit on the test split."""
    model = export(result)
    net = result.model.eval()
    with torch.no_grad():
        torch_acc = net(torch.as_tensor(data.x_test))
    trace = execute(model, data.x_test)
    np.testing.assert_array_equal(torch_acc.numpy().astype(np.int64), trace.accumulators[-1])
    np.testing.assert_array_equal(torch_acc.argmax(1).numpy(), trace.output.argmax(1))
    accs, outs = net.integer_forward(data.x_test)
    for mine, golden in zip(outs[:-1], trace.outputs[:-1]):
        np.testing.assert_array_equal(mine.numpy().astype(np.int64), golden)
    return model


@pytest.mark.train
@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if RECIPES[r].arch is None))  # MLPs
def test_recipe_trains_on_digits(recipe):
    result = fit(TrainConfig(recipe, "digits", hidden=(32,), epochs=10, seed=0), DIGITS)
    assert result.accuracy >= MIN_ACCURACY[recipe]
    assert len(result.history) == 10
    if recipe == "float":
        with pytest.raises(BitfabError, match="float recipe is a reference and is not exportable"):
            export(result)
        return
    assert "flips" in result.history[-1] and 0 <= result.history[-1]["flips"] <= 1
    model = assert_torch_matches_golden(result, DIGITS)
    golden_acc = np.mean(execute(model, DIGITS.x_test).output.argmax(1) == DIGITS.y_test)
    assert golden_acc == result.accuracy
    if recipe == "sparse-binary":
        kept = [np.count_nonzero(la.weights) / la.weights.size for la in model.layers]
        assert all(abs(k - 0.25) < 0.01 for k in kept)
    if recipe == "denseshift":
        assert all(np.all(la.weights != 0) for la in model.layers)


@pytest.mark.train
@pytest.mark.parametrize("recipe, act_bits, options", [
    ("ternary", 4, {"method": "ttq"}),
    ("lutq", 4, {"constraint": "pow2"}),
    ("lutq", 3, {"constraint": "prune", "prune": 0.6}),
    ("lutq", 2, {"constraint": "pow2+prune", "K": 8}),
    ("pow2", 1, {}),
    ("binary", 2, {}),
    ("int8", 8, {"bits": 4}),
    ("denseshift", 6, {"P": 5}),
    ("twobit", 5, {"hard_from": 0.5}),
    ("sparse-binary", 1, {"kept": 0.1}),
    ("int8", 8, {"stage": "requant"}),
    ("pow2", 3, {"stage": "requant"}),
])
def test_variants_export_bit_exact(recipe, act_bits, options):
    options = dict(options)
    stage = options.pop("stage", "threshold")
    cfg = TrainConfig(recipe, "digits", hidden=(24, 16), act_bits=act_bits, epochs=2, seed=1,
                      options=options, limit=400, act_stage=stage)
    model = assert_torch_matches_golden(fit(cfg, DIGITS), DIGITS)
    if act_bits == 1:
        assert model.layers[1].input.kind == "bipolar"
    else:
        assert model.layers[1].input.bits == act_bits
    if stage == "requant":
        assert all(la.output.kind == "requant" for la in model.layers[:-1])
    if options.get("method") == "ttq":
        assert isinstance(model.layers[0].encoding, (Lut, Ternary))
    if "pow2" in options.get("constraint", ""):
        assert all(la.encoding.is_pow2 for la in model.layers)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant") / "net.bfm"
    result = fit(TrainConfig("pow2", "digits", hidden=(16,), epochs=2, seed=0, limit=500), DIGITS)
    export(result).save(path)
    return path


@pytest.mark.train  # the `trained` fixture trains
def test_eval_from_file_alone(trained):
    model = IntegerModel.load(trained)
    assert model.metadata["recipe"] == "pow2" and model.metadata["dataset"] == "digits"
    result = compare(model)
    assert result["mismatches"] == 0 and result["accumulator_mismatches"] == 0
    assert result["n"] == len(DIGITS.y_test)
    assert result["golden_accuracy"] == result["torch_accuracy"]


@pytest.mark.train
def test_eval_catches_a_tampered_model(trained, tmp_path, capsys):
    model = IntegerModel.load(trained)
    last = model.layers[-1]
    w = last.weights.copy()
    w[0, 0] = -w[0, 0] if w[0, 0] else 1
    bad = model.replace(layers=model.layers[:-1] + (last.replace(weights=w),))
    result = compare(bad)
    assert result["accumulator_mismatches"] > 0
    path = tmp_path / "bad.bfm"
    bad.save(path)
    with pytest.raises(SystemExit) as exc:
        run(["eval", str(path), "--dataset", "digits"])
    assert exc.value.code == 1
    assert "golden model and torch reference disagree" in capsys.readouterr().err


def test_eval_refuses_a_model_without_training_state(tmp_path, capsys):
    from bitfab.examples import mlp
    path = tmp_path / "plain.bfm"
    mlp(np.random.default_rng(0), (64, 8, 10), "ternary").save(path)
    with pytest.raises(SystemExit):
        run(["eval", str(path), "--dataset", "digits"])
    assert "carries no training state" in capsys.readouterr().err


@pytest.mark.train
def test_cli_train_eval_info(tmp_path, capsys):
    out = tmp_path / "b.bfm"
    run(["train", "--recipe", "sparse-binary", "--epochs", "2", "--limit", "400", "--hidden",
         "32", "--out", str(out), "--json", "--threads", "1"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and summary["hidden"] == [32]
    assert {"accuracy", "float_accuracy", "time_ratio", "memory_reduction"} <= set(summary)
    run(["eval", str(out), "--dataset", "digits", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["mismatches"] == 0 and result["n"] == len(DIGITS.y_test)
    run(["info", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["sparsity"] > 0.5 and info["memory_reduction"] == 0.9375


@pytest.mark.parametrize("args, message", [
    (["--recipe", "float", "--out", "x.bfm"], "float recipe is a reference and is not exportable"),
    (["--recipe", "lutq", "--option", "constraint"], "--option must be KEY=VALUE"),
    (["--recipe", "lutq", "--option", "kept=0.5"], "recipe 'lutq' takes options"),
    (["--recipe", "binary", "--hidden", "a,b"], "--hidden must be sizes like 256,256"),
    (["--recipe", "binary", "--act-bits", "9"], "act_bits must be in 1..8, not 9"),
    (["--recipe", "binary", "--dataset", "idx:/nonexistent"], "no such folder"),
])
def test_cli_train_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["train", *args])
    assert exc.value.code == 1
    assert message in capsys.readouterr().err


def _fashion_dir() -> Path:
    path = Path(os.environ.get("BITFAB_FASHION_MNIST", FASHION_MNIST_DIR))
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        msg = (f"Fashion-MNIST IDX files are not in {path} (apt-get install "
               f"dataset-fashion-mnist, or set BITFAB_FASHION_MNIST)")
        if os.environ.get("BITFAB_REQUIRE_TOOLS"):
            pytest.fail(f"{msg} (BITFAB_REQUIRE_TOOLS is set: CI must have the data)")
        pytest.skip(msg)
    return path


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("recipe", ["binary", "lutq"])
def test_fashion_mnist_bit_exact(recipe, tmp_path):
    spec = f"idx:{_fashion_dir()}"
    data = load_dataset(spec)
    cfg = TrainConfig(recipe, spec, hidden=(64,), epochs=3, batch_size=128, seed=0, limit=3000)
    result = fit(cfg, data)
    assert result.accuracy >= 0.6
    model = export(result)
    path = tmp_path / "f.bfm"
    model.save(path)
    check = compare(IntegerModel.load(path), data)
    assert check["n"] == 10000 and check["mismatches"] == 0
    assert check["accumulator_mismatches"] == 0
