"""quant/conv: the conv recipes train, export and agree with the golden model bit for bit."""

import doctest
import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from bitfab import examples
from bitfab.conv import Add, Conv, Flatten
from bitfab.errors import BitfabError
from bitfab.model import Dense, InputFormat, IntegerModel, IntWeights, Threshold
from bitfab.quant import conv as qconv
from bitfab.quant import fold
from bitfab.quant.conv import align_shifts, image_shape, integer_forward
from bitfab.quant.data import FASHION_MNIST_DIR, load_dataset
from bitfab.quant.evaluate import reference
from bitfab.quant.recipes import TrainConfig
from bitfab.quant.train import export, fit, fit_interleaved
from bitfab.sim.golden import execute, predict

torch.set_num_threads(1)
pytestmark = pytest.mark.train

#: recipe, dataset, widths: tiny networks (the recipes' own defaults are larger)
CASES = [
    ("cnn-twobit", "digits", (8, 8)),
    ("cnn-binary", "digits", (8, 8)),
    ("cnn-ternary", "digits", (8, 8)),
    ("resnet-pow2", "mnist1d", (8, 8)),
    ("resnet-denseshift", "mnist1d", (8, 8)),
    ("resnet-pow2", "digits", (4, 8)),  # the 2-D ResNet
]


@cache
def _data(name: str):
    return load_dataset(name, 0)


@cache
def _trained(recipe: str, dataset: str, widths: tuple):
    """One short run (2 epochs on 400 examples; the two-bit recipe reaches its hard stage)."""
    options = {"hard_from": 0.5} if recipe == "cnn-twobit" else {}
    config = TrainConfig(recipe, dataset, widths, epochs=2, batch_size=32, limit=400,
                         options=options)
    return fit(config, _data(dataset))


def check_bit_exact(model: IntegerModel, x: np.ndarray, reference_model=None) -> None:
    """The torch integer forward of ``reference_model`` (default ``model``) and the golden model
    of ``model`` agree on every layer's accumulators and outputs and on every prediction."""
    accs, outs = integer_forward(model if reference_model is None else reference_model, x)
    trace = execute(model, x)
    assert len(accs) == len(trace.accumulators) == len(model.layers)
    for i in range(len(model.layers)):
        np.testing.assert_array_equal(accs[i].numpy().astype(np.int64), trace.accumulators[i])
        np.testing.assert_array_equal(outs[i].numpy().astype(np.int64), trace.outputs[i])
    np.testing.assert_array_equal(accs[-1].numpy().argmax(1), predict(model, x))


