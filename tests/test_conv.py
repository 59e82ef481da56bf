"""The image kinds (bitfab.conv) and their golden model (bitfab.sim.conv).

The reference is torch's own convolution and pooling in float64 on integer values (exact: every
sum here is far below 2**53), laid out NCHW, so the golden model's channels-last windows, group
slicing, stride, asymmetric padding and pad value are checked against an independent
implementation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitfab.conv import Add, AvgPool, Conv, Flatten, MaxPool
from bitfab.errors import ModelFormatError, ModelRangeError
from bitfab.examples import ENCODINGS, cnn, random_conv, random_dense, resnet1d
from bitfab.model import Dense, InputFormat, IntegerModel, NoOutput, Requant, Threshold
from bitfab.sim.conv import conv_accumulate
from bitfab.sim.golden import execute, expected_rows, requant, stage_forward, threshold

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _inputs(rng, fmt: InputFormat, shape) -> np.ndarray:
    x = rng.integers(fmt.min_value, fmt.max_value + 1, size=shape)
    return np.where(x > 0, 1, -1) if fmt.kind == "bipolar" else x


def torch_conv(layer: Conv, x: np.ndarray, pad_value: int | None = None) -> np.ndarray:
    """The accumulators of ``layer`` by torch (NCHW float64); ``pad_value`` overrides the
    layer's (a deliberately wrong reference)."""
    pad_value = layer.pad_value if pad_value is None else pad_value
    dims = layer.dims
    t = torch.tensor(x.reshape((len(x),) + layer.in_shape), dtype=torch.float64)
    t = t.permute(0, dims + 1, *range(1, dims + 1))  # channels first
    pads = []
    for a, b in reversed(layer.padding):  # F.pad takes the last dimension first
        pads += [a, b]
    t = F.pad(t, pads, value=float(pad_value))
    w = torch.tensor(layer.weights, dtype=torch.float64).permute(0, dims + 1, *range(1, dims + 1))
    conv = F.conv1d if dims == 1 else F.conv2d
    acc = conv(t, w, torch.tensor(layer.bias, dtype=torch.float64), stride=layer.stride,
               groups=layer.groups)
    acc = acc.permute(0, *range(2, dims + 2), 1).reshape(len(x), -1, layer.out_channels)
    out = acc.numpy()
    assert np.all(out == np.round(out))
    return out.astype(np.int64)


CASES = [
    # (in_shape, out_channels, kernel, stride, padding, groups)
    ((9, 9, 3), 4, 3, 1, 1, 1),
    ((8, 7, 4), 6, (3, 2), (2, 1), ((1, 2), (0, 1)), 2),
    ((6, 6, 4), 4, 3, 1, 1, 4),        # depthwise
    ((12, 2), 5, 5, 2, 2, 1),          # 1-D, stride 2
    ((10, 6), 6, 3, 1, ((2, 0),), 3),  # 1-D causal padding, 3 groups
]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_equals_torch_for_every_encoding_and_geometry(encoding, case):
    rng = np.random.default_rng(case * 7 + len(encoding))
    shape, c_out, kernel, stride, padding, groups = CASES[case]
    enc = ENCODINGS[encoding]
    for fmt in (InputFormat.bipolar(), InputFormat.int(4), InputFormat.int(3, signed=True)):
        if fmt.kind == "bipolar" and encoding != "binary":
            continue
        layer = random_conv(rng, shape, c_out, kernel, enc, fmt, stride=stride, padding=padding,
                            groups=groups, sparsity=0.3)
        if fmt.kind == "int":
            layer = layer.replace(pad_value=fmt.max_value)  # a non-zero pad value
        x = _inputs(rng, fmt, (5, int(np.prod(shape))))
        np.testing.assert_array_equal(conv_accumulate(layer, x), torch_conv(layer, x))


def test_a_wrong_reference_fails_the_conv_check():
    """The check above catches a reference that pads with the wrong value."""
    rng = np.random.default_rng(1)
    layer = random_conv(rng, (6, 6, 2), 3, 3, "binary", InputFormat.bipolar(), padding=1)
    x = _inputs(rng, layer.input, (4, 72))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(conv_accumulate(layer, x),
                                      torch_conv(layer, x, pad_value=-layer.pad_value))


