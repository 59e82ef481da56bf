"""The golden model against a deliberately naive pure-Python reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitfab import Dense, InputFormat, IntegerModel, NoOutput, Requant, Threshold
from bitfab.errors import ModelRangeError
from bitfab.examples import ENCODINGS, mlp, random_dense
from bitfab.sim import golden


def naive_matmul(x, w):
    """acc[b][o] = sum_i w[o][i] * x[b][i], with Python ints and nested loops."""
    return [[sum(int(w[o][i]) * int(x[b][i]) for i in range(len(w[o]))) for o in range(len(w))]
            for b in range(len(x))]


def naive_threshold(acc, t, d):
    return [[sum(1 for tt in t[o] if (acc[b][o] >= tt if d[o] > 0 else acc[b][o] <= tt))
             for o in range(len(t))] for b in range(len(acc))]


def naive_requant(acc, m, shift, lo, hi, offset):
    return [[min(max((acc[b][o] * int(m[o]) + offset) >> shift, lo), hi)
             for o in range(len(m))] for b in range(len(acc))]


shapes = st.tuples(st.integers(1, 6), st.integers(1, 150), st.integers(1, 9))  # batch, n, out


@given(shapes, st.integers(0, 2**32 - 1))
def test_xnor_popcount_matches_naive_and_identity(shape, seed):
    batch, n, out = shape
    rng = np.random.default_rng(seed)
    x = rng.choice([-1, 1], size=(batch, n))
    w = rng.choice([-1, 1], size=(out, n))
    acc = golden.xnor_popcount_matmul(golden.pack_bits(x > 0), golden.pack_bits(w > 0), n)
    np.testing.assert_array_equal(acc, naive_matmul(x, w))
    # the bipolar identity: acc = 2 * popcount(xnor(w, x)) - N
    xnor = (x[:, None, :] > 0) == (w[None, :, :] > 0)
    np.testing.assert_array_equal(acc, 2 * xnor.sum(axis=2) - n)


@given(shapes, st.integers(0, 2**32 - 1), st.sampled_from([1, 4, 8, 16]))
def test_ternary_shift_add_lut_int_match_naive(shape, seed, xbits):
    batch, n, out = shape
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << (xbits - 1)), 1 << (xbits - 1), size=(batch, n))
    t = rng.integers(-1, 2, size=(out, n))
    np.testing.assert_array_equal(golden.ternary_matmul(x, t), naive_matmul(x, t))
    sign = rng.integers(-1, 2, size=(out, n))
    exp = rng.integers(0, 9, size=(out, n))
    np.testing.assert_array_equal(golden.shift_add_matmul(x, sign, exp),
                                  naive_matmul(x, sign * (1 << exp)))
    d = [-7, 0, 3, 12]
    idx = rng.integers(0, len(d), size=(out, n))
    np.testing.assert_array_equal(golden.lut_matmul(x, idx, d),
                                  naive_matmul(x, np.array(d)[idx]))
    wi = rng.integers(-128, 128, size=(out, n))
    np.testing.assert_array_equal(golden.int_matmul(x, wi), naive_matmul(x, wi))


def test_exact_matmul_is_exact_at_every_float_boundary():
    # sums just above 2**24 and 2**53 must not be rounded: the float path is chosen by the bound
    for big in (2**23 + 1, 2**24 + 1, 2**52 + 3, 2**60 + 1):
        x = np.array([[big, 1, 1]], dtype=np.int64)
        w = np.array([[1, 1, 1], [1, -1, 1]], dtype=np.int64)
        np.testing.assert_array_equal(golden.exact_matmul(x, w), naive_matmul(x, w))


def test_exact_matmul_takes_the_int64_fallback_beyond_the_float64_bound():
    assert golden.exact_plan(1, 2**24 - 1, 1, 3)[:2] == (np.float32, 1)
    assert golden.exact_plan(1, 2**24, 1, 3)[:2] == (np.float64, 1)
    assert golden.exact_plan(2**26, 2**27 - 1, 1, 3)[:2] == (np.float64, 1)
    assert golden.exact_plan(2**26, 2**27, 1, 3)[0] is None
    x = np.array([[2**60 + 1, 3]], dtype=np.int64)
    np.testing.assert_array_equal(golden.exact_matmul(x, [[1, 1]]), [[2**60 + 4]])


def _edge_case(x_value, row):
    """Inputs of 128 and two outputs +-``x_value * sum(row)`` (the largest sums the bound
    allows), plus random inputs within the same bound."""
    n = 128
    w = np.zeros((2, n), dtype=np.int64)
    w[0, :len(row)], w[1, :len(row)] = row, [-v for v in row]
    rng = np.random.default_rng(len(row))
    x = np.vstack([np.full(n, x_value), -np.full(n, x_value),
                   rng.integers(-x_value, x_value + 1, size=(5, n))])
    return x, w


def test_two_outputs_per_float32_column_exactly_up_to_the_bound():
    # S = 23 * 89 = 2047: T = 4096 >= 2S + 2 and S * (1 + T) < 2**24, so two lanes fit float32
    x, w = _edge_case(23, [2] * 25 + [1] * 39)
    assert golden.exact_plan(23, 89, 2, 128) == (np.float32, 2, 12)
    acc = golden.exact_matmul(x, w)
    np.testing.assert_array_equal(acc, naive_matmul(x, w))
    assert acc[0].tolist() == [2047, -2047]
    # S = 32 * 64 = 2048 needs T = 8192 and S * (1 + T) >= 2**24: one output per column
    x, w = _edge_case(32, [1] * 64)
    assert golden.exact_plan(32, 64, 2, 128) == (np.float32, 1, 0)
    np.testing.assert_array_equal(golden.exact_matmul(x, w), naive_matmul(x, w))
    assert golden.exact_plan(32, 64, 4, 128) == (np.float64, 4, 13)  # float64: 4 lanes
    assert golden.exact_plan(32, 64, 3, 128) == (np.float32, 1, 0)  # 3 float64 lanes lose
    np.testing.assert_array_equal(golden.exact_matmul(x, np.vstack([w, w])),
                                  naive_matmul(x, np.vstack([w, w])))


def test_a_plan_beyond_the_bound_is_wrong():
    """The bound is needed: lanes too close (T < 2S + 2) or a column beyond 2**24 lose bits."""
    x, w = _edge_case(23, [2] * 25 + [1] * 39)
    with pytest.raises(AssertionError):  # T = 2048 < 2S + 2: the low field spills
        np.testing.assert_array_equal(
            golden._lanes_matmul(x.astype(np.float32), w, (np.float32, 2, 11)),
            naive_matmul(x, w))
    x = np.array([[32] * 64 + [1] * 64])
    w = np.zeros((2, 128), dtype=np.int64)
    w[0, :63], w[0, 64] = 1, 1  # 32 * 63 + 1 = 2017, odd
    w[1, :64] = 1  # 2048: the column holds 2017 + 8192 * 2048 > 2**24, odd: not a float32
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(
            golden._lanes_matmul(x.astype(np.float32), w, (np.float32, 2, 13)),
            naive_matmul(x, w))
    np.testing.assert_array_equal(golden.exact_matmul(x, w), [[2017, 2048]])


@given(st.integers(1, 6), st.integers(1, 300), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_bipolar_fast_path_equals_the_popcount_kernel(batch, n, out, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, size=(batch, n))  # 0 counts as -1 (bit x > 0), as in the hardware
    w = rng.choice([-1, 1], size=(out, n))
    want = golden.xnor_popcount_matmul(golden.pack_bits(x > 0), golden.pack_bits(w > 0), n)
    cache = {}
    for _ in range(2):  # the second call reads the cached weights
        np.testing.assert_array_equal(golden.bipolar_matmul(x, w, cache), want)


def test_bipolar_plan_at_its_bounds():
    # S = 2n (0/1 bits against weights 2w): float32 up to n < 2**23, then float64, then popcount
    n = 2**23 - 1
    assert golden.exact_plan(1, 2 * n, 1, n)[0] is np.float32
    assert golden.exact_plan(1, 2 * (n + 1), 1, n + 1)[0] is np.float64
    assert golden.exact_plan(1, 2 * 2**52, 1, 2**52)[0] is None
    assert golden.exact_plan(1, 2 * 784, 256, 784) == (np.float32, 2, 12)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_fast_path_equals_each_datapath_kernel(encoding):
    rng = np.random.default_rng(sorted(ENCODINGS).index(encoding))
    formats = [InputFormat.int(4, signed=True), InputFormat.int(8), InputFormat.int(16)]
    if encoding == "binary":
        formats = [InputFormat.bipolar()]
    for fmt in formats:
        for n in (37, 200):
            layer = random_dense(rng, n, 7, encoding, fmt, sparsity=0.3)
            x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(11, n))
            if fmt.kind == "bipolar":
                x = 2 * (x > 0) - 1
            want = golden.reference_accumulate(layer.datapath, layer.encoding, layer.weights, x)
            np.testing.assert_array_equal(want, naive_matmul(x, layer.weights))
            np.testing.assert_array_equal(
                golden.matrix_accumulate(layer.datapath, layer.encoding, layer.weights, x, {}),
                want)


@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_threshold_and_requant_match_naive(batch, out, count, seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-300, 300, size=(batch, out))
    d = rng.choice([-1, 1], size=out)
    t = np.sort(rng.integers(-300, 300, size=(out, count)), axis=1)
    t = np.where(d[:, None] > 0, t, t[:, ::-1])
    np.testing.assert_array_equal(golden.threshold(acc, t, d), naive_threshold(acc, t, d))
    m = rng.integers(-50, 50, size=out)
    shift = int(rng.integers(0, 8))
    offset = (1 << (shift - 1)) if shift else 0
    np.testing.assert_array_equal(golden.requant(acc, m, shift, -8, 7, offset),
                                  naive_requant(acc, m, shift, -8, 7, offset))


def test_requant_floor_and_half_up_on_negative_values():
    acc = np.array([[-5, -4, -3, 3, 4, 5]])
    stage = Requant(np.ones(6, dtype=np.int64), shift=1, bits=8, signed=True, rounding="floor")
    np.testing.assert_array_equal(golden.requant(acc, stage.multiplier, 1, stage.lo, stage.hi),
                                  [[-3, -2, -2, 1, 2, 2]])
    half = Requant(np.ones(6, dtype=np.int64), shift=1, bits=8, signed=True, rounding="half_up")
    assert half.offset == 1
    np.testing.assert_array_equal(golden.requant(acc, half.multiplier, 1, half.lo, half.hi, 1),
                                  [[-2, -2, -1, 2, 2, 3]])


def naive_execute(model, x):
    values = [list(map(int, row)) for row in x]
    for i, layer in enumerate(model.layers):
        if i and layer.input.kind == "bipolar":
            values = [[2 * v - 1 for v in row] for row in values]
        acc = naive_matmul(values, layer.weights)
        acc = [[a + int(b) for a, b in zip(row, layer.bias)] for row in acc]
        st_ = layer.output
        if isinstance(st_, Threshold):
            values = naive_threshold(acc, st_.thresholds, st_.direction)
        elif isinstance(st_, Requant):
            values = naive_requant(acc, st_.multiplier, st_.shift, st_.lo, st_.hi, st_.offset)
        else:
            values = acc
    return values


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("output", ["none", "threshold", "requant"])
def test_dense_layers_of_every_encoding_match_naive(encoding, output):
    rng = np.random.default_rng(hash((encoding, output)) % 2**32)
    for fmt in (InputFormat.bipolar(), InputFormat.int(4, signed=True), InputFormat.int(8)):
        layer = random_dense(rng, 37, 5, encoding, fmt, output, thresholds=3, sparsity=0.3)
        model = IntegerModel((layer,))
        x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(20, 37))
        if fmt.kind == "bipolar":
            x = 2 * (x > 0) - 1
        np.testing.assert_array_equal(golden.execute(model, x).output, naive_execute(model, x))


@pytest.mark.parametrize("encoding", ["binary", "ternary", "pow2", "lut"])
def test_multi_layer_network_matches_naive(encoding):
    rng = np.random.default_rng(7)
    model = mlp(rng, (30, 12, 9, 4), encoding)
    fmt = model.input
    x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(25, 30))
    if fmt.kind == "bipolar":
        x = 2 * (x > 0) - 1
    trace = golden.execute(model, x)
    np.testing.assert_array_equal(trace.output, naive_execute(model, x))
    assert len(trace.accumulators) == len(trace.outputs) == 3
    np.testing.assert_array_equal(golden.predict(model, x), np.argmax(trace.output, axis=1))


def test_accumulators_never_leave_the_declared_width():
    rng = np.random.default_rng(3)
    layer = random_dense(rng, 64, 8, "int", InputFormat.int(8, signed=True), bias=True)
    lo, hi = -(1 << (layer.acc_bits - 1)), (1 << (layer.acc_bits - 1)) - 1
    extremes = np.array([[-128] * 64, [127] * 64])
    # the weight signs decide which extreme input maximizes each channel: build both per channel
    worst = np.where(layer.weights > 0, 127, -128)
    best = np.where(layer.weights > 0, -128, 127)
    acc = golden.execute(IntegerModel((layer,)), np.vstack([extremes, worst, best])).output
    assert acc.min() >= lo and acc.max() <= hi
    np.testing.assert_array_equal(np.diagonal(acc[2:2 + 8]), layer.acc_range[1])
    np.testing.assert_array_equal(np.diagonal(acc[10:18]), layer.acc_range[0])


def test_inputs_outside_the_format_are_refused():
    layer = Dense(np.ones((2, 3), dtype=np.int64), ENCODINGS["ternary"], InputFormat.int(4),
                  NoOutput())
    model = IntegerModel((layer,))
    with pytest.raises(ModelRangeError, match=r"uint4 values in \[0, 15\], not 16"):
        golden.execute(model, [[0, 16, 1]])
    with pytest.raises(ModelRangeError, match=r"not values such as 0.5"):
        golden.execute(model, np.array([[0, 0.5, 1]]))
    with pytest.raises(ModelRangeError, match=r"shape \(batch, 3\)"):
        golden.execute(model, np.zeros((2, 4), dtype=np.int64))
    bip = IntegerModel((Dense(np.ones((1, 2)), ENCODINGS["binary"], InputFormat.bipolar()),))
    with pytest.raises(ModelRangeError, match=r"no 0"):
        golden.execute(bip, [[1, 0]])


def test_a_wrong_reference_is_caught():
    """The comparison used everywhere fails on a one-off difference (the checker checks)."""
    rng = np.random.default_rng(0)
    x = rng.choice([-1, 1], size=(4, 70))
    w = rng.choice([-1, 1], size=(3, 70))
    acc = golden.xnor_popcount_matmul(golden.pack_bits(x > 0), golden.pack_bits(w > 0), 70)
    wrong = np.array(naive_matmul(x, w))
    wrong[2, 1] += 1
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(acc, wrong)


def test_compare_outputs_counts_and_names_the_first_mismatch():
    want = np.arange(12).reshape(4, 3)
    assert golden.compare_outputs(want.copy(), want) == (0, None)
    got = want.copy()
    got[2, 1] += 1
    got[3, 0] -= 1
    assert golden.compare_outputs(got, want) == (
        2, {"vector": 2, "outputs": [1], "expected": [6, 7, 8], "actual": [6, 8, 8]})
    assert golden.compare_outputs(want[:3], want) == (
        1, {"vector": 3, "expected": "4 vectors", "actual": "3 vectors"})
    assert golden.compare_outputs(np.vstack([want, want[:1]]), want)[0] == 1
