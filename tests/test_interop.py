"""QONNX interop: Brevitas-trained nets imported, golden == qonnx's execute_onnx (integer codes),
RTL == golden, bitfab's export round trip, bad input, and the checker's wrong reference."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from conftest import bitfab_cli
from qonnx.core.modelwrapper import ModelWrapper

from bitfab.model import IntegerModel
from bitfab.quant.data import load_dataset
from bitfab.quant.qonnx_export import to_qonnx
from bitfab.quant.qonnx_import import import_qonnx, load_onnx
from bitfab.sim import golden
from bitfab.sim.qonnx_check import compare_with_qonnx, qonnx_codes

pytestmark = [
    pytest.mark.train,
    # brevitas 0.13 at import: an optional accelerated kernel is missing (its pure-torch path is
    # used), and its export imports its own deprecated brevitas.fx module
    pytest.mark.filterwarnings("ignore:fast_hadamard_transform package not found:UserWarning"),
    pytest.mark.filterwarnings("ignore:brevitas.fx is deprecated:DeprecationWarning"),
]

DIGITS = load_dataset("digits", 0)
torch.set_num_threads(1)


def _brevitas():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fast_hadamard_transform", UserWarning)
        import brevitas.nn as qnn
        import brevitas.quant as bq
    return qnn, bq


def _net(kind: str):
    """A small Brevitas MLP 64-16-10 of one of the test kinds."""
    qnn, bq = _brevitas()
    torch.manual_seed(0)
    inp = qnn.QuantIdentity(act_quant=bq.Uint8ActPerTensorFixedPoint, bit_width=5,
                            return_quant_tensor=True)
    if kind == "binary":
        return torch.nn.Sequential(
            inp,
            qnn.QuantLinear(64, 32, bias=False, weight_quant=bq.SignedBinaryWeightPerTensorConst),
            torch.nn.BatchNorm1d(32),
            qnn.QuantIdentity(act_quant=bq.SignedBinaryActPerTensorConst,
                              return_quant_tensor=True),
            qnn.QuantLinear(32, 10, bias=False, weight_quant=bq.SignedBinaryWeightPerTensorConst))
    if kind == "ternary":  # 2-bit narrow-range weights {-1, 0, 1}, 3-bit ReLU, pow2 scales
        return torch.nn.Sequential(
            inp,
            qnn.QuantLinear(64, 16, bias=False, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                            weight_bit_width=2, weight_narrow_range=True),
            qnn.QuantReLU(act_quant=bq.Uint8ActPerTensorFixedPoint, bit_width=3,
                          return_quant_tensor=True),
            qnn.QuantLinear(16, 10, bias=False, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                            weight_bit_width=2, weight_narrow_range=True))
    if kind == "int4-pow2":  # 4-bit weights, 4-bit ReLU, power-of-two scales
        return torch.nn.Sequential(
            inp,
            qnn.QuantLinear(64, 16, bias=False, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                            weight_bit_width=4),
            qnn.QuantReLU(act_quant=bq.Uint8ActPerTensorFixedPoint, bit_width=4,
                          return_quant_tensor=True),
            qnn.QuantLinear(16, 10, bias=False, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                            weight_bit_width=4))
    assert kind == "float"  # per-channel float weight scales, float act scales, a float bias
    return torch.nn.Sequential(
        inp,
        qnn.QuantLinear(64, 16, bias=True, weight_quant=bq.Int8WeightPerChannelFloat,
                        weight_bit_width=4),
        qnn.QuantReLU(act_quant=bq.Uint8ActPerTensorFloat, bit_width=3,
                      return_quant_tensor=True),
        qnn.QuantLinear(16, 10, bias=False, weight_quant=bq.Int8WeightPerTensorFloat,
                        weight_bit_width=4),
        qnn.QuantIdentity(act_quant=bq.Int8ActPerTensorFloat, bit_width=8))


def _train(net, epochs: int = 3, image: bool = False):
    x = torch.as_tensor(DIGITS.x_train / 16.0, dtype=torch.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.as_tensor(DIGITS.y_train)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            out = net(x[idx])
            out = out.value if hasattr(out, "value") else out
            torch.nn.functional.cross_entropy(out, y[idx]).backward()
            opt.step()
    return net.eval()


def _export(net, path):
    from brevitas.export import export_qonnx
    export_qonnx(net, torch.zeros(1, 64), str(path))
    return path


@pytest.fixture(scope="module")
def brevitas_models(tmp_path_factory):
    """kind -> path of the exported QONNX file of a trained net."""
    folder = tmp_path_factory.mktemp("brevitas")
    return {k: _export(_train(_net(k)), folder / f"{k}.onnx")
            for k in ("binary", "ternary", "int4-pow2", "float")}


def _codes(model: IntegerModel) -> np.ndarray:
    """The digits test split as the input codes of ``model`` (its input quantizer, exactly)."""
    fmt = model.input
    return np.clip(np.round(DIGITS.x_test / 16.0 / model.input_scale), fmt.min_value,
                   fmt.max_value).astype(np.int64)


#: the encoding each kind's layers must get, detected from the integer weight codes
ENCODINGS = {"binary": ["binary", "binary"], "ternary": ["ternary", "ternary"],
             "int4-pow2": ["int", "int"], "float": ["int", "int"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "ternary", "int4-pow2", "float"])
def test_brevitas_net_golden_equals_qonnx(brevitas_models, kind):
    model = import_qonnx(brevitas_models[kind])
    assert [la.encoding.kind for la in model.layers] == ENCODINGS[kind]
    x = _codes(model)
    result = compare_with_qonnx(model, load_onnx(brevitas_models[kind]), x)
    print(kind, json.dumps(result.to_json()))
    assert result.samples == len(DIGITS.x_test)
    assert result.unexplained == [], result.details
    if kind != "float":
        # power-of-two scales (and a bipolar sign, whose boundary 0 is exact): no difference
        assert result.differing == []
        np.testing.assert_array_equal(
            qonnx_codes(model, load_onnx(brevitas_models[kind]), x),
            golden.execute(model, x).output)
    # the imported net still classifies digits
    accuracy = float(np.mean(golden.predict(model, x) == DIGITS.y_test))
    assert accuracy > 0.5, accuracy


@pytest.mark.slow
def test_brevitas_binary_net_is_bipolar_xnor(brevitas_models):
    model = import_qonnx(brevitas_models["binary"])
    assert model.layers[1].input.kind == "bipolar"
    assert model.layers[1].datapath == "xnor_popcount"
    assert model.layers[0].output.count == 1


@pytest.mark.slow
@pytest.mark.cocotb
def test_imported_net_rtl_equals_golden(brevitas_models, tmp_path):
    from bitfab.sim.run import random_inputs, simulate_model
    model = import_qonnx(brevitas_models["ternary"])
    path = tmp_path / "net.bfm"
    model.save(path)
    # the whole test split and random vectors (the first all-minimum and all-maximum): 500
    extra, _ = random_inputs(model, 500 - len(DIGITS.x_test), seed=3)
    x = np.concatenate([_codes(model), extra])
    r = simulate_model(path, simulator="verilator", inputs=x, stall=0.1)
    assert (r.vectors, r.mismatches) == (500, 0)


def test_checker_fails_on_a_wrong_reference():
    model = _trained("ternary")
    wrapper = ModelWrapper(to_qonnx(model))
    want = golden.execute(model, DIGITS.x_test).output.copy()
    assert compare_with_qonnx(model, wrapper, DIGITS.x_test, want).differing == []
    want[7, 3] += 1
    result = compare_with_qonnx(model, wrapper, DIGITS.x_test, want)
    assert result.differing == [7] and result.unexplained == [7] and result.boundary == []


def _one_weight_graph(s_w: np.float32, s_out: np.float32):
    """in (5-bit unsigned, scale 1/16) -> MatMul by one weight (code 1, scale ``s_w``) ->
    Quant (4-bit unsigned, scale ``s_out``): a QONNX graph written by hand."""
    from onnx import TensorProto, helper, numpy_helper
    f = np.float32
    inits = [numpy_helper.from_array(np.asarray(v, dtype=f), n) for n, v in (
        ("s_in", 1 / 16), ("zero", 0), ("b5", 5), ("b4", 4), ("w", [[s_w]]), ("s_w", s_w),
        ("s_out", s_out))]
    q = dict(domain="qonnx.custom_op.general", rounding_mode="ROUND", narrow=0)
    nodes = [helper.make_node("Quant", ["x", "s_in", "zero", "b5"], ["xq"], name="in_q",
                              signed=0, **q),
             helper.make_node("Quant", ["w", "s_w", "zero", "b4"], ["wq"], name="w_q",
                              signed=1, **q),
             helper.make_node("MatMul", ["xq", "wq"], ["y"], name="mm"),
             helper.make_node("Quant", ["y", "s_out", "zero", "b4"], ["out"], name="act",
                              signed=0, **q)]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 1])], inits)
    return ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_float_scale_boundary_case_is_counted_and_proven():
    """``s_w / s_out`` is just below 1.5 in exact arithmetic but 1.5 in float32, which rounds
    (half to even) to 2: at input 1.0 QONNX says 2, the exact quantizer (and bitfab) says 1."""
    s_w = np.float32(17 / 997)
    s_out = np.float32(s_w / np.float32(1.5))
    model = import_qonnx(_one_weight_graph(s_w, s_out))
    x = np.arange(32)[:, None]
    result = compare_with_qonnx(model, _one_weight_graph(s_w, s_out), x)
    assert 16 in result.differing
    assert result.boundary == result.differing and result.unexplained == []
    assert golden.execute(model, x).output[16, 0] == 1
    detail = next(d for d in result.details if d["row"] == 16)
    assert detail["node"] == "act" and detail["distance"] <= detail["float32_error"]
    # a wrong reference elsewhere is no boundary case: exact arithmetic disagrees with it
    want = golden.execute(model, x).output.copy()
    want[5, 0] += 1
    assert compare_with_qonnx(model, _one_weight_graph(s_w, s_out), x, want).unexplained == [5]


def _cnn():
    """A small Brevitas CNN on the 8x8 digits: conv 3x3 (ternary) -> ReLU 3-bit -> maxpool ->
    conv 3x3 (4-bit) -> ReLU 3-bit -> maxpool -> flatten -> linear (4-bit); power-of-two
    scales."""
    qnn, bq = _brevitas()
    torch.manual_seed(0)
    w, a = bq.Int8WeightPerTensorFixedPoint, bq.Uint8ActPerTensorFixedPoint
    return torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=a, bit_width=5, return_quant_tensor=True),
        qnn.QuantConv2d(1, 4, 3, padding=1, bias=False, weight_quant=w, weight_bit_width=2,
                        weight_narrow_range=True),
        qnn.QuantReLU(act_quant=a, bit_width=3, return_quant_tensor=True),
        torch.nn.MaxPool2d(2),
        qnn.QuantConv2d(4, 8, 3, padding=1, bias=False, weight_quant=w, weight_bit_width=4),
        qnn.QuantReLU(act_quant=a, bit_width=3, return_quant_tensor=True),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        qnn.QuantLinear(32, 10, bias=False, weight_quant=w, weight_bit_width=4))


@pytest.mark.slow
def test_brevitas_cnn_golden_equals_qonnx(tmp_path, capsys):
    """Conv / MaxPool / Flatten import to conv kinds: golden == QONNX on the test split, and
    the generated hardware (Amaranth sim, random stalls) == golden on some of it."""
    from brevitas.export import export_qonnx
    net = _train(_cnn(), epochs=2, image=True)
    export_qonnx(net, torch.zeros(1, 1, 8, 8), str(tmp_path / "cnn.onnx"))
    model = import_qonnx(tmp_path / "cnn.onnx")
    code, _, err = bitfab_cli(capsys, "import", tmp_path / "cnn.onnx", "--out",
                              tmp_path / "cnn.bfm")
    assert code == 0, err
    assert IntegerModel.load(tmp_path / "cnn.bfm").fingerprint() == model.fingerprint()
    err = _one_line_error(capsys, "export", tmp_path / "cnn.bfm", "--qonnx", tmp_path / "c.onnx")
    assert "conv" in err and not (tmp_path / "c.onnx").exists()
    assert [la.kind for la in model.layers] == ["conv", "maxpool", "conv", "maxpool", "flatten",
                                                "dense"]
    assert model.layers[0].encoding.kind == "ternary" and model.in_shape == (8, 8, 1)
    x = _codes(model)
    result = compare_with_qonnx(model, load_onnx(tmp_path / "cnn.onnx"), x)
    print("cnn", json.dumps(result.to_json()))
    assert result.differing == []
    np.testing.assert_array_equal(qonnx_codes(model, load_onnx(tmp_path / "cnn.onnx"), x),
                                  golden.execute(model, x).output)
    assert float(np.mean(golden.predict(model, x) == DIGITS.y_test)) > 0.5
    from bitfab.sim.amaranth_sim import simulate
    np.testing.assert_array_equal(simulate(model, x[:6], stall=0.3, bubble=0.3, seed=1),
                                  golden.execute(model, x[:6]).output)


def _finn_graph():
    """A FINN-streamlined-style graph: integer weights as plain constants, a per-channel ``Mul``
    (one channel negative: direction -1), float ``MultiThreshold`` thresholds with signed levels
    (``out_bias=-2``), then a second integer layer."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    f = np.float32
    scale = rng.choice([0.25, 0.5, 1.0, 2.0], 8) * rng.choice([-1, 1], 8, p=[0.25, 0.75])
    t = np.sort(rng.integers(-40, 40, (8, 3)) + rng.choice([0, 0.25, 0.5], (8, 3)), axis=1)
    inits = [numpy_helper.from_array(np.asarray(v, dtype=f), n) for n, v in (
        ("s_in", 0.5), ("zero", 0), ("b4", 4), ("w1", rng.integers(-3, 4, (12, 8))),
        ("mul", scale), ("t", t), ("w2", rng.integers(-7, 8, (8, 5))))]
    nodes = [helper.make_node("Quant", ["x", "s_in", "zero", "b4"], ["xq"], name="in_q",
                              domain="qonnx.custom_op.general", signed=0, narrow=0,
                              rounding_mode="ROUND"),
             helper.make_node("MatMul", ["xq", "w1"], ["a1"], name="mm1"),
             helper.make_node("Mul", ["a1", "mul"], ["m1"], name="bn_mul"),
             helper.make_node("MultiThreshold", ["m1", "t"], ["y1"], name="thr",
                              domain="qonnx.custom_op.general", out_dtype="INT2",
                              out_scale=1.0, out_bias=-2.0),
             helper.make_node("MatMul", ["y1", "w2"], ["out"], name="mm2")]
    graph = helper.make_graph(nodes, "finn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 12])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 5])], inits)
    return ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_finn_multithreshold_graph():
    model = import_qonnx(_finn_graph())
    assert model.layers[0].output.kind == "threshold"
    assert set(model.layers[0].output.direction.tolist()) == {-1, 1}
    assert model.layers[0].encoding.kind == "int"
    x = np.random.default_rng(4).integers(0, 16, (500, 12))
    result = compare_with_qonnx(model, _finn_graph(), x)
    assert result.differing == []
    np.testing.assert_array_equal(qonnx_codes(model, _finn_graph(), x),
                                  golden.execute(model, x).output)


# --- bitfab's own export ----------------------------------------------------------------------


_TRAINED: dict = {}


def _trained(recipe: str) -> IntegerModel:
    """The model of a short `bitfab train` run (kept in memory for the session)."""
    if recipe not in _TRAINED:
        from bitfab.quant.recipes import TrainConfig
        from bitfab.quant.train import export, fit
        _TRAINED[recipe] = export(fit(TrainConfig(recipe=recipe, hidden=(16,), epochs=2,
                                                  seed=0), DIGITS))
    return _TRAINED[recipe]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["binary", "ternary", "pow2", "int8"])