def test_conv_output_stages_apply_per_pixel_and_channel():
    rng = np.random.default_rng(2)
    layer = random_conv(rng, (7, 7, 2), 5, 3, "ternary", InputFormat.int(4), "threshold", 3,
                        padding=1)
    x = _inputs(rng, layer.input, (3, 98))
    trace = execute(IntegerModel((layer,)), x)
    acc = torch_conv(layer, x)
    np.testing.assert_array_equal(trace.accumulators[0], acc)
    want = threshold(acc.reshape(-1, 5), layer.output.thresholds, layer.output.direction)
    np.testing.assert_array_equal(trace.output, want.reshape(acc.shape))
    req = layer.replace(output=Requant(np.arange(1, 6), 4, 3, signed=True, rounding="half_up"))
    out = execute(IntegerModel((req,)), x).output
    np.testing.assert_array_equal(
        out, requant(acc, np.arange(1, 6), 4, -4, 3, 8).reshape(acc.shape))


@pytest.mark.parametrize("shape,kernel,stride", [((8, 8, 3), 2, None), ((9, 7, 2), (3, 2), (2, 1)),
                                                 ((12, 4), 3, 2), ((5, 5, 2), 5, None)])
def test_pooling_equals_torch(shape, kernel, stride):
    rng = np.random.default_rng(3)
    fmt = InputFormat.int(4, signed=True)
    x = rng.integers(-8, 8, size=(4, int(np.prod(shape))))
    dims = len(shape) - 1
    t = torch.tensor(x.reshape((4,) + shape), dtype=torch.float64)
    t = t.permute(0, dims + 1, *range(1, dims + 1))
    k = kernel if isinstance(kernel, tuple) else (kernel,) * dims
    s = k if stride is None else (stride if isinstance(stride, tuple) else (stride,) * dims)
    mp = (F.max_pool1d if dims == 1 else F.max_pool2d)(t, k, s)
    ap = (F.avg_pool1d if dims == 1 else F.avg_pool2d)(t, k, s) * int(np.prod(k))

    def flat(r):
        return np.round(r.permute(0, *range(2, dims + 2), 1).reshape(4, -1, shape[-1]).numpy()
                        ).astype(np.int64)

    maxpool = MaxPool(fmt, shape, kernel, stride)
    np.testing.assert_array_equal(execute(IntegerModel((maxpool,)), x).output, flat(mp))
    avg = AvgPool(fmt, shape, kernel, stride)
    np.testing.assert_array_equal(execute(IntegerModel((avg,)), x).output, flat(ap))
    assert avg.out_format.bits == avg.acc_bits  # the exact sum, signed
    divide = AvgPool(fmt, shape, kernel, stride, Requant(np.full(shape[-1], 1), 0, 8, True))
    np.testing.assert_array_equal(execute(IntegerModel((divide,)), x).output,
                                  np.clip(flat(ap), -128, 127))


def test_flatten_is_stream_order_and_add_aligns_by_shifts():
    rng = np.random.default_rng(4)
    fmt = InputFormat.int(3)
    x = rng.integers(0, 8, size=(3, 4, 5, 2))
    flat = execute(IntegerModel((Flatten(fmt, (4, 5, 2)),)), x)
    np.testing.assert_array_equal(flat.output, x.reshape(3, -1))
    # y = relu-ish requant of (a << 1) + b where a = conv(x) and b = x (the model input)
    conv = random_conv(rng, (4, 5, 2), 2, 3, "int", fmt, "requant", padding=1, requant_bits=3,
                       name="c")
    add = Add(fmt, fmt, (4, 5, 2), "input", 1, 0, Requant(np.array([3, 5]), 2, 4))
    model = IntegerModel((conv, add))
    trace = execute(model, x)
    a = stage_forward(conv.output, torch_conv(conv, x.reshape(3, -1)))
    want = requant((a << 1) + x.reshape(3, 20, 2), np.array([3, 5]), 2, 0, 15)
    np.testing.assert_array_equal(trace.output, want)
    assert model.edges == ((-1,), (0, -1))


def test_resnet_graph_routes_every_skip_edge():
    """The golden execution of a ResNet equals the same layers wired by hand."""
    rng = np.random.default_rng(5)
    model = resnet1d(rng, 16, 4, 5, "pow2")
    x = rng.integers(-8, 8, size=(6, 16))
    trace = execute(model, x)
    from bitfab.sim.golden import layer_golden

    def run(i, v):
        return layer_golden(model.layers[i])(model.layers[i], v)[0]

    stem = run(0, x.reshape(6, 16, 1))
    a2 = run(2, run(1, stem))
    add1 = run(3, (a2, stem))
    b2 = run(5, run(4, add1))
    proj = run(6, add1)
    add2 = run(7, (b2, proj))
    logits = run(10, run(9, run(8, add2)))
    np.testing.assert_array_equal(trace.output, logits)
    assert trace.out_lengths is None and logits.shape == (6, 5)


