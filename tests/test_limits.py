"""The limits of docs/limits.md: accumulators within 62 bits (exact, refused by name), hostile
files refused within 512 MB of address space and never hanging, and the .bfm fuzzer."""

import gzip
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import bitfab_cli
from fuzz_models import run as fuzz

from bitfab import Dense, InputFormat, IntegerModel, IntWeights, Requant, Ternary, Threshold
from bitfab.errors import ModelFormatError
from bitfab.formats import MAX_ACC_BITS, MAX_MODEL_ELEMENTS, StreamFormat
from bitfab.lstm import random_lstm

ROOT = Path(__file__).resolve().parents[1]
LIMIT = "outside the 62-bit range \\[-2\\^61, 2\\^61 - 1\\] that the golden model and the hardware"


def rewrite(src, dst, manifest=None, entries=None):
    """Copy a .bfm file, changing its manifest (a callback) and entries (name -> bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "manifest.json" and manifest:
                m = json.loads(data)
                manifest(m)
                data = json.dumps(m).encode()
            elif entries and info.filename in entries:
                data = entries[info.filename]
            zout.writestr(info.filename, data)


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# --- 1. accumulators: exact bounds, refused by name beyond 62 bits ------------------------------


def test_an_accumulator_beyond_int64_is_refused_by_name():
    # the true accumulator reaches 2^64: int64 sums wrapped to acc_bits 1 once
    with pytest.raises(ModelFormatError, match=f"^weights: the accumulator can reach about "
                                               f"2\\^64, {LIMIT} support$"):
        Dense(np.full((1, 4), -2 ** 31), IntWeights(32), InputFormat.int(32, True))


def test_the_accumulator_limit_is_exact():
    top = (1 << (MAX_ACC_BITS - 1)) - 1  # 2^61 - 1
    w = np.array([[1, 1, 1, 1]])
    fmt = InputFormat.int(4)  # x in 0..15: the weights add 0..60
    edge = Dense(w, Ternary(), fmt, bias=np.array([top - 60]))
    assert edge.acc_bits == MAX_ACC_BITS and int(edge.acc_range[1].max()) == top
    low = Dense(-w, Ternary(), fmt, bias=np.array([-top - 1 + 60]))
    assert low.acc_bits == MAX_ACC_BITS and int(low.acc_range[0].min()) == -top - 1
    with pytest.raises(ModelFormatError, match=f"^weights: the accumulator can reach "
                                               f"{top + 1}, {LIMIT}"):
        Dense(w, Ternary(), fmt, bias=np.array([top - 59]))
    with pytest.raises(ModelFormatError, match=f"^weights: the accumulator can reach "
                                               f"{-top - 2}, {LIMIT}"):
        Dense(-w, Ternary(), fmt, bias=np.array([-top - 1 + 59]))


@pytest.mark.parametrize("bias", [(1 << 63) - 1, -(1 << 63) + 1, -(1 << 63), 1 << 61])
def test_a_hand_edited_bias_is_refused_by_name(tmp_path, bias):
    layer = Dense(np.array([[1, -1, 0], [0, 1, 1]]), Ternary(), InputFormat.int(4))
    IntegerModel((layer,)).save(tmp_path / "good.bfm")

    def declare(m):
        m["arrays"]["layers/0/bias.npy"]["dtype"] = "<i8"
    rewrite(tmp_path / "good.bfm", tmp_path / "bad.bfm", declare,
            {"layers/0/bias.npy": npy(np.array([bias, 0], dtype=np.int64))})
    with pytest.raises(ModelFormatError, match=f"bad.bfm: layers\\[0\\].bias: value {bias} puts "
                                               f"the accumulator {LIMIT}"):
        IntegerModel.load(tmp_path / "bad.bfm")


def test_lstm_accumulators_are_refused_by_name(tmp_path):
    rng = np.random.default_rng(3)
    layer = random_lstm(rng, 3, 4)
    with pytest.raises(ModelFormatError, match=f"^bias: value {1 << 62} puts the accumulator "
                                               f"{LIMIT}"):
        layer.replace(bias=np.full(layer.bias.shape, 1 << 62))
    wide = np.full(layer.weights.shape, -2 ** 31)
    with pytest.raises(ModelFormatError, match=f"^weights \\(gates\\): the accumulator can "
                                               f"reach about 2\\^6\\d, {LIMIT}"):
        layer.replace(weights=wide, encoding=IntWeights(32), input=InputFormat.int(32, True))
    with pytest.raises(ModelFormatError, match=r"^input.bits must be in 1..32 \(an lstm's "
                                               r"input\), not 40"):
        layer.replace(input=InputFormat.int(40))
    IntegerModel((layer,)).save(tmp_path / "good.bfm")
    bias = np.zeros(layer.bias.shape, dtype=np.int64)
    bias[0, 2, 1] = (1 << 63) - 1

    def declare(m):
        m["arrays"]["layers/0/bias.npy"]["dtype"] = "<i8"
    rewrite(tmp_path / "good.bfm", tmp_path / "bad.bfm", declare,
            {"layers/0/bias.npy": npy(bias)})
    with pytest.raises(ModelFormatError, match=f"layers\\[0\\].bias: value {(1 << 63) - 1} "
                                               f"puts the accumulator {LIMIT}"):
        IntegerModel.load(tmp_path / "bad.bfm")


@pytest.mark.parametrize("make, match", [
    # np.abs(int64 min) is negative: these slipped past magnitude checks
    (lambda: Requant(np.array([-(1 << 63)])), r"^output.multiplier entries must fit 32 bits"),
    (lambda: Dense(np.array([[-(1 << 63)]]), Ternary(), InputFormat.int(1)),
     r"^weights: value -9223372036854775808 is not ternary"),
    # the difference of these thresholds wraps to a positive step
    (lambda: Threshold(np.array([[1 << 62, -(1 << 62) - 1]])),
     r"^output.thresholds of channel 0 are not sorted"),
])
def test_int64_extremes_are_refused_by_name(make, match):
    with pytest.raises(ModelFormatError, match=match):
        make()


def test_accumulators_wider_than_32_bits_are_an_output(tmp_path, capsys):
    """A last layer without an output stage emits its accumulators, up to 62 bits wide: the
    golden model, `bitfab info`, `bitfab verilog` and the hardware all take them."""
    from bitfab.sim.amaranth_sim import simulate
    from bitfab.sim.golden import execute
    rng = np.random.default_rng(4)
    layer = Dense(rng.integers(-2 ** 19, 2 ** 19, (3, 5)), IntWeights(20),
                  InputFormat.int(20, True), bias=rng.integers(-2 ** 40, 2 ** 40, 3))
    assert layer.acc_bits == 42 and layer.out_format == InputFormat.int(42, True)
    model = IntegerModel((layer,), name="wide")
    model.save(tmp_path / "wide.bfm")
    code, out, err = bitfab_cli(capsys, "info", tmp_path / "wide.bfm", "--json")
    assert code == 0 and json.loads(out)["layers"][0]["out_bits"] == 42, err
    code, out, err = bitfab_cli(capsys, "verilog", tmp_path / "wide.bfm", "--out",
                                tmp_path / "v", "--json")
    assert code == 0, err
    assert json.loads(out)["output"]["bits"] == 42
    x = rng.integers(-2 ** 19, 2 ** 19, (6, 5))
    x[0], x[1] = -2 ** 19, 2 ** 19 - 1
    np.testing.assert_array_equal(simulate(model, x), execute(model, x).output)
    # the widest values travel through a stream unchanged
    fmt = StreamFormat(InputFormat.int(MAX_ACC_BITS, True), 3)
    v = np.array([[-(1 << 61), (1 << 61) - 1, -1]])
    np.testing.assert_array_equal(fmt.unpack(fmt.pack(v)), v)


def test_json_numbers_of_any_size_are_refused_by_name(tmp_path):
    layer = Dense(np.array([[1, -1]]), Ternary(), InputFormat.int(4))
    with pytest.raises(ModelFormatError, match=r"^input_scale must be a positive finite number"):
        IntegerModel((layer,), input_scale=10 ** 400)
    with pytest.raises(ModelFormatError, match=r"^output_scale must be a finite number or None"):
        IntegerModel((layer,), output_scale=-(10 ** 400))
    IntegerModel((layer,)).save(tmp_path / "good.bfm")
    for key in ("input_scale", "output_scale"):
        rewrite(tmp_path / "good.bfm", tmp_path / "bad.bfm",
                lambda m, k=key: m.update({k: 10 ** 400}))
        with pytest.raises(ModelFormatError, match=f"bad.bfm: {key} must be a"):
            IntegerModel.load(tmp_path / "bad.bfm")


# --- 3. memory: a whole-file budget; hostile files refused within 512 MB ------------------------

_CHILD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
how, path = sys.argv[1], sys.argv[2]
if how == "info":
    from bitfab.cli import run
    run(["info", path])
    # VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's peak across exec)
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    print("peak", int(hwm.split()[1]))
else:
    from bitfab.errors import BitfabError
    try:
        if how == "load":
            from bitfab.model import IntegerModel
            IntegerModel.load(path)
        else:
            from bitfab.quant.data import read_idx
            read_idx(Path(path))
    except BitfabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
"""


