"""The bidirectional lstm layer (``hw.lstm.BiLstmLayer``) and a tagger's per-step dense head
(``hw.layer.PerStep``) against the golden model: Amaranth with random stalls and bubbles, the
fast Verilator bench and ``bitfab sim``; wrong references fail."""

import numpy as np
import pytest

from bitfab.errors import VerificationError
from bitfab.hw.config import LayerConfig
from bitfab.hw.layer import Network, PerStep, build_network
from bitfab.hw.lstm import BiLstmLayer, LstmConfig
from bitfab.lstm import random_lstm
from bitfab.model import (
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    Lut,
    NoOutput,
    Pow2,
    Ternary,
)
from bitfab.sim.amaranth_sim import outputs_of, run_stream, simulate
from bitfab.sim.golden import execute, expected_rows
from bitfab.sim.lstm import lstm_layer


def _bi(seed, returns="sequence", encoding=None, n_in=3, hidden=3, max_length=7, signed=False):
    rng = np.random.default_rng(seed)
    layer = random_lstm(rng, n_in, hidden, encoding or Ternary(), directions=2,
                        input=InputFormat.int(4, signed=signed), returns=returns,
                        max_length=max_length)
    return layer, rng


def _sequences(rng, layer, batch):
    """Random sequences of random lengths, the first of length 1 and the second full."""
    fmt, n = layer.input, layer.max_length
    x = rng.integers(fmt.min_value, fmt.max_value + 1, (batch, n, layer.in_features))
    lengths = rng.integers(1, n + 1, batch)
    lengths[:2] = 1, n
    return x, lengths


def _tagger(seed, classes=4, **kwargs):
    layer, rng = _bi(seed, **kwargs)
    head = Dense(rng.integers(-3, 4, (classes, layer.out_features)), IntWeights(3),
                 InputFormat.int(8, signed=True), NoOutput(), rng.integers(-5, 6, classes),
                 name="head")
    return IntegerModel((layer, head), name="tagger"), rng


@pytest.mark.parametrize("returns,pipeline,encoding,signed,fold", [
    ("sequence", 0, Ternary(), False, None), ("sequence", 1, Pow2(0, 2), True, None),
    ("last", 1, Ternary(), True, None), ("last", 0, IntWeights(3), False, None),
    ("sequence", 1, Lut((-3, 0, 1, 2)), True, (2, 3)), ("last", 0, Ternary(), False, (12, 1))],
    ids=["seq-ternary", "seq-pow2", "last-ternary", "last-int", "seq-lut-folded",
         "last-ternary-folded"])
def test_bidirectional_layer_equals_golden_with_stalls(returns, pipeline, encoding, signed,
                                                       fold):
    layer, rng = _bi(30 + pipeline, returns, encoding, signed=signed)
    x, lengths = _sequences(rng, layer, 14)
    model = IntegerModel((layer,))
    assert model.out_stream.framed == (returns == "sequence")
    net = build_network(model, fold, pipeline)
    assert isinstance(net.layers[0], BiLstmLayer)
    assert net.configs[0].architecture == ("unrolled" if fold is None else "folded")
    got = simulate(net, x, lengths, stall=0.3, bubble=0.3, seed=pipeline)
    np.testing.assert_array_equal(got, execute(model, x, lengths).output)
    # returns="last" is each direction's final state: h_f[L-1] and h_b[0]
    if returns == "last":
        _, hs, _ = lstm_layer(layer, x, lengths)
        final = np.concatenate([hs[0][np.arange(len(x)), lengths - 1], hs[1][:, 0]], axis=1)
        np.testing.assert_array_equal(got, final)


def test_wrong_references_fail():
    layer, rng = _bi(33)
    x, lengths = _sequences(rng, layer, 6)
    model = IntegerModel((layer,))
    got = simulate(model, x, lengths, stall=0.2, bubble=0.2)
    # the backward direction's table changed: only the second half of each step differs
    d = layer.cand_table.copy()
    d[1] = d[1][::-1]
    wrong = lstm_layer(layer.replace(cand_table=d), x, lengths)[0]
    np.testing.assert_array_equal(got[..., :layer.hidden], wrong[..., :layer.hidden])
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, wrong)
    # the backward direction read forward instead of reversed
    forward_only = np.concatenate([lstm_layer(layer, x, lengths)[1][0],
                                   lstm_layer(layer, x[:, ::-1].copy(),
                                              None)[1][1][:, ::-1]], axis=2)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, forward_only)