def test_bitfab_model_round_trip(recipe, tmp_path, capsys):
    src = tmp_path / "src.bfm"
    _trained(recipe).save(src)
    out = tmp_path / "net.onnx"
    code, _, err = bitfab_cli(capsys, "export", src, "--qonnx", out)
    assert code == 0, err
    model = IntegerModel.load(src)
    x = DIGITS.x_test
    np.testing.assert_array_equal(qonnx_codes(model, load_onnx(out), x),
                                  golden.execute(model, x).output)
    code, stdout, err = bitfab_cli(capsys, "import", out, "--out", tmp_path / "back.bfm",
                                   "--json")
    assert code == 0, err
    assert json.loads(stdout)["fingerprint"] == model.fingerprint()
    assert IntegerModel.load(tmp_path / "back.bfm").fingerprint() == model.fingerprint()


@pytest.mark.parametrize("encoding", ["binary", "ternary", "pow2", "lut", "int"])
def test_random_models_export_exactly(encoding):
    """Every encoding, threshold stages of both directions and a signed requant stage (written as
    its thresholds): execute_onnx == golden; what is not requant comes back identical."""
    from bitfab.examples import mlp, random_dense
    from bitfab.sim.run import random_inputs
    rng = np.random.default_rng(7)
    model = mlp(rng, (24, 12, 8, 5), encoding)
    x, _ = random_inputs(model, 400, seed=1)
    wrapper = ModelWrapper(to_qonnx(model))
    np.testing.assert_array_equal(qonnx_codes(model, wrapper, x), golden.execute(model, x).output)
    assert import_qonnx(ModelWrapper(to_qonnx(model))).fingerprint() == model.fingerprint()
    if encoding != "binary":
        last = model.layers[-1]
        head = random_dense(rng, last.in_features, 5, last.encoding, last.input, "requant")
        model = model.replace(layers=model.layers[:-1] + (head,))
        np.testing.assert_array_equal(qonnx_codes(model, ModelWrapper(to_qonnx(model)), x),
                                      golden.execute(model, x).output)