def test_doctests():
    assert doctest.testmod(qconv, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("recipe, dataset, widths", CASES,
                         ids=[f"{r}-{d}" for r, d, _ in CASES])
def test_recipe_trains_exports_and_is_bit_exact(recipe, dataset, widths, tmp_path):
    result = _trained(recipe, dataset, widths)
    data = _data(dataset)
    model = export(result)
    kinds = [layer.kind for layer in model.layers]
    assert kinds.count("conv") >= 2 and kinds[-1] == "dense"
    if recipe.startswith("resnet"):
        assert {"add", "avgpool"} <= set(kinds)
    else:
        assert "maxpool" in kinds and "flatten" in kinds
    check_bit_exact(model, data.x_test)  # the whole test split
    # the file round trip, and bitfab eval's path: the torch reference rebuilt from the file
    path = tmp_path / "m.bfm"
    model.save(path)
    loaded = IntegerModel.load(path)
    ref = reference(loaded)
    np.testing.assert_array_equal(ref.outputs, execute(loaded, ref.x).accumulators[-1])
    # the integer network is what the training loop measured
    assert np.mean(ref.outputs.argmax(1) == ref.labels) == pytest.approx(result.accuracy)


@pytest.mark.parametrize("recipe, dataset, widths", [CASES[0], CASES[3]],
                         ids=["cnn", "resnet"])
def test_negative_gammas_fold_exactly(recipe, dataset, widths):
    """Batchnorm with negative (and zero) gammas: direction -1 thresholds, equal to the unfolded
    float64 batchnorm + activation on the exact accumulators, and bit-exact against golden."""
    net = _trained(recipe, dataset, widths).model
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        with torch.no_grad():
            for bn in net.bns:
                bn.weight[::2] = -bn.weight[::2].abs() - 0.1
                bn.weight[1] = 0.0
        model = net.export()
        x = _data(dataset).x_test[:200]
        check_bit_exact(model, x)
        trace = execute(model, x)
        convs = [i for i, layer in enumerate(model.layers) if layer.kind == "conv"]
        assert convs
        for op in net.ops:
            if op.kind != "conv":
                continue
            i = [layer.name for layer in model.layers].index(op.name)
            layer, qlayer, bn = model.layers[i], net.layers[op.index], net.bns[op.bn]
            assert isinstance(layer.output, Threshold)
            gamma = bn.weight.detach().double().numpy()
            np.testing.assert_array_equal(layer.output.direction, np.where(gamma >= 0, 1, -1))
            unit = net.input_scale if op.source == "input" else float(net.act.step)
            a = unit * qlayer.quantizer.scale(qlayer.weight)
            acc = trace.accumulators[i].reshape(-1, layer.out_channels)
            want = fold.float_reference(acc, a, bn.running_mean.double().numpy(),
                                        bn.running_var.double().numpy(), bn.eps, gamma,
                                        bn.bias.detach().double().numpy(), net.act.offsets())
            np.testing.assert_array_equal(trace.outputs[i].reshape(acc.shape), want)
    finally:
        net.load_state_dict(saved)


def test_wrong_reference_fails_the_checker():
    model = export(_trained(*CASES[0]))
    x = _data("digits").x_test
    first = model.layers[0]
    wrong = first.replace(output=Threshold(first.output.thresholds + 1, first.output.direction))
    bad = model.replace(layers=(wrong,) + model.layers[1:])
    with pytest.raises(AssertionError):
        check_bit_exact(model, x, reference_model=bad)
    w = first.weights.copy()
    w[0].flat[0] = -w[0].flat[0] if w[0].flat[0] else 1
    flipped = model.replace(layers=(first.replace(weights=w),) + model.layers[1:])
    with pytest.raises(AssertionError):
        check_bit_exact(model, x, reference_model=flipped)


@pytest.mark.parametrize("encoding", sorted(examples.ENCODINGS))
def test_integer_forward_matches_golden_on_random_models(encoding):
    """Every encoding, stride, padding (bipolar pads), groups, requant and the example graphs."""
    rng = np.random.default_rng(7)
    enc = examples.ENCODINGS[encoding]
    binary = encoding == "binary"
    fmt = InputFormat.bipolar() if binary else InputFormat.int(4, signed=True)
    for shape, kernel, stride, padding, groups in [((9, 4), 3, 2, 1, 1), ((7, 6, 4), 3, 1, 1, 2),
                                                   ((6, 5, 4), (2, 3), (2, 1), 0, 4)]:
        out = "requant" if encoding == "int" else "threshold"
        conv = examples.random_conv(rng, shape, 4, kernel, enc, fmt, out, 2, stride, padding,
                                    groups)
        flat = Flatten(conv.out_format, conv.out_shape)
        head = Dense(rng.integers(-2, 3, (3, flat.out_shape[0])), IntWeights(3), flat.out_format)
        model = IntegerModel((conv, flat, head))
        lo, hi = (-1, 2) if binary else (-8, 8)
        x = rng.integers(lo, hi, (20,) + shape)
        if binary:
            x = np.where(x > 0, 1, -1)
        check_bit_exact(model, x)
    images = rng.integers(0, 16, (16, 8, 8, 1))
    check_bit_exact(examples.cnn(rng, encoding=enc),
                    np.where(images > 7, 1, -1) if binary else images)
    if not binary:
        check_bit_exact(examples.resnet1d(rng, encoding=enc), rng.integers(-8, 8, (16, 16, 1)))


def test_add_aligns_units_by_shifts():
    """Units 1/4 and 1/8: the add shifts the coarser input by one, and torch == golden."""
    assert align_shifts(0.25, 0.125) == (1, 0) and align_shifts(0.125, 0.5) == (0, 2)
    rng = np.random.default_rng(3)
    fmt = InputFormat.int(3, signed=False)
    conv = Conv(rng.integers(-3, 4, (2, 3, 2)), IntWeights(3), fmt, (8, 2), padding=1,
                output=Threshold(np.array([[-2, 0, 2], [3, 1, -1]]), np.array([1, -1])),
                name="c")
    shift, skip_shift = align_shifts(0.25, 0.125)
    add = Add(conv.out_format, fmt, (8, 2), "input", shift, skip_shift, name="sum")
    flat = Flatten(add.out_format, (8, 2))
    head = Dense(rng.integers(-2, 3, (3, 16)), IntWeights(3), flat.out_format)
    model = IntegerModel((conv, add, flat, head))
    x = rng.integers(0, 8, (32, 8, 2))
    check_bit_exact(model, x)
    a = integer_forward(model, x)[1][0].numpy()
    np.testing.assert_array_equal(integer_forward(model, x)[0][1].numpy(),
                                  a * 2 + x.reshape(32, 8, 2))


def test_interleaved_training_times_each_network():
    data = _data("digits")
    configs = [TrainConfig(r, "digits", (4, 4), epochs=1, batch_size=64, limit=128)
               for r in ("cnn-twobit", "cnn-float")]
    quant, flt = fit_interleaved(configs, data)
    assert quant.seconds > 0 and flt.seconds > 0
    assert flt.model.is_float and not quant.model.is_float
    assert len(quant.history) == 1 and "accuracy" in quant.history[0]


# --- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_and_configurations():
    model = export(_trained(*CASES[0]))
    with pytest.raises(BitfabError, match=r"^inputs must have shape \(batch, 64\) or "
                                          r"\(batch, 8, 8, 1\), not \(3, 63\)$"):
        integer_forward(model, np.zeros((3, 63)))
    with pytest.raises(BitfabError, match="recipe 'cnn-twobit' is a 2-D CNN and dataset "
                                          "mnist1d holds 1-D signals"):
        TrainConfig("cnn-twobit", "mnist1d")
    with pytest.raises(BitfabError, match=r"act_bits must be 2..8, not 1 \(bipolar\)"):
        TrainConfig("resnet-pow2", "mnist1d", act_bits=1)
    with pytest.raises(BitfabError, match="act_stage must be 'threshold', not 'requant'"):
        TrainConfig("cnn-ternary", "digits", act_stage="requant")
    with pytest.raises(BitfabError, match="ratio 1.5 is not a power of two"):
        align_shifts(0.3, 0.2)
    with pytest.raises(BitfabError, match="has 50 features, not a square image"):
        image_shape("idx:somewhere", 50)
    with pytest.raises(BitfabError, match="no integer form"):
        qconv.QuantConvNet("cnn", (8, 8, 1), (4,), 10, qconv.FloatWeight, None,
                           InputFormat.int(5), 1 / 16).export()
    with pytest.raises(BitfabError, match="too small"):
        qconv.QuantConvNet("cnn", (4, 4, 1), (4, 4, 4), 10, qconv.FloatWeight, None,
                           InputFormat.int(5), 1 / 16)


def test_cli_refuses_a_cnn_on_signals_in_one_line(capsys):
    from conftest import bitfab_cli
    code, out, err = bitfab_cli(capsys, "train", "--recipe", "cnn-binary", "--dataset",
                                "mnist1d")
    assert code != 0
    assert err.strip().splitlines() == ["error: recipe cnn-binary is a 2-D CNN and dataset "
                                        "mnist1d holds 1-D signals: use resnet-pow2 or "
                                        "resnet-denseshift"]


def test_cli_trains_and_exports_a_cnn(capsys, tmp_path):
    from conftest import bitfab_cli
    out_file = tmp_path / "x.bfm"
    code, out, err = bitfab_cli(capsys, "train", "--recipe", "cnn-twobit", "--dataset", "digits",
                                "--epochs", "1", "--hidden", "4,4", "--limit", "200",
                                "--out", out_file, "--json")
    assert code == 0, err
    model = IntegerModel.load(out_file)
    assert model.metadata["recipe"] == "cnn-twobit" and "float_accuracy" in model.metadata
    check_bit_exact(model, _data("digits").x_test)


@pytest.mark.slow
def test_fashion_mnist_cnn_is_bit_exact_on_the_whole_test_set():
    path = Path(os.environ.get("BITFAB_FASHION_MNIST", FASHION_MNIST_DIR))
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        msg = (f"Fashion-MNIST IDX files are not in {path} (apt-get install "
               f"dataset-fashion-mnist, or set BITFAB_FASHION_MNIST)")
        if os.environ.get("BITFAB_REQUIRE_TOOLS"):
            pytest.fail(f"{msg} (BITFAB_REQUIRE_TOOLS is set: CI must have the data)")
        pytest.skip(msg)
    data = load_dataset(f"idx:{path}")
    config = TrainConfig("cnn-twobit", f"idx:{path}", (4, 8), epochs=2, batch_size=64,
                         limit=1000, options={"hard_from": 0.5})
    model = export(fit(config, data))
    check_bit_exact(model, data.x_test[:500])  # every layer
    for start in range(0, len(data.x_test), 2500):  # the last layer, all 10,000 images
        x = data.x_test[start:start + 2500]
        accs = integer_forward(model, x, keep_all=False)[0][-1].numpy().astype(np.int64)
        trace = execute(model, x)
        np.testing.assert_array_equal(accs, trace.accumulators[-1])
        np.testing.assert_array_equal(accs.argmax(1), predict(model, x))
