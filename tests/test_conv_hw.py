"""The image kinds in hardware (bitfab.hw.conv) against the golden model: every conv, pool,
flatten and add configuration bit for bit in the Amaranth simulator with random stalls and
bubbles, whole CNNs and residual networks (skip FIFOs), the cocotb bench on Verilator, and the
checks failing on a wrong reference."""

import numpy as np
import pytest

from bitfab.conv import Add, AvgPool, Flatten, MaxPool
from bitfab.errors import VerificationError
from bitfab.examples import cnn, random_conv, resnet1d
from bitfab.hw import kinds
from bitfab.hw.config import ConfigError
from bitfab.hw.conv import (
    ConvConfig,
    ConvLayer,
    GlobalPoolLayer,
    SlidingWindow,
    balanced_configs,
    image_clocks,
    out_counts,
)
from bitfab.hw.layer import Network, network_configs, skip_fifo_depths
from bitfab.model import InputFormat, IntegerModel, IntWeights, Lut, Pow2, Requant
from bitfab.sim.amaranth_sim import simulate
from bitfab.sim.golden import execute
from bitfab.sim.run import random_inputs


def images(rng, model, batch):
    fmt = model.input
    x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(batch, *model.in_shape))
    return np.where(x > 0, 1, -1) if fmt.kind == "bipolar" else x


def check(model, batch=3, seed=0, stall=0.3, bubble=0.3, target=None, **kwargs):
    """Simulate ``model`` (or ``target``, or a network built from it with ``kwargs``) on random
    images with stalls and bubbles and compare with the golden model bit for bit; return the
    outputs."""
    rng = np.random.default_rng(seed)
    x = images(rng, model, batch)
    if target is None:
        target = Network(network_configs(model, **kwargs)) if kwargs else model
    got = simulate(target, x, stall=stall, bubble=bubble, seed=seed)
    want = execute(model, x).output
    np.testing.assert_array_equal(got, want)
    return got, want