# --- bad input --------------------------------------------------------------------------------


def _one_line_error(capsys, *args) -> str:
    code, out, err = bitfab_cli(capsys, *args)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _ternary_onnx(tmp_path):
    path = tmp_path / "ok.onnx"
    path.write_bytes(to_qonnx(_trained("ternary")).SerializeToString())
    return path


def test_not_onnx_and_truncated(tmp_path, capsys):
    (tmp_path / "a.onnx").write_text("this is no model\n")
    err = _one_line_error(capsys, "import", tmp_path / "a.onnx", "--out", tmp_path / "a.bfm")
    assert "not an ONNX model" in err
    good = _ternary_onnx(tmp_path).read_bytes()
    (tmp_path / "t.onnx").write_bytes(good[: len(good) // 2])
    err = _one_line_error(capsys, "import", tmp_path / "t.onnx", "--out", tmp_path / "t.bfm")
    assert "not an ONNX model" in err
    assert not (tmp_path / "a.bfm").exists() and not (tmp_path / "t.bfm").exists()


def _edit(tmp_path, change) -> str:
    proto = onnx.load(str(_ternary_onnx(tmp_path)))
    change(proto)
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_unsupported_op_names_node_op_and_what_is_supported(tmp_path, capsys):
    def tanh(proto):
        node = next(n for n in proto.graph.node if n.op_type == "MatMul")
        old = node.output[0]
        node.output[0] = old + "_pre"
        proto.graph.node.insert(list(proto.graph.node).index(node) + 1,
                                onnx.helper.make_node("Tanh", [old + "_pre"], [old],
                                                      name="squash"))
    err = _one_line_error(capsys, "import", _edit(tmp_path, tanh), "--out", tmp_path / "x.bfm")
    assert "'squash' (Tanh)" in err and "MultiThreshold" in err and "Gemm/MatMul" in err
    assert not (tmp_path / "x.bfm").exists()


def test_non_integer_zero_point(tmp_path, capsys):
    def zp(proto):
        for init in proto.graph.initializer:
            if init.name == "zero":
                init.CopyFrom(onnx.numpy_helper.from_array(np.float32(0.5), "zero"))
    err = _one_line_error(capsys, "import", _edit(tmp_path, zp), "--out", tmp_path / "x.bfm")
    assert "zero point" in err and "(Quant)" in err and "not an integer" in err


def test_dynamic_shape(tmp_path, capsys):
    def dynamic(proto):
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    err = _one_line_error(capsys, "import", _edit(tmp_path, dynamic), "--out", tmp_path / "x.bfm")
    assert "dynamic shape" in err and "global_in" in err


def test_float_onnx_without_quantizers(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    path = tmp_path / "float.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    err = _one_line_error(capsys, "import", path, "--out", tmp_path / "x.bfm")
    assert "'mm' (MatMul)" in err and "Quant or BipolarQuant" in err
    err = _one_line_error(capsys, "import", tmp_path / "missing.onnx", "--out", tmp_path / "x.bfm")
    assert "cannot read" in err
    assert not (tmp_path / "x.bfm").exists()


def test_export_of_an_lstm_model(tmp_path, capsys):
    from bitfab.lstm import random_lstm
    path = tmp_path / "lstm.bfm"
    IntegerModel((random_lstm(np.random.default_rng(4), 3, 4, returns="last"),), 0.5).save(path)
    err = _one_line_error(capsys, "export", path, "--qonnx", tmp_path / "x.onnx")
    assert "lstm" in err and "QONNX export covers dense" in err
    assert not (tmp_path / "x.onnx").exists()


def test_missing_extra_is_named(tmp_path):
    """Without the interop extra (onnx made unimportable in a fresh interpreter), one line
    names the extra."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None; from bitfab.cli import run; "
            "run(['import', 'm.onnx', '--out', 'm.bfm'])")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'bitfab[interop]'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "m.bfm").exists()


@pytest.mark.parametrize("module", ["bitfab.quant.qonnx_import", "bitfab.quant.qonnx_export"])
def test_doctests(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
