"""The IntegerModel and its .bfm file: round trips, and bad input that must be refused by name."""

import io
import json
import zipfile

import numpy as np
import pytest

from bitfab import (
    Binary,
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    Lut,
    Pow2,
    Requant,
    Ternary,
    Threshold,
)
from bitfab.errors import ModelFormatError
from bitfab.examples import ENCODINGS, random_dense
from bitfab.model import signed_bits


def assert_same_model(a: IntegerModel, b: IntegerModel):
    assert a.fingerprint() == b.fingerprint()
    assert (a.name, a.input_scale, a.output_scale, a.metadata) == \
        (b.name, b.input_scale, b.output_scale, b.metadata)
    assert sorted(a.extras) == sorted(b.extras)
    for key in a.extras:
        np.testing.assert_array_equal(a.extras[key], b.extras[key])
        assert a.extras[key].dtype == b.extras[key].dtype
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.weights, lb.weights)
        np.testing.assert_array_equal(la.bias, lb.bias)
        assert (la.encoding, la.input, la.acc_bits, la.name) == \
            (lb.encoding, lb.input, lb.acc_bits, lb.name)
        assert type(la.output) is type(lb.output)
        if isinstance(la.output, Threshold):
            np.testing.assert_array_equal(la.output.thresholds, lb.output.thresholds)
            np.testing.assert_array_equal(la.output.direction, lb.output.direction)
        if isinstance(la.output, Requant):
            np.testing.assert_array_equal(la.output.multiplier, lb.output.multiplier)
            assert (la.output.shift, la.output.bits, la.output.signed, la.output.rounding) == \
                (lb.output.shift, lb.output.bits, lb.output.signed, lb.output.rounding)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("output", ["none", "threshold", "requant"])
def test_round_trip_every_encoding(tmp_path, encoding, output):
    rng = np.random.default_rng(1)
    layer = random_dense(rng, 19, 6, encoding, None, output, thresholds=3, sparsity=0.25)
    model = IntegerModel((layer.replace(name="fc0"),), input_scale=1 / 255, output_scale=0.5,
                         metadata={"recipe": "test", "labels": ["a", "b"], "nested": {"x": 1}},
                         extras={"float_w": rng.standard_normal((6, 19)).astype(np.float32),
                                 "steps": np.arange(4)},
                         name="rt")
    path = tmp_path / "m.bfm"
    model.save(path)
    assert_same_model(model, IntegerModel.load(path))


def test_binary_weights_are_stored_as_bits(tmp_path):
    layer = Dense(np.where(np.arange(64 * 100).reshape(64, 100) % 3, 1, -1), Binary(),
                  InputFormat.bipolar())
    IntegerModel((layer,)).save(tmp_path / "b.bfm")
    with zipfile.ZipFile(tmp_path / "b.bfm") as zf:
        assert zf.getinfo("layers/0/weights.npy").file_size < 64 * 13 + 200


def test_widths_are_derived_from_the_data():
    w = np.array([[3, -4, 0], [-1, -1, -1]])
    layer = Dense(w, IntWeights(4), InputFormat.int(4, signed=True), bias=np.array([5, 0]))
    lo, hi = layer.acc_range
    # channel 0: x in [-8, 7]; 3x in [-24, 21], -4x in [-28, 32] -> [-52, 53] + 5
    np.testing.assert_array_equal(lo, [-47, -21])
    np.testing.assert_array_equal(hi, [58, 24])
    assert layer.acc_bits == layer.required_acc_bits == signed_bits(-47, 58) == 7
    assert layer.out_bits == 7 and layer.out_format.signed
    assert Dense(w, IntWeights(4), InputFormat.int(4, True), acc_bits=12).acc_bits == 12
    t = Threshold(np.array([[0, 1, 2], [0, 1, 2]]))
    assert layer.replace(output=t).out_bits == 2
    assert (signed_bits(-1, 0), signed_bits(0, 1), signed_bits(-128, 127), signed_bits(0, 128)) \
        == (1, 2, 8, 9)


def test_memory_and_sparsity():
    layer = Dense(np.array([[1, 0, -1, 0]] * 4), Ternary(), InputFormat.int(8))
    model = IntegerModel((layer,))
    assert layer.sparsity == 0.5
    assert model.weight_bits == 32 and model.fp32_bits == 512
    assert model.memory_reduction == 0.9375
    lut = Dense(np.array([[1, 4]]), Lut((1, 4, -2, 0)), InputFormat.int(8))
    assert lut.weight_bits == 2 * 2 + 4 * 4  # two 2-bit indices + a dictionary of 4 x int4