def run_limited(how: str, path) -> subprocess.CompletedProcess:
    """Run ``bitfab info`` / ``IntegerModel.load`` / ``read_idx`` on ``path`` in a process
    limited to 512 MB of address space (and 60 s)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", _CHILD, how, str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _zip_of_zeros(path, manifest: dict, zeros: dict, small: dict | None = None) -> None:
    """Write a .bfm zip: ``manifest``, the ``small`` entries (name -> bytes), and for each
    ``zeros`` entry (name -> (dtype, shape)) an all-zero .npy streamed through deflate."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in (small or {}).items():
            zf.writestr(name, data)
        chunk = bytes(1 << 22)
        for name, (dtype, shape) in zeros.items():
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                head, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
            left = int(np.prod(shape)) * np.dtype(dtype).itemsize
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(head.getvalue())
                while left:
                    f.write(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))


def _extras_named_four_times(tmp_path, elements: int) -> Path:
    """A small model whose extras name one all-zero int8 entry four times."""
    layer = Dense(np.array([[1, -1], [0, 1]]), Ternary(), InputFormat.int(4))
    manifest, arrays = IntegerModel((layer,)).manifest()
    manifest["extras"] = {f"e{i}": "extras/big.npy" for i in range(4)}
    manifest["arrays"]["extras/big.npy"] = {"dtype": "|i1", "shape": [elements]}
    path = tmp_path / f"extras-{elements}.bfm"
    _zip_of_zeros(path, manifest, {"extras/big.npy": ("i1", (elements,))},
                  {name: npy(arr) for name, arr in arrays.items()})
    return path


