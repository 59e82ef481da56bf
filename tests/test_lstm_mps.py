"""MPS / MPO tensor-train gate matrices: torch chains, the lstm_mps layer kind, its golden model."""

import numpy as np
import pytest
import torch

from bitfab.errors import BitfabError, ModelFormatError
from bitfab.lstm_mps import LstmMps, contract_cores, random_lstm_mps
from bitfab.model import Dense, InputFormat, IntegerModel, IntWeights, NoOutput, Pow2
from bitfab.quant.lstm import QuantLstm
from bitfab.quant.lstm_train import LstmConfig, fit_lstm, integer_forward, lstm_config
from bitfab.quant.mps import (
    MpoLinear,
    MpsLinear,
    chain_params,
    chain_ranks,
    parse_compress,
    rank_for_budget,
)
from bitfab.sim.golden import execute
from bitfab.sim.lstm import lstm_layer
from bitfab.sim.lstm_mps import mps_gate_sums


def close(a, b, atol=1e-5):
    """Float chains vs their references (float sums in another order: not bit-exact)."""
    np.testing.assert_allclose(np.asarray(a.detach() if isinstance(a, torch.Tensor) else a),
                               np.asarray(b.detach() if isinstance(b, torch.Tensor) else b),
                               rtol=1e-5, atol=atol)


def test_mps_matrix_equals_einsum_and_forward():
    torch.manual_seed(0)
    mps = MpsLinear(12, 10, (2, 5), (3, 4), rank=3)
    a, b, c, d = list(mps.cores)
    # W[(m1 m2), (n1 n2)] = G1[0, n1, a] G2[a, n2, b] G3[b, m1, c] G4[c, m2, 0]
    ref = torch.einsum("xia,ajb,bkc,clx->klij", a, b, c, d).reshape(12, 10)
    close(mps.matrix(), ref)
    x = torch.randn(5, 10)
    close(mps(x), x @ ref.T)
    assert mps.ranks == (1, 2, 3, 3, 1)  # the first bond cannot use more than n_1 = 2
    assert mps.param_count == 2 * 2 + 2 * 5 * 3 + 3 * 3 * 3 + 3 * 4 == chain_params(
        mps.sizes, mps.ranks)


def test_mpo_matrix_equals_einsum_and_forward():
    torch.manual_seed(1)
    mpo = MpoLinear(12, 10, (2, 5), (3, 4), rank=2)
    a, b = list(mpo.cores)
    ref = torch.einsum("xkia,aljx->klij", a, b).reshape(12, 10)
    close(mpo.matrix(), ref)
    x = torch.randn(4, 10)
    close(mpo(x), x @ ref.T)
    assert mpo.param_count == 3 * 2 * 2 + 2 * 4 * 5


@pytest.mark.parametrize("cls", [MpsLinear, MpoLinear])
def test_tt_svd_full_rank_reconstructs_and_truncates(cls):
    torch.manual_seed(2)
    w = torch.randn(12, 10, dtype=torch.float64)
    full = cls.from_dense(w, (2, 5), (3, 4), rank=1000)
    close(full.matrix(quantized=False), w)
    low = cls.from_dense(w, (2, 5), (3, 4), rank=1)
    err = (low.matrix(quantized=False).detach().double() - w).norm()
    assert 0 < err < w.norm()
    if cls is MpsLinear:  # only the middle bond truncated: the best rank-1 approximation
        err = (cls.from_dense(w, (2, 5), (3, 4), rank=(2, 1, 3)).matrix(quantized=False)
               .detach().double() - w).norm()
        s = torch.linalg.svdvals(w)
        assert float(err) == pytest.approx(float(s[1:].norm()), rel=1e-4)


def test_bad_factorisations_and_options():
    with pytest.raises(BitfabError, match=r"^in_modes \[4, 8\] multiply to 32, not 40$"):
        MpsLinear(128, 40, (4, 8), (8, 16), 2)
    with pytest.raises(BitfabError, match=r"^out_modes \[8, 8\] multiply to 64, not 128$"):
        MpoLinear(128, 40, (5, 8), (8, 8), 2)
    with pytest.raises(BitfabError, match="as many modes"):
        MpoLinear(128, 40, (5, 8), (2, 4, 16), 2)
    with pytest.raises(BitfabError, match="compress must be"):
        parse_compress("mps:x")
    with pytest.raises(BitfabError, match="compress must be"):
        lstm_config("digits", 1, 0, 8, {"compress": "tt:3"}, None)
    assert lstm_config("digits", 1, 0, 8, {"compress": "mps:3"}, None).compress == "mps:3"
    assert chain_ranks((2, 5, 3, 4), 100) == (1, 2, 10, 4, 1)  # capped where a bond can't use more
    sizes = (5, 8, 8, 16)
    r = rank_for_budget(sizes, 512)
    assert chain_params(sizes, chain_ranks(sizes, r)) <= 512 < chain_params(
        sizes, chain_ranks(sizes, r + 1))