# --- bad in-memory models -------------------------------------------------------------------------

BIP = InputFormat.bipolar()


@pytest.mark.parametrize("make, match", [
    (lambda: Dense(np.array([[1, 3]]), Binary(), BIP), r"weights: value 3 is not binary"),
    (lambda: Dense(np.array([[1, 2]]), Ternary(), BIP), r"weights: value 2 is not ternary"),
    (lambda: Dense(np.array([[3]]), Pow2(0, 2), BIP), r"weights: value 3 is not 0 or \+-2\*\*e"),
    (lambda: Dense(np.array([[8]]), Pow2(0, 2), BIP), r"value 8 is not"),
    (lambda: Dense(np.array([[0]]), Pow2(0, 2, zero=False), BIP), r"value 0 is not \+-2\*\*e"),
    (lambda: Dense(np.array([[5]]), Lut((1, 2)), BIP), r"value 5 is not in the dictionary"),
    (lambda: Dense(np.array([[8]]), IntWeights(4), BIP), r"value 8 does not fit int4"),
    (lambda: Dense(np.array([1, 1]), Binary(), BIP), r"weights must have 2 dimension"),
    (lambda: Dense(np.zeros((2, 0)), Ternary(), BIP), r"weights must not be empty"),
    (lambda: Dense(np.array([[0.5]]), Ternary(), BIP), r"weights must hold integers"),
    (lambda: Dense(np.ones((2, 3)), Binary(), BIP, bias=np.ones(3)), r"bias must have shape"),
    (lambda: Dense(np.ones((2, 3)), Binary(), BIP, Threshold(np.ones((3, 1)))),
     r"output.thresholds must have shape \(2, T\)"),
    (lambda: Threshold(np.array([[3, 1]])), r"thresholds of channel 0 are not sorted"),
    (lambda: Threshold(np.array([[1, 3]]), np.array([-1])), r"not sorted in its direction \(-1\)"),
    (lambda: Threshold(np.ones((2, 1)), np.array([1, 0])), r"direction must hold only -1 and \+1"),
    (lambda: Dense(np.ones((2, 3)), Binary(), BIP, Requant(np.ones(3))),
     r"output.multiplier must have shape \(2,\)"),
    (lambda: Dense(np.ones((2, 3)), Binary(), BIP, acc_bits=2), r"acc_bits: declared 2 bits"),
    (lambda: Lut((1, 1)), r"dictionary entries must be distinct"),
    (lambda: Pow2(3, 1), r"e_min/e_max must satisfy"),
    (lambda: InputFormat.int(0), r"input.bits must be in 1..62, not 0"),
    (lambda: InputFormat.int(63, True), r"input.bits must be in 1..62, not 63"),
    (lambda: IntWeights(1), r"encoding.bits must be in 2..32"),
    (lambda: Requant(np.ones(2), shift=-1), r"output.shift must be in 0..62"),
    (lambda: Requant(np.ones(2), rounding="nearest"), r"rounding must be 'floor' or 'half_up'"),
    (lambda: Dense(np.full((1, 4), 1 << 30), IntWeights(32), InputFormat.int(32, True)),
     r"weights: the accumulator can reach about 2\^63, outside the 62-bit range"),
])
def test_bad_layers_are_refused_by_name(make, match):
    with pytest.raises(ModelFormatError, match=match):
        make()


def test_bad_networks_are_refused_by_name():
    a = Dense(np.ones((4, 3)), Binary(), BIP, Threshold(np.zeros((4, 1))))
    with pytest.raises(ModelFormatError, match=r"layers\[1\].weights: takes 5 inputs but"):
        IntegerModel((a, Dense(np.ones((2, 5)), Binary(), BIP)))
    wide = Dense(np.ones((4, 3)), Binary(), BIP, Threshold(np.zeros((4, 3))))
    with pytest.raises(ModelFormatError, match=r"layers\[1\].input: bipolar input needs a 1-bit"):
        IntegerModel((wide, Dense(np.ones((2, 4)), Binary(), BIP)))
    with pytest.raises(ModelFormatError, match=r"layers\[1\].input: uint1 cannot hold the uint2"):
        IntegerModel((wide, Dense(np.ones((2, 4)), Ternary(), InputFormat.int(1))))
    with pytest.raises(ModelFormatError, match=r"layers must not be empty"):
        IntegerModel(())
    with pytest.raises(ModelFormatError, match=r"input_scale must be a positive"):
        IntegerModel((a,), input_scale=0.0)
    with pytest.raises(ModelFormatError, match=r"metadata.x must be JSON data"):
        IntegerModel((a,), metadata={"x": object()})
    with pytest.raises(ModelFormatError, match=r"extras: name '../x'"):
        IntegerModel((a,), extras={"../x": np.zeros(2)})