def _zero_ternary_layer(tmp_path) -> Path:
    """An all-zero 16384 x 8192 ternary layer: 128 MiB of weights in a 128 KiB file."""
    manifest, _ = IntegerModel((Dense(np.zeros((2, 2)), Ternary(), InputFormat.int(8)),)) \
        .manifest()
    out, n = 16384, 8192
    manifest["layers"][0].update(in_features=n, out_features=out, acc_bits=1)
    manifest["arrays"] = {"layers/0/weights.npy": {"dtype": "|i1", "shape": [out, n]},
                          "layers/0/bias.npy": {"dtype": "|i1", "shape": [out]}}
    path = tmp_path / "zeros.bfm"
    _zip_of_zeros(path, manifest, {"layers/0/weights.npy": ("i1", (out, n)),
                                   "layers/0/bias.npy": ("i1", (out,))})
    return path


def _idx_bomb(tmp_path, shape) -> Path:
    """A 4 MB gzip IDX file that inflates to 4 GiB (256 gzip members of 16 MiB of zeros) behind
    a header that declares ``shape``."""
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    member = gzip.compress(bytes(1 << 24), 9)
    path = tmp_path / f"bomb-{'x'.join(map(str, shape))}-idx3-ubyte.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(header, 9))
        for _ in range(256):
            f.write(member)
    assert path.stat().st_size < 5 << 20
    return path