def test_a_layer_alone_reads_the_model_input_and_a_join_is_refused():
    """``single`` (``--layer N``) of a layer whose source is a skip edge reads its own input;
    an add has two inputs, so it has no model of its own, and says so."""
    rng = np.random.default_rng(6)
    model = resnet1d(rng, 16, 4, 5, "pow2")
    proj = model.single(6)  # the projection reads add1, not the previous layer
    assert model.layers[6].source and proj.layers[0].source == ""
    x = rng.integers(0, 8, size=(3, *proj.layers[0].in_shape))
    from bitfab.sim.golden import layer_golden
    np.testing.assert_array_equal(execute(proj, x).output.reshape(3, -1),
                                  layer_golden(model.layers[6])(model.layers[6], x)[0]
                                  .reshape(3, -1))
    with pytest.raises(ModelFormatError, match=r"layers\[3\] \(add\) joins 2 tensors"):
        model.single(3)


def test_a_cnn_round_trips_and_old_files_still_load(tmp_path):
    rng = np.random.default_rng(6)
    for model in (cnn(rng, encoding="binary"), cnn(rng, encoding="lut"), resnet1d(rng)):
        model.save(tmp_path / "m.bfm")
        back = IntegerModel.load(tmp_path / "m.bfm")
        assert back.fingerprint() == model.fingerprint()
        assert model.manifest()[0]["version"] == 2
        x = _inputs(rng, model.input, (4, int(np.prod(model.in_shape))))
        np.testing.assert_array_equal(execute(back, x).output, execute(model, x).output)
    # a dense model still writes version 1, which this bitfab (and older ones) read
    dense = IntegerModel((random_dense(rng, 6, 3, "ternary"),))
    assert dense.manifest()[0]["version"] == 1


def test_image_inputs_in_every_layout_and_a_clear_error_otherwise():
    rng = np.random.default_rng(7)
    model = cnn(rng, (6, 6, 2), (3,), 4, "binary")
    x = _inputs(rng, model.input, (3, 6, 6, 2))
    want = execute(model, x).output
    for layout in (x.reshape(3, -1), x.reshape(3, 36, 2)):
        np.testing.assert_array_equal(execute(model, layout).output, want)
    with pytest.raises(ModelRangeError, match=r"images must have shape \(batch, 6, 6, 2\), "
                                              r"\(batch, 36, 2\) or \(batch, 72\), not \(3, 71\)"):
        execute(model, x.reshape(3, -1)[:, :71])
    with pytest.raises(ModelRangeError, match="lengths must all be 36"):
        execute(model, x, np.array([36, 35, 36]))
    # the output stream of a conv is framed pixels: one row per output pixel
    conv = IntegerModel((model.layers[0],))
    rows = expected_rows(conv, x)
    assert rows.shape == (3 * 36, 3 + 1) and rows[35, -1] == 1 and rows[34, -1] == 0


BIP, I4 = InputFormat.bipolar(), InputFormat.int(4)


@pytest.mark.parametrize("build,match", [
    (lambda: Conv(np.ones((4, 3, 3, 2)), ENCODINGS["int"], I4, (8, 8, 3)),
     r"weights: 3 input channels in 1 group\(s\) need shape \(out, \*kernel, 3\)"),
    (lambda: Conv(np.ones((4, 3, 3, 2)), ENCODINGS["int"], I4, (8, 8, 4), groups=3),
     r"groups: 3 must divide the 4 input and 4 output channels"),
    (lambda: Conv(np.ones((4, 5, 5, 3)), ENCODINGS["int"], I4, (3, 3, 3)),
     r"give an empty output from \(3, 3\) with kernel \(5, 5\)"),
    (lambda: Conv(np.ones((4, 3, 3, 3)), ENCODINGS["int"], I4, (8, 8, 3), padding=3),
     r"padding \(3, 3\) of dimension 0 must be smaller than the kernel \(3\)"),
    (lambda: Conv(np.ones((4, 3, 3, 3)), ENCODINGS["binary"], BIP, (8, 8, 3), padding=1),
     r"pad_value: a bipolar input has no 0"),
    (lambda: Conv(np.ones((4, 3, 3, 3)), ENCODINGS["int"], I4, (8, 8, 3), pad_value=16),
     r"pad_value 16 is not a value of the input format uint4"),
    (lambda: Conv(np.ones((4, 3, 3, 3)), ENCODINGS["int"], I4, (8, 8, 3), stride=0),
     r"stride must be 2 integer\(s\) >= 1"),
    (lambda: Conv(np.ones((4, 3, 3)), ENCODINGS["int"], I4, (24,)),
     r"in_shape must be an image \(L, C\) or \(H, W, C\)"),
    (lambda: MaxPool(BIP, (4, 4, 2)), r"input: a maxpool carries the codes of its input"),
    (lambda: AvgPool(I4, (4, 4, 2), 5), r"kernel \(5, 5\) is larger than the image \(4, 4\)"),
    (lambda: AvgPool(I4, (4, 4, 2), 2, output=Threshold(np.zeros((3, 1)))),
     r"output.thresholds must have shape \(2, T\) for 2 channels"),
    (lambda: Add(I4, I4, (4, 2), "", 0, 0), r"skip must name the earlier layer"),
    (lambda: Add(I4, I4, (4, 2), "x", 40, 0), r"shift and skip_shift must be in 0..32"),
])
def test_bad_layers_are_refused_naming_the_field(build, match):
    with pytest.raises(ModelFormatError, match=match):
        build()