def test_arrays_are_immutable_copies():
    w = np.array([[1, -1]])
    layer = Dense(w, Binary(), BIP)
    w[0, 0] = -1
    assert layer.weights[0, 0] == 1
    with pytest.raises(ValueError):
        layer.weights[0, 0] = 5


# --- bad files ------------------------------------------------------------------------------------


def small_model() -> IntegerModel:
    rng = np.random.default_rng(5)
    l0 = random_dense(rng, 12, 8, "binary", BIP, "threshold", thresholds=1)
    l1 = random_dense(rng, 8, 3, "ternary", BIP, "none")
    return IntegerModel((l0, l1), metadata={"recipe": "x"}, extras={"f": np.ones(3)}, name="s")


def rewrite(src, dst, edit_manifest=None, edit_entries=None):
    """Copy a .bfm zip, letting callbacks change the manifest dict and the other entries' bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "manifest.json" and edit_manifest:
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
            elif edit_entries:
                data = edit_entries(info.filename, data)
                if data is None:
                    continue
            zout.writestr(info.filename, data)


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def object_npy() -> bytes:
    """A .npy of dtype object (a pickle inside), which np.save refuses to write."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|O", "fortran_order": False, "shape": (3,)})
    return buf.getvalue() + b"\x80\x04" * 12


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.bfm"
    small_model().save(path)
    return path


def set_in(path, value):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (set_in(["version"], 99), r"manifest.version is 99; this bitfab reads versions 1..2"),
    (set_in(["format"], "onnx"), r"manifest.format must be 'bitfab-integer-model'"),
    (set_in(["layers"], []), r"manifest.layers must not be empty"),
    (set_in(["layers", 0, "in_features"], 20), r"layers\[0\].weights: array .* has shape"),
    (set_in(["layers", 1, "in_features"], 9), r"layers\[1\].weights: array .* has shape"),
    (set_in(["layers", 0, "out_features"], "8"), r"layers\[0\].out_features must be int"),
    (set_in(["layers", 1, "encoding", "kind"], "float"), r"layers\[1\].encoding.kind must be one"),
    (set_in(["layers", 0, "output", "count"], 2), r"layers\[0\].output.thresholds: .* shape"),
    (set_in(["layers", 0, "acc_bits"], 3), r"layers\[0\].acc_bits: declared 3 bits"),
    (lambda m: m["layers"][0].update(in_features=10**6, out_features=10**6),
     r"layers\[0\]: a 1000000x1000000 layer is outside"),
    (set_in(["layers", 1, "input"], {"kind": "int", "bits": 1, "signed": True}),
     r"layers\[1\].input: int1 cannot hold the uint1 output of layers\[0\]"),
    (set_in(["layers", 1, "kind"], "conv3d"), r"layers\[1\].kind must be one of"),
    (set_in(["arrays", "layers/0/bias.npy", "shape"], [10**6, 10**6]),
     r"declares 1000000000000 elements, more than the limit"),
    (set_in(["arrays", "layers/0/bias.npy", "dtype"], "<f8"), r"has dtype .* manifest declares"),
    (set_in(["layers", 0, "bias"], "layers/9/bias.npy"), r"'layers/9/bias.npy' is not declared"),
])
def test_bad_manifests_name_the_field(good, tmp_path, edit, match):
    bad = tmp_path / "bad.bfm"
    rewrite(good, bad, edit_manifest=edit)
    with pytest.raises(ModelFormatError, match=match):
        IntegerModel.load(bad)


@pytest.mark.parametrize("edit, match", [
    (lambda n, d: npy(np.array([[5] * 3] * 3, dtype=np.int8)) if n == "layers/1/weights.npy"
     else d, r"layers\[1\].weights: array .* has shape \(3, 3\)"),
    (lambda n, d: npy(np.full((3, 8), 2, dtype=np.int8)) if n == "layers/1/weights.npy" else d,
     r"layers\[1\].weights: value 2 is not ternary"),
    (lambda n, d: object_npy() if n == "extras/f.npy" else d, r"unsupported dtype '\|O'"),
    (lambda n, d: d[:-3] if n == "layers/0/bias.npy" else d, r"data bytes, its header needs"),
    (lambda n, d: b"garbage" * 10 if n == "layers/0/bias.npy" else d, r"is not a valid .npy"),
    (lambda n, d: None if n == "layers/0/bias.npy" else d, r"'layers/0/bias.npy' is missing"),
    (lambda n, d: d.replace(b"(8,)", b"(99999999999,)") if n == "layers/0/bias.npy" else d,
     r"has shape \(99999999999,\), the manifest declares \(8,\)"),
])
def test_bad_arrays_name_the_field(good, tmp_path, edit, match):
    bad = tmp_path / "bad.bfm"
    rewrite(good, bad, edit_entries=edit)
    with pytest.raises(ModelFormatError, match=match):
        IntegerModel.load(bad)