def test_layer_refuses_bad_chains():
    rng = np.random.default_rng(0)
    layer = random_lstm_mps(rng, 8, 8, (4, 4), (4, 8), 3)
    with pytest.raises(ModelFormatError, match=r"^in_modes \[4, 5\] multiply to 20, not "
                                               r"in_features \+ hidden = 16$"):
        layer.replace(in_modes=(4, 5))
    with pytest.raises(ModelFormatError, match=r"^out_modes \[4, 4\] multiply to 16, not "
                                               r"4 \* hidden = 32$"):
        layer.replace(out_modes=(4, 4))
    cores = [list(layer.cores[0])]
    cores[0][1] = cores[0][1][:2]
    with pytest.raises(ModelFormatError, match=r"^cores\[0\]\[1\] must have shape \(3, 4, r\)"):
        layer.replace(cores=cores)
    cores = [list(layer.cores[0])]
    cores[0][2] = cores[0][2] * 2
    with pytest.raises(ModelFormatError, match=r"^cores\[0\]\[2\]: "):
        layer.replace(cores=cores)  # 2 is not ternary


def _signed(words, bits: int, n: int) -> np.ndarray:
    """Unpack ``n`` two's complement elements of ``bits`` from each payload word."""
    out = np.array([[(int(w) >> (k * bits)) & ((1 << bits) - 1) for k in range(n)]
                    for w in words], dtype=np.int64)
    return np.where(out >= 1 << (bits - 1), out - (1 << bits), out)


@pytest.mark.parametrize("arch", ["unrolled", "folded"])
def test_chain_engine_equals_the_golden_chain(arch):
    """MpsGates alone: the accumulators (unit-major, bias included) == the golden chain's W z +
    bias for every z, with stalls and bubbles; its latency is what it says; a wrong reference
    (one accumulator off by one) fails."""
    from bitfab.hw.lstm_mps import MpsGates
    from bitfab.sim.amaranth_sim import run_stream
    rng = np.random.default_rng(4)
    layer = random_lstm_mps(rng, 8, 8, (4, 4), (4, 8), 3, encoding=Pow2(3))
    bias = rng.integers(-50, 50, (1, 4, 8))
    layer = layer.replace(bias=bias)
    fold = (2, 3) if arch == "folded" else (None, None)
    dut = MpsGates(layer, 0, arch, *fold, pipeline=1)
    assert dut.weight_count == layer.weight_count == 4 * 3 + 3 * 4 * 3 + 3 * 4 * 3 + 3 * 8
    zb, ab = layer.concat_format.bits, dut.acc_bits
    lo, hi = -(1 << (zb - 1)), 1 << (zb - 1)
    z = np.concatenate([rng.integers(lo, hi, (30, 16)), np.full((1, 16), lo),
                        np.full((1, 16), hi - 1)])
    words = [sum((int(v) & ((1 << zb) - 1)) << (k * zb) for k, v in enumerate(row))
             for row in z]
    result = run_stream(dut, words, stall=0.3, bubble=0.3, seed=5)
    got = _signed(result.outputs, ab, 32)
    ref = (mps_gate_sums(layer, 0, z) + bias[0].reshape(-1)).reshape(-1, 4, 8)
    ref = ref.transpose(0, 2, 1).reshape(-1, 32)  # gate-major rows -> unit-major accumulators
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, ref + (np.arange(32) == 7))
    quiet = run_stream(dut, words[:3])  # nothing stalls: o.valid ``latency`` edges after i
    assert [o - i for i, o in zip(quiet.in_cycles, quiet.out_cycles)] == [dut.latency] * 3


@pytest.mark.parametrize("fold,directions", [(None, 1), ((4, 4), 1), ((2, 4), 2)])
def test_hardware_runs_the_chain(fold, directions):
    """The lstm_mps kind's hardware (the lstm cell fed by MpsGates, the cores in hardware) ==
    the golden model's chain, unrolled and folded, forward and bidirectional, stalls and bubbles
    included; a wrong reference fails."""
    from bitfab.hw.layer import build_network
    from bitfab.hw.lstm_mps import MpsGates
    from bitfab.model import Dense, IntegerModel, IntWeights, NoOutput
    from bitfab.sim.amaranth_sim import outputs_of, run_stream
    from bitfab.sim.golden import execute
    rng = np.random.default_rng(9)
    layer = random_lstm_mps(rng, 8, 8, (4, 4), (4, 8), 3, returns="last", max_length=8,
                            directions=directions)
    head = Dense(rng.integers(-3, 4, (3, 8 * directions)), IntWeights(3), layer.out_format,
                 NoOutput(), name="head")
    model = IntegerModel((layer, head), name="mps")
    x = rng.integers(layer.input.min_value, layer.input.max_value + 1, (5, 6, 8))
    lengths = np.array([6, 1, 4, 6, 3])
    net = build_network(model, fold, 1)
    cells = net.layers[0].cells if directions == 2 else (net.layers[0].cell,)
    assert all(isinstance(c._dense, MpsGates) for c in cells)  # the chain, not a matrix
    result = run_stream(net, model.in_stream.pack(x, lengths), stall=0.3, bubble=0.3, seed=2,
                        outputs=len(x))
    got = outputs_of(model.out_stream, result.outputs)
    ref = execute(model, x, lengths).output
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, ref + (np.arange(len(ref)) == 3)[:, None])