def test_timing_and_clocks_per_sequence():
    """Measured with a producer and a consumer that never wait: the latency property for the
    longest sequence, ``(max_length - L) * II`` less for a shorter one, and
    ``2 (L - 1) II + Lc + 5 (+ L)`` clocks per sequence, unrolled and folded cells."""
    for returns, fold in (("sequence", None), ("last", None), ("sequence", (4, 3))):
        layer, rng = _bi(34, returns, max_length=6)
        for length in (1, 6):
            dut = BiLstmLayer(LstmConfig(layer, 1) if fold is None
                              else LstmConfig(layer, 1, "folded", *fold))
            ii, lc = dut.cells[0].initiation_interval, dut.cells[1].latency
            assert dut.initiation_interval == 2 * ii + 1
            x = rng.integers(0, 16, (2, length, layer.in_features))
            per = length if returns == "sequence" else 1
            r = run_stream(dut, layer.in_stream.pack(x), outputs=2 * per)
            assert r.out_cycles[0] - r.in_cycles[length - 1] == \
                dut.latency - (layer.max_length - length) * ii
            period = r.in_cycles[length] - r.in_cycles[0]
            assert period == 2 * (length - 1) * ii + lc + 5 + \
                (length if returns == "sequence" else 0)


def test_steps_beyond_max_length_are_not_stored():
    """The host refuses them; the hardware runs the forward cell over every step, keeps the
    first max_length, and the next sequence is unharmed."""
    layer, rng = _bi(35, max_length=4)
    dut = BiLstmLayer(LstmConfig(layer, 0))
    long = rng.integers(0, 16, (1, 7, layer.in_features))
    short = rng.integers(0, 16, (1, 3, layer.in_features))
    words = layer.in_stream.pack(long) + layer.in_stream.pack(short)
    r = run_stream(dut, words, outputs=4 + 3, stall=0.2, bubble=0.2)
    out = IntegerModel((layer,)).out_stream.unpack_codes(r.outputs)
    np.testing.assert_array_equal(out[:, -1], [0, 0, 0, 1, 0, 0, 1])
    got = IntegerModel((layer,)).out_stream.values(out)
    fwd = lstm_layer(layer.replace(max_length=7), long)[1][0][0, :4]
    bwd = lstm_layer(layer, long[:, :4])[1][1][0]
    np.testing.assert_array_equal(got[:4], np.concatenate([fwd, bwd], axis=1))
    np.testing.assert_array_equal(got[4:], lstm_layer(layer, short)[0][0])


@pytest.mark.parametrize("fold", [None, (2, 3)], ids=["unrolled", "folded"])
def test_tagger_network_equals_golden(fold):
    """A bidirectional lstm and a dense head per step (both unrolled, or both folded): framed
    out, bit for bit."""
    model, rng = _tagger(40)
    head_stream = model.streams[1]
    assert head_stream[0].framed and head_stream[1].framed and model.out_stream.framed
    assert not model.layers[1].out_stream.framed  # the layer alone reads vectors
    configs = (LstmConfig(model.layers[0], 1) if fold is None
               else LstmConfig(model.layers[0], 1, "folded", 4, 2),
               LayerConfig.unrolled(model.layers[1], 1) if fold is None
               else LayerConfig.folded(model.layers[1], *fold, 1))
    net = Network(configs)
    assert net.per_step == (False, True) and isinstance(net.layers[1], PerStep)
    assert net.layers[1].fifo_depth == net.layers[1].latency + 1
    x, lengths = _sequences(rng, model.layers[0], 12)
    got = simulate(net, x, lengths, stall=0.3, bubble=0.3, seed=5)
    np.testing.assert_array_equal(got, execute(model, x, lengths).output)
    rows = expected_rows(model, x, lengths)
    assert rows.shape == (lengths.sum(), 5) and rows[:, -1].sum() == len(x)


