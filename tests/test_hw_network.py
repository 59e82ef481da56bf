"""Whole networks as one component (layers chained with wiring.connect) against the golden model."""

import numpy as np
import pytest
from amaranth.back import rtlil

from bitfab.examples import mlp, random_dense
from bitfab.hw.config import ConfigError, LayerConfig
from bitfab.hw.layer import Network, build_layer, build_network, network_configs
from bitfab.model import Dense, InputFormat, IntegerModel, Lut, NoOutput, Ternary, Threshold
from bitfab.sim import golden
from bitfab.sim.amaranth_sim import simulate


def inputs(rng, model, batch):
    fmt = model.input
    if fmt.kind == "bipolar":
        return 2 * rng.integers(0, 2, size=(batch, model.in_features)) - 1
    return rng.integers(fmt.min_value, fmt.max_value + 1, size=(batch, model.in_features))


@pytest.mark.parametrize("fold", [None, (2, 4)])
def test_three_layer_binary_network_end_to_end(fold):
    rng = np.random.default_rng(10)
    model = mlp(rng, (8, 6, 4, 3), "binary")
    x = inputs(rng, model, 6)
    if fold is None:
        net = build_network(model, pipeline=1)
    else:  # fold every layer that can take it, unroll the others
        net = Network([LayerConfig.folded(layer, *fold, 1) if layer.in_features % fold[1] == 0
                       else LayerConfig.unrolled(layer, 1) for layer in model.layers])
    assert net.latency == sum(layer.latency for layer in net.layers)
    y = simulate(net, x, stall=0.3, bubble=0.3)
    np.testing.assert_array_equal(y, golden.execute(model, x).output)


def test_two_layer_lut_network_folded():
    rng = np.random.default_rng(11)
    model = mlp(rng, (6, 4, 3), "lut")
    x = inputs(rng, model, 5)
    x[0] = 255
    net = build_network(model, fold=(2, 2), pipeline=2)
    assert net.initiation_interval == max(layer.initiation_interval for layer in net.layers)
    np.testing.assert_array_equal(simulate(net, x, stall=0.4), golden.execute(model, x).output)


def test_narrow_output_into_a_wider_signed_input_is_resized():
    """A 2-bit threshold output feeds an int5 input: a Resize joins the streams."""
    rng = np.random.default_rng(12)
    first = random_dense(rng, 5, 4, Ternary(), InputFormat.int(3, signed=True), "threshold",
                         thresholds=3)
    second = Dense(rng.integers(-1, 2, size=(2, 4)), Ternary(), InputFormat.int(5, signed=True),
                   NoOutput())
    model = IntegerModel((first, second), name="resized")
    x = inputs(rng, model, 6)
    for fold in (None, (1, 1)):
        y = simulate(build_network(model, fold=fold), x, bubble=0.2)
        np.testing.assert_array_equal(y, golden.execute(model, x).output)


def test_simulate_takes_a_model():
    rng = np.random.default_rng(13)
    model = mlp(rng, (4, 3, 2), "ternary")
    x = inputs(rng, model, 3)
    np.testing.assert_array_equal(simulate(model, x, pipeline=1), golden.execute(model, x).output)


def test_network_refuses_layers_that_do_not_chain():
    a = LayerConfig.unrolled(random_dense(np.random.default_rng(0), 4, 3, "binary"))
    b = LayerConfig.unrolled(random_dense(np.random.default_rng(0), 5, 2, "binary"))
    with pytest.raises(ConfigError, match=r"configs\[1\] takes 5 inputs but configs\[0\] gives 3"):
        Network([a, b])
    with pytest.raises(ConfigError, match="a network needs at least one layer"):
        Network([])
    with pytest.raises(ConfigError, match=r"pe must be a positive integer, not 0"):
        network_configs(mlp(np.random.default_rng(0), (4, 6, 2)), fold=(0, 4))


def test_one_fold_fits_every_layer_of_a_network():
    """PE is capped at out_features, SIMD lowered to the largest divisor of in_features."""
    configs = network_configs(mlp(np.random.default_rng(0), (8, 6, 2)), fold=(4, 4))
    assert [(c.pe, c.simd) for c in configs] == [(4, 4), (2, 3)]


def _cells(component) -> str:
    return rtlil.convert(component, emit_src=False)


@pytest.mark.parametrize("encoding", ["binary", "ternary", "pow2", "lut", "lut_pow2"])
def test_unrolled_constant_weights_build_no_multipliers(encoding):
    """Constant weights fold into wiring, inverters and adders: no $mul cell anywhere."""
    rng = np.random.default_rng(14)
    enc = {"lut": Lut((-3, -1, 0, 2, 7)), "lut_pow2": Lut((-4, 0, 1, 2))}.get(encoding, encoding)
    fmt = InputFormat.bipolar() if encoding == "binary" else InputFormat.int(4)
    layer = random_dense(rng, 16, 4, enc, fmt, "threshold")
    text = _cells(build_layer(LayerConfig.unrolled(layer, 1)))
    assert "$mul" not in text
    if encoding == "binary":
        assert "$xor" not in text and "$xnor" not in text  # constant XNOR = wire or inverter
    if encoding == "lut_pow2":
        # a pow2 dictionary is pure shift-add: the products themselves need no adder
        assert "mul" not in text.replace("$mul", "")


def test_int_baseline_multiplies():
    layer = random_dense(np.random.default_rng(15), 4, 2, "int", InputFormat.int(4), "none")
    assert "$mul" in _cells(build_layer(LayerConfig.unrolled(layer)))


def test_zero_weights_produce_no_hardware():
    w = np.zeros((3, 8), dtype=np.int64)
    w[1, 2] = 1
    layer = Dense(w, Ternary(), InputFormat.int(4), Threshold(np.array([[0], [1], [2]])))
    text = _cells(build_layer(LayerConfig.unrolled(layer)))
    assert "$add" not in text and "$sub" not in text  # one live weight: a wire into a compare


@pytest.mark.slow
def test_sfc_folded_end_to_end():
    """FINN's SFC (784-256-256-256-10, binary) folded 16 x 16, under stalls, bit-exact."""
    from bitfab.examples import sfc
    rng = np.random.default_rng(16)
    model = sfc(rng)
    x = inputs(rng, model, 2)
    net = build_network(model, fold=(16, 16), pipeline=2)
    assert net.initiation_interval == 784 // 16 * 256 // 16
    np.testing.assert_array_equal(simulate(net, x, stall=0.2), golden.execute(model, x).output)