def test_chain_config_refuses_bad_folds():
    from bitfab.hw.config import ConfigError
    from bitfab.hw.lstm_mps import MpsLstmConfig
    layer = random_lstm_mps(np.random.default_rng(1), 8, 8, (4, 4), (4, 8), 3)
    with pytest.raises(ConfigError, match=r"^a folded lstm_mps chain needs a positive integer "
                                          r"simd, not 0$"):
        MpsLstmConfig(layer.dense, 0, "folded", 2, 0, mps=layer)
    with pytest.raises(ConfigError, match=r"^pe and simd apply to the folded architecture"):
        MpsLstmConfig(layer.dense, 0, "unrolled", 2, 2, mps=layer)
    with pytest.raises(ConfigError, match=r"^layer must be the lstm_mps layer's dense"):
        MpsLstmConfig(random_lstm_mps(np.random.default_rng(2), 8, 8, (4, 4), (4, 8), 3).dense,
                      0, mps=layer)
    facts = MpsLstmConfig(layer.dense, 1, "folded", 2, 5, mps=layer).to_json()
    assert facts["kind"] == "lstm_mps" and facts["gates"] == "mps chain"
    # fold 2,5: the four stages share 10 lanes, the slowest stage growing first
    assert [(s["rows"], s["cols"], s["vectors"], s["pe"], s["simd"]) for s in facts["stages"]] \
        == [(3, 4, 4, 1, 2), (3, 12, 1, 1, 2), (12, 3, 1, 2, 1), (8, 3, 4, 4, 1)]


def test_golden_chain_equals_dense_equivalent_and_file_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    layer = random_lstm_mps(rng, 8, 8, (4, 4), (4, 8), 3, directions=2)
    assert layer.weight_count == 2 * (4 * 3 + 3 * 4 * 3 + 3 * 4 * 3 + 3 * 8)
    assert layer.dense.weight_count == 2 * 4 * 8 * 16
    x = rng.integers(0, 16, (6, 9, 8))
    lengths = np.array([9, 3, 5, 1, 9, 7])
    out, hs, cs = lstm_layer(layer, x, lengths)
    ref, _, ref_cs = lstm_layer(layer.dense, x, lengths)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(cs[1], ref_cs[1])
    assert len(np.unique(out)) > 10  # not a trivially saturated layer
    z = rng.integers(-32, 32, (4, 16))
    np.testing.assert_array_equal(mps_gate_sums(layer, 0, z),
                                  z @ layer.weights[0].reshape(32, -1).T)
    # a deliberately wrong reference (two input modes swapped in the contraction) differs
    swapped = contract_cores(layer.cores[0], 16, 32).reshape(32, 4, 4).transpose(0, 2, 1)
    assert not np.array_equal(mps_gate_sums(layer, 0, z), z @ swapped.reshape(32, 16).T)
    head = Dense(rng.integers(-1, 2, (3, 16)), layer.encoding, layer.out_format, NoOutput())
    model = IntegerModel((layer, head), 1.0, None, {}, {}, "mps")
    model.save(tmp_path / "m.bfm")
    back = IntegerModel.load(tmp_path / "m.bfm")
    assert isinstance(back.layers[0], LstmMps) and back.fingerprint() == model.fingerprint()
    np.testing.assert_array_equal(execute(back, x, lengths).output,
                                  execute(model, x, lengths).output)