# (in_shape, out_channels, kernel, encoding, input format, output, stride, padding, groups)
CONVS = {
    "2d_binary_s1_pad1": ((5, 6, 3), 4, 3, "binary", None, "threshold", 1, 1, 1),
    "2d_pow2_s2_asym": ((6, 7, 2), 3, 3, "pow2", None, "none", 2, ((1, 0), (0, 2)), 1),
    "2d_ternary_rect_s21": ((5, 6, 2), 3, (2, 3), "ternary", InputFormat.int(3, signed=True),
                            "requant", (2, 1), 0, 1),
    "2d_int_groups": ((4, 5, 4), 4, 3, IntWeights(3), None, "none", 1, 1, 2),
    "2d_denseshift_depthwise": ((5, 5, 3), 3, 3, Pow2(0, 2, zero=False), None, "requant", 1,
                                1, 3),
    "2d_one_column": ((5, 1, 2), 2, (3, 1), "ternary", None, "none", 1, ((1, 1), (0, 0)), 1),
    "1d_ternary_s2": ((11, 3), 4, 3, "ternary", None, "requant", 2, 1, 1),
    "1d_lut_pad_after": ((9, 2), 3, 4, Lut((-3, -1, 1, 2)), None, "threshold", 1,
                         ((0, 3),), 1),
    "1d_binary_grouped": ((8, 4), 4, 3, "binary", None, "none", 1, 1, 2),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_equals_golden_with_stalls(name):
    shape, c_out, k, enc, fmt, out, stride, pad, groups = CONVS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    layer = random_conv(rng, shape, c_out, k, enc, fmt, out, thresholds=2, stride=stride,
                        padding=pad, groups=groups, sparsity=0.2)
    check(IntegerModel((layer,)), seed=len(name))


def test_folded_conv_and_pipelined_unrolled_conv():
    rng = np.random.default_rng(3)
    layer = random_conv(rng, (5, 5, 2), 4, 3, "ternary", None, "requant", padding=1)
    model = IntegerModel((layer,))
    check(model, pipeline=2)
    net = Network(network_configs(model, fold=(2, 6), pipeline=1))
    comp = net.layers[0]
    assert comp.config.architecture == "folded"
    # a folded window takes SF * NF = 3 * 2 clocks; 25 pixels give 25 windows
    assert comp.initiation_interval == 6
    check(model, target=net)


def test_window_geometry_facts():
    rng = np.random.default_rng(4)
    layer = random_conv(rng, (6, 10, 3), 2, 3, "ternary", InputFormat.int(4), padding=1)
    comp = kinds.build(kinds.configure(layer))
    assert isinstance(comp, ConvLayer)
    # two rows of the padded width (12) of 3 channels of 4 bits in one block RAM
    assert comp.line_buffer_bits == 12 * 2 * 3 * 4
    assert comp.latency == 2 + comp._dense.latency
    assert comp.initiation_interval == -(-(8 * 12) // 60)
    check(IntegerModel((layer,)), batch=2, target=comp)
    win = SlidingWindow((4, 4), (3, 3), (1, 1), 2, 1)
    assert (win.latency, win.line_buffer_bits) == (2, 4 * 2 * 2)
    win._MustUse__silence = True  # facts only


@pytest.mark.parametrize("shape,kernel,stride,signed", [
    ((6, 6, 3), 2, None, False), ((7, 5, 2), 3, 2, True), ((9, 2), 3, 1, False),
    ((8, 3), 2, None, True), ((7, 5, 2), (2, 2), None, True), ((5, 1, 2), (2, 1), None, False)])
def test_maxpool_equals_golden(shape, kernel, stride, signed):
    layer = MaxPool(InputFormat.int(3, signed=signed), shape, kernel, stride)
    comp = kinds.build(kinds.configure(layer))
    # non-overlapping tiles (stride = kernel; a 7x5 image leaves a row and a column out) take
    # no window: a running maximum and one partial maximum per output column
    assert ("tile" in comp._stages) == (tuple(layer.stride) == tuple(layer.kernel))
    check(IntegerModel((layer,)), seed=len(shape), target=comp)


@pytest.mark.parametrize("shape,kernel,output,fmt", [
    ((6, 4, 2), 2, "none", InputFormat.int(3)), ((8, 3), 8, "requant", InputFormat.int(3)),
    ((5, 5, 2), (5, 5), "requant", InputFormat.int(3)),
    ((7, 4), 7, "none", InputFormat.int(3, signed=True)),
    ((3, 4, 2), (3, 4), "none", InputFormat.int(1)),
    ((1, 3), 1, "requant", InputFormat.int(2))])
def test_avgpool_equals_golden(shape, kernel, output, fmt):
    stage = Requant(np.array([1, 3, 2][:shape[-1]]), 3, 3) if output == "requant" else None
    layer = AvgPool(fmt, shape, kernel, **({"output": stage} if stage is not None else {}))
    comp = kinds.build(kinds.configure(layer))
    # a window as large as the image is a global pool: accumulators, no window, no line buffer
    is_global = tuple(layer.kernel) == tuple(shape[:-1])
    assert isinstance(comp, GlobalPoolLayer) == is_global
    check(IntegerModel((layer,)), target=comp)


def test_flatten_then_add_of_vectors():
    fmt = InputFormat.int(2)
    flat = Flatten(fmt, (3, 2, 2), name="flat")
    check(IntegerModel((flat,)), batch=4)
    # an add reading the model input twice: the input is forked, the skip side has a FIFO
    add = Add(InputFormat.int(3, signed=True), InputFormat.int(3, signed=True), (5, 3),
              "input", 1, 0, Requant(np.array([1, 2, 3]), 1, 3, signed=True))
    model = IntegerModel((add,))
    check(model, batch=3)
    assert skip_fifo_depths(model.layers, model.edges) == {(0, 1): 2}


@pytest.mark.parametrize("encoding", ["binary", "ternary", "pow2"])
def test_small_cnn_end_to_end(encoding):
    model = cnn(np.random.default_rng(5), image=(8, 8, 1), channels=(3, 4), encoding=encoding)
    check(model, batch=3, seed=1)


def test_balanced_folds_keep_the_unrolled_image_rate():
    model = cnn(np.random.default_rng(5), image=(8, 8, 1), channels=(3, 4), encoding="ternary")
    cfgs = balanced_configs(model)
    # the first conv reads 10 x 10 padded pixels per image: every layer keeps up with that
    assert max(image_clocks(c) for c in cfgs) == 100
    assert [(c.layer.kind, c.architecture, c.pe, c.simd) for c in cfgs] == [
        ("conv", "unrolled", None, None), ("maxpool", "unrolled", None, None),
        ("conv", "folded", 2, 9), ("maxpool", "unrolled", None, None),
        ("flatten", "unrolled", None, None), ("dense", "folded", 2, 1)]
    check(model, target=Network(cfgs))


@pytest.mark.parametrize("encoding", ["pow2", Pow2(0, 3, zero=False)])
def test_resnet1d_end_to_end_with_skip_fifos(encoding):
    model = resnet1d(np.random.default_rng(6), length=16, channels=3, encoding=encoding)
    depths = skip_fifo_depths(model.layers, model.edges)
    # add1 (layer 3) joins two k3 pad-1 convs with the stem output: they lag it by 2 pixels
    assert depths[(3, 1)] == 2 + 2
    assert set(depths) == {(3, 1), (7, 1)}
    for seed, (stall, bubble) in enumerate([(0.0, 0.0), (0.5, 0.1), (0.1, 0.5), (0.7, 0.7)]):
        check(model, batch=2, seed=seed, stall=stall, bubble=bubble)


def test_2d_residual_block_end_to_end():
    rng = np.random.default_rng(7)
    act = InputFormat.int(3)
    stem = random_conv(rng, (6, 6, 1), 2, 3, "pow2", InputFormat.int(4), "requant",
                       padding=1, requant_bits=3, name="stem")
    a = random_conv(rng, stem.out_shape, 2, 3, "ternary", act, "requant", padding=1,
                    requant_bits=3, name="a")
    add = Add(act, act, a.out_shape, "stem", 0, 1, Requant(np.ones(2, dtype=np.int64), 1, 3),
              name="add")
    model = IntegerModel((stem, a, add))
    check(model, batch=2, stall=0.5, bubble=0.3)
    # a 3x3 pad-1 conv on 6 columns lags its input by a row and a pixel
    assert skip_fifo_depths(model.layers, model.edges)[(2, 1)] == 6 + 1 + 2


def test_2d_downsampling_block_with_a_projection():
    """Both branches of the join are convolutions (a stride-2 pair and a stride-2 1x1
    projection): the FIFO sits on the branch that runs ahead."""
    rng = np.random.default_rng(16)
    act = InputFormat.int(3)

    def conv(shape, c, k, name, stride=1, padding=1, source="", fmt=act, enc="ternary"):
        return random_conv(rng, shape, c, k, enc, fmt, "requant", stride=stride,
                           padding=padding, requant_bits=3, name=name, source=source)

    stem = conv((7, 6, 1), 2, 3, "stem", fmt=InputFormat.int(4), enc="pow2")
    b1 = conv(stem.out_shape, 3, 3, "b1", stride=2)
    b2 = conv(b1.out_shape, 3, 3, "b2")
    proj = conv(stem.out_shape, 3, 1, "proj", stride=2, padding=0, source="stem", enc="pow2")
    add = Add(act, act, b2.out_shape, "proj", 0, 0, Requant(np.ones(3, dtype=np.int64), 1, 3),
              name="add", source="b2")
    model = IntegerModel((stem, b1, b2, proj, add))
    assert skip_fifo_depths(model.layers, model.edges) == {(4, 1): 8}
    for seed, (stall, bubble) in enumerate([(0.8, 0.0), (0.0, 0.8), (0.6, 0.6)]):
        check(model, batch=2, seed=seed, stall=stall, bubble=bubble)


def test_narrow_pixels_into_a_wider_input_are_resized():
    rng = np.random.default_rng(17)
    a = random_conv(rng, (5, 4, 2), 3, 3, "ternary", InputFormat.int(3), "threshold",
                    thresholds=3, padding=1)
    b = random_conv(rng, a.out_shape, 2, 3, "pow2", InputFormat.int(4, signed=True), "none",
                    padding=1)
    assert a.out_format.bits == 2 and b.input.bits == 4
    check(IntegerModel((a, b)), batch=2)


def test_out_counts_of_a_padded_conv():
    rng = np.random.default_rng(8)
    layer = random_conv(rng, (3, 3, 1), 1, 3, "ternary", padding=1)
    f = out_counts(layer)
    # output (0, 0) needs input pixel (1, 1), the 5th; (0, 2) only the 6th (its right column
    # is padding); the bottom row of outputs reads padding below the 9th
    assert f.tolist() == [0, 0, 0, 0, 0, 1, 3, 3, 4, 9]


def test_undersized_skip_fifo_deadlocks(monkeypatch):
    """The sizing rule matters: one payload of FIFO on the identity skip of a block whose
    branch lags by a row deadlocks, which the watchdog reports."""
    rng = np.random.default_rng(9)
    act = InputFormat.int(3)
    a = random_conv(rng, (5, 6, 1), 1, 3, "ternary", act, "requant", padding=1,
                    requant_bits=3, name="a", source="input")
    add = Add(act, act, a.out_shape, "input", 0, 0, Requant(np.ones(1, dtype=np.int64), 1, 3))
    model = IntegerModel((a, add))
    assert skip_fifo_depths(model.layers, model.edges) == {(1, 1): 6 + 1 + 2}
    check(model, batch=2, stall=0.5, bubble=0.5)
    monkeypatch.setattr(Network, "skip_fifo_depths", lambda self: {(1, 1): 1})
    with pytest.raises(VerificationError, match="deadlock"):
        check(model, batch=1, stall=0.0, bubble=0.0)


def test_a_wrong_reference_fails():
    model = cnn(np.random.default_rng(10), image=(6, 6, 1), channels=(2,), encoding="ternary")
    got, want = check(model, batch=2)
    bad = want.copy()
    bad[1, 3] += 1
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, bad)


def test_a_configuration_that_cannot_be_built_is_one_line():
    rng = np.random.default_rng(11)
    layer = random_conv(rng, (5, 5, 2), 3, 3, "ternary", padding=1)
    with pytest.raises(ConfigError) as exc:
        kinds.configure(layer, fold=(2, 5))
    assert str(exc.value) == "simd must divide in_features (18), not 5"
    grouped = random_conv(rng, (5, 5, 2), 2, 3, Lut(tuple(range(1, 257))), InputFormat.int(2),
                          padding=1, groups=2)
    with pytest.raises(ConfigError, match="^a grouped conv with a 256-entry lut") as exc:
        kinds.configure(grouped)
    assert "\n" not in str(exc.value)


def test_conv_config_is_validated():
    layer = MaxPool(InputFormat.int(2), (4, 4, 1), 2)
    with pytest.raises(ConfigError, match="^a maxpool layer has no dense configuration"):
        ConvConfig(layer, kinds.configure(random_conv(np.random.default_rng(0), (4, 4, 1), 1, 3,
                                                      "ternary")).dense)
    with pytest.raises(ConfigError, match="^layer must be a conv, maxpool"):
        ConvConfig(object())


def test_random_inputs_of_an_image_model():
    model = cnn(np.random.default_rng(12), image=(6, 6, 1), channels=(2,), encoding="ternary")
    x, lengths = random_inputs(model, 5, seed=1)
    assert x.shape == (5, 36, 1) and lengths.tolist() == [36] * 5


def _cnn_design(tmp_path):
    from bitfab.hw.verilog import generate
    from bitfab.sim.verilog import Design
    model = cnn(np.random.default_rng(13), image=(6, 6, 1), channels=(2, 3), encoding="ternary")
    path = tmp_path / "cnn.bfm"
    model.save(path)
    facts = generate(model, tmp_path / "rtl", pipeline=1)
    return model, path, Design.from_sidecar(tmp_path / "rtl" / f"{facts['top']}.json")


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_small_cnn_on_the_cocotb_bench_and_a_wrong_reference_fails(tmp_path, tool, simulator):
    from bitfab.sim.verilog import run_bench
    if simulator == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    model, path, design = _cnn_design(tmp_path)
    x = random_inputs(model, 40, seed=2)[0]
    ok = run_bench(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=3)
    assert (ok.vectors, ok.mismatches, ok.first_mismatch) == (40, 0, None)
    np.testing.assert_array_equal(model.out_stream.values(ok.outputs),
                                  execute(model, x).output)
    bad = run_bench(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=3,
                    wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == 20


@pytest.mark.cocotb
def test_1d_conv_on_icarus(tmp_path, tool):
    """A 1-D conv padded on both sides: its first window is all padding, so its output flag
    is set before any counter moves (a constant lookup table there read X in Icarus)."""
    from bitfab.sim.run import simulate_model
    tool("iverilog", "Icarus is optional outside CI")
    layer = random_conv(np.random.default_rng(20), (9, 2), 3, 3, "pow2",
                        InputFormat.int(4, signed=True), "requant", padding=1)
    IntegerModel((layer,)).save(tmp_path / "c.bfm")
    r = simulate_model(tmp_path / "c.bfm", simulator="icarus", vectors=30, stall=0.3)
    assert (r.vectors, r.mismatches) == (30 * 9, 0)  # output pixels


@pytest.mark.cocotb
@pytest.mark.slow  # a second Verilator build (about a minute)
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_resnet1d_on_the_cocotb_bench_with_stalls(tmp_path, tool, simulator):
    """Fork, skip FIFOs and adds in the generated Verilog."""
    from bitfab.sim.run import simulate_model
    if simulator == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    model = resnet1d(np.random.default_rng(18), length=16, channels=3)
    model.save(tmp_path / "r.bfm")
    r = simulate_model(tmp_path / "r.bfm", simulator=simulator, vectors=100, stall=0.5)
    assert (r.vectors, r.mismatches) == (100, 0)
    # folded: the datapaths read their windows in place, the head the pool's accumulators
    r = simulate_model(tmp_path / "r.bfm", simulator=simulator, vectors=12, stall=0.5,
                       fold=(2, 3))
    assert (r.vectors, r.mismatches) == (12, 0)


@pytest.mark.cocotb
@pytest.mark.synth
@pytest.mark.slow  # yosys on the whole CNN: about 3 minutes on two shared cores
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_small_cnn_netlist_is_bit_exact(tmp_path, family):
    from bitfab.sim.verilog import run_bench
    model, path, design = _cnn_design(tmp_path)
    x = random_inputs(model, 20, seed=2)[0]
    r = run_bench(design, path, x, simulator="verilator", netlist=family, p_bubble=0.3,
                  p_stall=0.3, seed=3)
    assert (r.netlist, r.vectors, r.mismatches) == (family, 20, 0)
    bad = run_bench(design, path, x, simulator="verilator", netlist=family, seed=3,
                    wrong_reference=True)
    assert bad.mismatches == 1


def test_bitfab_sim_amaranth_on_image_models(tmp_path):
    from bitfab.sim.run import simulate_model
    resnet = resnet1d(np.random.default_rng(14), length=12, channels=2)
    resnet.save(tmp_path / "r.bfm")
    r = simulate_model(tmp_path / "r.bfm", simulator="amaranth", vectors=12, stall=0.3)
    assert (r.vectors, r.mismatches) == (12, 0)
    small = cnn(np.random.default_rng(15), image=(6, 6, 1), channels=(2,), encoding="pow2")
    small.save(tmp_path / "c.bfm")
    r = simulate_model(tmp_path / "c.bfm", simulator="amaranth", vectors=6, stall=0.3,
                       fold=(2, 3))
    assert (r.vectors, r.mismatches) == (6, 0)


def test_network_latency_is_the_longest_path():
    """An add of the input and a 1x1 conv of it: the skip FIFO (2 clocks) is as long as the
    conv's window (2) plus its combinational datapath (0); with nothing stalling the first
    output arrives exactly the network's latency after the input that completes it."""
    from bitfab.sim.amaranth_sim import run_stream
    rng = np.random.default_rng(19)
    act = InputFormat.int(3)
    a = random_conv(rng, (2, 3, 1), 1, 1, "ternary", act, "none", name="a")
    add = Add(a.out_format, act, a.out_shape, "input", 0, 0, name="add")
    model = IntegerModel((a, add))
    net = Network(network_configs(model))
    assert net.latency == max(net.layers[0].latency, 2) + 1 == 3
    x = images(rng, model, 1)
    run = run_stream(net, model.in_stream.pack(x.reshape(1, 6, 1)))
    assert run.out_cycles[0] - run.in_cycles[0] == net.latency


@pytest.mark.parametrize("fold", [(1, 1), (2, 3)])
def test_folded_resnet_reads_held_vectors_in_place(fold):
    """Folded, every conv datapath reads its window register in place and the dense head the
    global pool's register through the one-pixel flatten (a wire): no input copies. Bit-exact
    with golden under stalls and bubbles, through both skip FIFOs."""
    from bitfab.hw.layer import FoldedDense
    model = resnet1d(np.random.default_rng(6), length=16, channels=3, encoding="pow2")
    net = Network(network_configs(model, fold=fold))
    convs = [comp for comp in net.layers if isinstance(comp, ConvLayer)]
    assert len(convs) == 6 and all(comp._dense.in_place for comp in convs)
    flatten, head = net.layers[-2:]
    assert (flatten.config.layer.kind, flatten.latency) == ("flatten", 0)
    assert isinstance(head, FoldedDense) and head.in_place
    for seed, (stall, bubble) in enumerate([(0.5, 0.3), (0.2, 0.7)]):
        check(model, batch=2, seed=seed, stall=stall, bubble=bubble, target=net)


def test_folded_conv_latency_counts_the_folds_on_the_window():
    """A folded conv whose datapath reads the window in place: its first output comes exactly
    ``latency`` clocks after the pixel that completes the first window."""
    from bitfab.sim.amaranth_sim import run_stream
    rng = np.random.default_rng(20)
    layer = random_conv(rng, (6, 2), 3, 3, "ternary", InputFormat.int(3), "requant")
    comp = kinds.build(kinds.configure(layer, fold=(1, 2)))
    dense = comp._dense
    assert dense.in_place and dense.initiation_interval == 3 * 3
    # a one-row kernel has no line buffer: the window register is the only stage before it
    assert comp._window.latency == 1
    assert comp.latency == 1 + dense.initiation_interval - 1 + dense.latency
    x = images(rng, IntegerModel((layer,)), 1)
    run = run_stream(comp, layer.in_stream.pack(x), outputs=4)
    # no padding: the third pixel completes the first window
    assert run.out_cycles[0] - run.in_cycles[2] == comp.latency


@pytest.mark.parametrize("width,depth", [(3, 2), (9, 4), (24, 3), (8, 1)])
def test_stream_fifo_keeps_order_under_stalls(width, depth):
    """The skip FIFO (payloads in a memory read through its synchronous port; block RAM from 32
    bits) gives every payload once, in order, under stalls and bubbles; a wrong reference
    fails."""
    from amaranth.hdl import unsigned

    from bitfab.hw.conv import StreamFifo
    from bitfab.sim.amaranth_sim import run_stream
    rng = np.random.default_rng(width * depth)
    words = rng.integers(0, 1 << width, size=40).tolist()
    for seed, (stall, bubble) in enumerate([(0.0, 0.0), (0.7, 0.1), (0.1, 0.7), (0.5, 0.5)]):
        got = run_stream(StreamFifo(unsigned(width), depth), words, stall=stall,
                         bubble=bubble, seed=seed).outputs
        np.testing.assert_array_equal(got, words)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, words[::-1])
    q = StreamFifo(unsigned(width), depth)
    run = run_stream(q, words[:3])
    assert run.out_cycles[0] - run.in_cycles[0] == q.latency
    assert q.block_ram == (depth > 1 and width * (depth - 1) >= 32)