def _conv(name="", source="", shape=(6, 6, 2), c=2):
    return random_conv(np.random.default_rng(8), shape, c, 3, "int", InputFormat.int(2),
                       "requant", padding=1, requant_bits=2, name=name, source=source)


@pytest.mark.parametrize("layers,match", [
    (lambda: (_conv("a"), Add(InputFormat.int(2), InputFormat.int(2), (6, 6, 3), "a")),
     r"layers\[1\].shape: reads shape \(6, 6, 3\) but layers\[0\] gives \(6, 6, 2\)"),
    (lambda: (_conv("a"), _conv("b"), Add(InputFormat.int(2), InputFormat.int(2), (6, 6, 2),
                                          "c")),
     r"layers\[2\].skip: no earlier layer is named 'c'"),
    (lambda: (_conv("a", source="b"), _conv("b")),
     r"layers\[0\].source: no earlier layer is named 'b'"),
    (lambda: (_conv("a"), _conv("a"), Add(InputFormat.int(2), InputFormat.int(2), (6, 6, 2),
                                          "a")),
     r"layers\[2\].skip: more than one layer is named 'a'"),
    (lambda: (_conv("a"), _conv("b"), _conv("c", source="a")),
     r"layers\[1\]: its output is read by no layer \(a dangling tensor\)"),
    (lambda: (_conv("a"), Dense(np.ones((3, 72)), ENCODINGS["int"], InputFormat.int(2))),
     r"reads shape \(72,\) but layers\[0\] gives \(6, 6, 2\) \(a flatten layer turns an image"),
    (lambda: (_conv("a"), Add(InputFormat.int(2), InputFormat.int(1), (6, 6, 2), "a")),
     r"layers\[1\].skip_input: uint1 cannot hold the uint2 output of layers\[0\]"),
])
def test_bad_graphs_are_refused_naming_the_layer(layers, match):
    with pytest.raises(ModelFormatError, match=match):
        IntegerModel(layers())


def test_info_describes_a_cnn_and_hardware_says_what_it_builds(tmp_path, capsys):
    from conftest import bitfab_cli
    model = resnet1d(np.random.default_rng(9))
    model.save(tmp_path / "r.bfm")
    code, out, err = bitfab_cli(capsys, "info", tmp_path / "r.bfm")
    assert code == 0 and "resnet1d" in out, err
    code, out, err = bitfab_cli(capsys, "info", tmp_path / "r.bfm", "--json")
    facts = json.loads(out)
    assert facts["in_shape"] == [16, 1] and facts["out_shape"] == [4]
    add2 = facts["layers"][7]
    assert (add2["kind"], add2["sources"], add2["in_shape"]) == ("add", [5, 6], [8, 8])
    assert facts["weights"] == sum(la.weight_count for la in model.layers)
    code, out, err = bitfab_cli(capsys, "verilog", tmp_path / "r.bfm", "--out", tmp_path / "v")
    assert code == 0, err  # the image kinds have hardware (bitfab.hw.conv)
    sidecar = json.loads(next((tmp_path / "v").glob("*.json")).read_text())
    assert [la["kind"] for la in sidecar["layers"]] == [la.kind for la in model.layers]
    assert sidecar["layers"][0]["config"]["line_buffer_bits"] == 0  # 1-D: no rows to keep


def test_stage_free_layers_keep_their_values():
    """Pools and flatten carry codes: a maxpool of 0/1 threshold outputs is their OR."""
    x = np.array([[0, 1, 0, 0], [0, 0, 0, 0]])
    pool = MaxPool(InputFormat.int(1), (4, 1), 2)
    np.testing.assert_array_equal(execute(IntegerModel((pool,)), x).output[..., 0],
                                  [[1, 0], [0, 0]])
    assert isinstance(pool.output, NoOutput) and pool.out_format == InputFormat.int(1)