def _fifo(tmp_path) -> Path:
    os.mkfifo(tmp_path / "fifo.bfm")
    return tmp_path / "fifo.bfm"


@pytest.mark.parametrize("how, build, match", [
    ("info", lambda t: _extras_named_four_times(t, 1 << 27),
     r"extras.e0: array 'extras/big.npy' declares 134217728 elements, more than the limit"),
    ("load", lambda t: _extras_named_four_times(t, 1 << 23),
     r"extras.e1: the model holds more than 16777216 array elements, the limit of one model"),
    ("info", _zero_ternary_layer, r"layers\[0\]: a 16384x8192 layer is outside 1..16777216"),
    ("info", lambda t: Path("/dev/zero"), r"/dev/zero: is a device, not a regular file"),
    ("info", _fifo, r"fifo.bfm: is a FIFO, not a regular file"),
    ("load", lambda t: t, r"is a directory, not a model file"),
    ("idx", lambda t: _idx_bomb(t, (4096, 1024, 1024)),
     r"IDX header declares 4294967296 values \(4096, 1024, 1024\), more than the limit"),
    ("idx", lambda t: _idx_bomb(t, (10, 28, 28)),
     r"IDX header promises 7840 bytes of data, the file holds more"),
], ids=["extras-4x128MiB", "extras-4x8MiB", "zero-ternary-16384x8192", "dev-zero", "fifo",
        "directory", "idx-bomb", "idx-bomb-small-header"])
def test_hostile_files_are_refused_within_512_mb(tmp_path, how, build, match):
    path = build(tmp_path)
    res = run_limited(how, path)
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), \
        res.stderr[-2000:]
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.slow
def test_the_largest_legal_model_loads_within_512_mb(tmp_path):
    """A ternary layer that fills the whole-model budget: `bitfab info` stays near the 128 MiB
    its int64 weights take (peak RSS measured ~210 MB)."""
    rng = np.random.default_rng(0)
    out, n = MAX_MODEL_ELEMENTS // 4096 - 6, 4096  # weights + bias + 3 thresholds per channel
    layer = Dense(rng.integers(-1, 2, (out, n), dtype=np.int8), Ternary(), InputFormat.int(8),
                  Threshold(np.zeros((out, 3), dtype=np.int64)))
    IntegerModel((layer,)).save(tmp_path / "big.bfm")
    res = run_limited("info", tmp_path / "big.bfm")
    assert res.returncode == 0, res.stderr[-2000:]
    peak_mb = int(res.stdout.split("peak")[-1]) // 1024
    assert peak_mb < 320, peak_mb
    with pytest.raises(ModelFormatError, match=r"^the model holds \d+ array elements \(layers and "
                                               r"extras\), more than the limit 16777216"):
        IntegerModel((layer, Dense(np.ones((2, out)), Ternary(), InputFormat.int(2))))


def test_an_entry_named_four_times_counts_four_times(tmp_path):
    """The budget counts references: extras that name one entry 4 times are 4 arrays (just
    within the budget here; ``extras-4x8MiB`` above is over it)."""
    model = IntegerModel.load(_extras_named_four_times(tmp_path, (1 << 22) - 8))
    assert sorted(model.extras) == ["e0", "e1", "e2", "e3"]
    assert model.extras["e0"].dtype == np.int8  # extras keep their dtype: no widening


# --- the fuzzer -----------------------------------------------------------------------------------


def test_fuzzed_files_raise_only_model_format_error():
    """6000 seeded mutants of 13 models (every encoding and output stage, lstm): each is refused
    with a ModelFormatError, or loads and then describes, saves and runs."""
    counts, escapes = fuzz(6000, seed=0)
    assert not escapes, escapes[:10]
    assert counts["refused"] > 4000 and counts["loaded"] > 500, counts