def test_per_step_head_after_forward_lstm_and_refusals():
    """PerStep serves a forward tagger too (combinational head: last by wire); a layer that
    takes steps after one that gives vectors is still refused."""
    from bitfab.hw.config import ConfigError
    rng = np.random.default_rng(41)
    layer = random_lstm(rng, 3, 4, Ternary(), max_length=8)
    head = Dense(rng.integers(-2, 3, (3, 4)), IntWeights(3), layer.out_format, NoOutput())
    model = IntegerModel((layer, head))
    net = build_network(model, pipeline=0)
    assert net.layers[1].fifo_depth == 0
    x = rng.integers(0, 16, (8, 8, 3))
    lengths = rng.integers(1, 9, 8)
    got = simulate(net, x, lengths, stall=0.3, bubble=0.3)
    np.testing.assert_array_equal(got, execute(model, x, lengths).output)
    vec = Dense(np.ones((3, 3), int), Ternary(), InputFormat.int(4, signed=False),
                NoOutput())
    lstm = random_lstm(rng, 3, 2, Ternary(), input=InputFormat.int(8, signed=True))
    with pytest.raises(ConfigError, match=r"layers\[1\] \(lstm\) cannot follow layers\[0\] "
                                          r"\(dense\) in hardware yet: it gives one vector per "
                                          r"transfer, layers\[1\] takes steps"):
        build_network(IntegerModel((vec, lstm)))
    # a tagger output whose last flags are wrong is refused by the reader of the stream
    out = model.out_stream
    with pytest.raises(VerificationError, match="last flag"):
        outputs_of(out, [0, 0], [1, 1])


@pytest.mark.cocotb
def test_tagger_fast_verilator_bench_and_cli(tmp_path, capsys):
    """The fast bench on Verilator with stalls and bubbles: 0 mismatches, and a wrong
    reference fails at the middle step; ``bitfab sim`` and ``bitfab board run --simulate`` run
    the same model."""
    import json

    from bitfab.cli import run
    from bitfab.hw.verilog import generate
    from bitfab.sim.fast import run_fast
    from bitfab.sim.verilog import Design

    model, rng = _tagger(42, n_in=2, hidden=2, max_length=5, classes=3)
    path = tmp_path / "tagger.bfm"
    model.save(path)
    facts = generate(model, tmp_path / "rtl", pipeline=1)
    assert facts["output"]["last_bit"] == 3 * model.out_stream.element.bits
    assert [la["output"]["last_bit"] is not None for la in facts["layers"]] == [True, True]
    design = Design.from_sidecar(tmp_path / "rtl" / f"{facts['top']}.json")
    x, lengths = _sequences(rng, model.layers[0], 60)
    ok = run_fast(design, path, x, lengths, simulator="verilator", p_bubble=0.3, p_stall=0.3,
                  seed=6)
    steps = int(lengths.sum())
    assert (ok.vectors, ok.inputs, ok.mismatches) == (steps, steps, 0)
    np.testing.assert_array_equal(ok.outputs, expected_rows(model, x, lengths))
    bad = run_fast(design, path, x, lengths, simulator="verilator", seed=6,
                   wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == steps // 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "n.npy", lengths)
    run(["sim", str(path), "--simulator", "amaranth", "--inputs", str(tmp_path / "x.npy"),
         "--lengths", str(tmp_path / "n.npy"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["vectors"], verdict["inputs"], verdict["mismatches"]) == (steps, steps, 0)
    # the simulated board: the host sends a whole sequence, then takes its answers
    assert model.holds_sequences
    np.save(tmp_path / "x3.npy", x[:3])
    np.save(tmp_path / "n3.npy", lengths[:3])
    run(["board", "run", str(path), "--simulate", "--inputs", str(tmp_path / "x3.npy"),
         "--lengths", str(tmp_path / "n3.npy"), "--json"])
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["vectors"], verdict["mismatches"]) == (int(lengths[:3].sum()), 0)
    assert verdict["golden_prediction_mismatches"] == 0  # per step of the tagger