@pytest.fixture
def one_thread():
    """Tiny torch work: one thread (two contend badly on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.train
def test_trained_mps_lstm_integer_eval_equals_golden(tmp_path, one_thread):
    config = LstmConfig("digits", True, "pow2", hidden=8, epochs=1, limit=200, compress="mps:3")
    result = fit_lstm(config, None)
    model = result.model
    layer = model.layers[0]
    assert isinstance(layer, LstmMps) and layer.ranks == (1, 3, 3, 3, 1)
    assert layer.weight_count == result.net.lstm.compressed.param_count
    model.save(tmp_path / "d.bfm")
    model = IntegerModel.load(tmp_path / "d.bfm")
    x_test = result.data[2][:80]
    lengths = np.full(len(x_test), result.data[4])
    h, logits = integer_forward(model, x_test, lengths)
    trace = execute(model, x_test, lengths)
    np.testing.assert_array_equal(trace.outputs[0], h.numpy())
    np.testing.assert_array_equal(trace.output, logits.numpy())
    # the torch eval computes with the chain's quantized cores: the float chain times the scales
    lstm = result.net.lstm.compressed
    cores, w_int, scale = lstm.integer(0)
    close(lstm.matrix(0), w_int * scale, atol=1e-7)
    # a deliberately wrong reference: one core entry changed -> the golden outputs differ
    bad = [list(c) for c in layer.cores]
    bad[0][1] = bad[0][1].copy()
    nz = tuple(np.argwhere(bad[0][1] != 0)[0])
    bad[0][1][nz] = -bad[0][1][nz]  # still a pow2 value
    wrong = model.replace(layers=(layer.replace(cores=bad), model.layers[1]))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(execute(wrong, x_test, lengths).outputs[0], h.numpy())


def test_mpo_lstm_exports_its_exact_dense_equivalent():
    torch.manual_seed(0)
    lstm = QuantLstm(8, 8, 2, True, "ternary", 6, compress="mpo:2")
    assert lstm.compressed.param_count == 2 * (4 * 4 * 2 + 2 * 8 * 4)
    layer = lstm.to_integer(InputFormat.int(6, signed=True), cell_bits=12)
    assert layer.kind == "lstm"  # the MPO baseline has no layer kind: its contraction, exactly
    for d in range(2):
        cores, w_int, scale = lstm.compressed.integer(d)
        np.testing.assert_array_equal(layer.weights[d].reshape(32, 16), w_int)
        close(lstm.compressed.matrix(d), w_int * scale, atol=1e-7)


def test_doctests():
    import doctest

    from bitfab.quant import mps
    failed, tried = doctest.testmod(mps)
    assert tried and not failed


def test_split_lanes_shares_the_budget():
    from bitfab.hw.lstm_mps import _stage_clocks, chain_plan, split_lanes
    layer = random_lstm_mps(np.random.default_rng(1), 8, 8, (4, 4), (4, 8), 3)
    stages = chain_plan(layer, 0)
    for lanes in (1, 4, 10, 64, 10_000):
        folds = split_lanes(stages, lanes)
        assert sum(p * s for p, s in folds) <= max(lanes, len(stages))
        for st, (p, s) in zip(stages, folds):
            assert 1 <= p <= st.matrix.shape[0] and st.matrix.shape[1] % s == 0
    # a budget past every stage's size unrolls each stage's weights over its lanes
    big = split_lanes(stages, 10_000)
    assert [_stage_clocks(st, *f) for st, f in zip(stages, big)] == [st.vectors for st in stages]


def test_board_estimates_count_the_chain_not_the_matrix():
    """The fold choice's estimates read the chain's datapaths (one weight memory per core when
    folded; the cores' terms when unrolled) and the serial cell's tables, not the dense
    equivalent's matrix."""
    from bitfab.boards.build import estimate_luts, memory_blocks
    from bitfab.boards.targets import get_board
    from bitfab.hw.layer import network_configs
    rng = np.random.default_rng(5)
    layer = random_lstm_mps(rng, 8, 8, (4, 4), (4, 8), 3, returns="last", max_length=8)
    head = Dense(rng.integers(-3, 4, (3, 8)), IntWeights(3), layer.out_format, NoOutput())
    model = IntegerModel((layer, head), name="mps")
    twin = IntegerModel((layer.dense, head), name="dense")
    board = get_board("icebreaker")
    cfg = network_configs(model, (2, 4))[0]
    assert cfg.serial and len(cfg.datapaths) == 4
    # the same tables, cell states and head; a memory per core in place of the matrix's
    from bitfab.boards.build import _blocks_of

    def blocks(dps):
        return sum(_blocks_of(board, dp.weight_depth, dp.weight_word_bits) for dp in dps)
    chain, matrix = blocks(cfg.datapaths), blocks([network_configs(twin, (2, 4))[0].dense])
    assert chain == 4 and matrix == 3
    assert memory_blocks(model, (2, 4), board) - chain == \
        memory_blocks(twin, (2, 4), board) - matrix
    # unrolled: the cores' 120 weights against the matrix's 512
    assert estimate_luts(model, None) < estimate_luts(twin, None) / 2
    assert estimate_luts(model, (2, 4)) > cfg.chain_registers > 4 * 8 * 10  # the 32 accumulators