def test_not_a_model(tmp_path):
    with pytest.raises(ModelFormatError, match=r"no such model file"):
        IntegerModel.load(tmp_path / "missing.bfm")
    with pytest.raises(ModelFormatError, match=r"is a directory"):
        IntegerModel.load(tmp_path)
    (tmp_path / "text.bfm").write_text("hello")
    with pytest.raises(ModelFormatError, match=r"not a bitfab model \(not a readable zip"):
        IntegerModel.load(tmp_path / "text.bfm")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("README", "not ours")
    with pytest.raises(ModelFormatError, match=r"not a bitfab model \(no manifest.json\)"):
        IntegerModel.load(tmp_path / "other.zip")
    with zipfile.ZipFile(tmp_path / "json.zip", "w") as zf:
        zf.writestr("manifest.json", "{not json")
    with pytest.raises(ModelFormatError, match=r"manifest.json is not valid JSON"):
        IntegerModel.load(tmp_path / "json.zip")


def test_truncated_file(good, tmp_path):
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.bfm").write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            IntegerModel.load(tmp_path / "cut.bfm")


def test_entry_that_would_inflate_to_gigabytes_is_refused_before_reading(good, tmp_path):
    """A zip directory that claims 3 GB for one entry is refused from the directory alone."""
    data = bytearray(good.read_bytes())
    name = b"layers/0/bias.npy"
    at = data.find(b"PK\x01\x02" + bytes(24) [:0])
    while at >= 0:  # walk the central directory to the entry's record
        n = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + n] == name:
            data[at + 24:at + 28] = (3_000_000_000).to_bytes(4, "little")
            break
        at = data.find(b"PK\x01\x02", at + 4)
    assert at >= 0
    (tmp_path / "bomb.bfm").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"would inflate to 3000000000 bytes"):
        IntegerModel.load(tmp_path / "bomb.bfm")


def test_compression_ratio_bomb_is_refused(good, tmp_path):
    zeros = np.zeros(1 << 23, dtype=np.int8)  # 8 MiB that deflate squeezes ~1000:1

    def edit(manifest):
        manifest["extras"]["z"] = "extras/z.npy"
        manifest["arrays"]["extras/z.npy"] = {"dtype": "|i1", "shape": [1 << 23]}
    rewrite(good, tmp_path / "z.bfm", edit_manifest=edit)
    with zipfile.ZipFile(tmp_path / "z.bfm", "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("extras/z.npy", npy(zeros))
    # an honest 1000:1 entry loads (deflate cannot exceed ~1032:1) ...
    assert IntegerModel.load(tmp_path / "z.bfm").extras["z"].size == 1 << 23
    # ... one whose directory claims more than deflate can produce is refused
    data = bytearray((tmp_path / "z.bfm").read_bytes())
    at = data.rfind(b"PK\x01\x02")
    size = int.from_bytes(data[at + 24:at + 28], "little")
    data[at + 24:at + 28] = (size * 4).to_bytes(4, "little")
    (tmp_path / "z2.bfm").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"impossible compression ratio"):
        IntegerModel.load(tmp_path / "z2.bfm")


def test_fuzz_flipped_and_truncated_bytes_only_raise_model_format_error(good, tmp_path):
    data = good.read_bytes()
    rng = np.random.default_rng(2024)
    target = tmp_path / "fuzz.bfm"
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(600):
        buf = bytearray(data)
        mode = trial % 3
        if mode == 0:
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
        elif mode == 1:
            buf = buf[: int(rng.integers(len(buf)))]
        else:
            at = int(rng.integers(len(buf)))
            buf[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        target.write_bytes(bytes(buf))
        try:
            model = IntegerModel.load(target)
        except ModelFormatError:
            outcomes["refused"] += 1
        else:
            assert isinstance(model, IntegerModel)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 400, outcomes
