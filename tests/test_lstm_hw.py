"""The hardware LSTM cell and the lstm layer component against the golden model, in the
Amaranth simulator and through the one cocotb bench (the same code paths as dense layers)."""

import numpy as np
import pytest
from amaranth.hdl import Fragment

from bitfab.errors import BitfabError, VerificationError
from bitfab.formats import StreamFormat
from bitfab.hw.config import ConfigError
from bitfab.hw.lstm import FoldedLstmCell, LstmCell, LstmConfig
from bitfab.lstm import random_lstm
from bitfab.model import Dense, InputFormat, IntegerModel, IntWeights, Lut, NoOutput, Pow2, Ternary
from bitfab.sim.amaranth_sim import outputs_of, run_stream, simulate
from bitfab.sim.golden import execute
from bitfab.sim.lstm import lstm_layer


def rtl_lstm(layer, x, lengths=None, *, direction=0, pipeline=0, stall=0.0, bubble=0.0,
             seed=0, fold=None):
    """The hidden states ``(batch, T, hidden)`` of one direction's cell (``fold = (pe, simd)``:
    the folded cell), in input step order: a backward cell is fed each sequence reversed, as the
    golden model reads it."""
    x = np.asarray(x)
    lengths = np.full(len(x), x.shape[1]) if lengths is None else np.asarray(lengths)
    flip = np.array([[(n - 1 - t) if (direction and t < n) else t for t in range(x.shape[1])]
                     for n in lengths])
    fed = np.take_along_axis(x, flip[..., None], axis=1)
    steps = StreamFormat(layer.hidden_format, layer.hidden, framed=True)
    cell = LstmCell(layer, direction, pipeline) if fold is None else \
        FoldedLstmCell(layer, direction, *fold, pipeline)
    result = run_stream(cell, layer.in_stream.pack(fed, lengths), stall=stall, bubble=bubble,
                        seed=seed)
    hs = outputs_of(steps, result.outputs, lengths, x.shape[1])
    return np.take_along_axis(hs, flip[..., None], axis=1) if direction else hs


def _case(seed, encoding, directions=1, n_in=3, hidden=4, signed=False):
    rng = np.random.default_rng(seed)
    fmt = InputFormat.int(4, signed=signed)
    layer = random_lstm(rng, n_in, hidden, encoding, directions=directions, input=fmt)
    return layer, rng


@pytest.mark.parametrize("encoding,fold,pipeline,signed", [
    (Ternary(), None, 0, False), (Pow2(0, 2), None, 1, True), (IntWeights(3), None, 2, False),
    (Lut((-3, 0, 1, 2)), None, 1, True),
    (Ternary(), (1, 1), 0, False), (Pow2(0, 2), (3, 7), 1, True),
    (IntWeights(3), (16, 7), 1, False), (Lut((-3, 0, 1, 2)), (5, 1), 2, True)])
def test_cell_equals_golden_with_stalls(encoding, fold, pipeline, signed):
    """The unrolled cell (``fold`` None) and the folded one (gate mat-vec on the folded dense
    datapath, serial nonlinear stage) == the golden model, both directions (the backward one
    fed reversed sequences)."""
    layer, rng = _case(10, encoding, directions=2, signed=signed)
    fmt = layer.input
    x = rng.integers(fmt.min_value, fmt.max_value + 1, (8, 9, layer.in_features))
    lengths = rng.integers(1, 10, 8)
    _, hs, _ = lstm_layer(layer, x, lengths)
    for d in range(2):
        got = rtl_lstm(layer, x, lengths, direction=d, pipeline=pipeline, stall=0.3,
                       bubble=0.3, seed=d, fold=fold)
        np.testing.assert_array_equal(got, hs[d])


def test_cell_100_random_sequences():
    layer, rng = _case(11, Ternary(), n_in=4, hidden=5)
    x = rng.integers(0, 16, (100, 12, 4))
    lengths = rng.integers(1, 13, 100)
    _, hs, _ = lstm_layer(layer, x, lengths)
    got = rtl_lstm(layer, x, lengths, pipeline=1, stall=0.25, bubble=0.25, seed=3)
    np.testing.assert_array_equal(got, hs[0])


def test_wrong_reference_and_flags_fail():
    layer, rng = _case(12, Ternary())
    x = rng.integers(0, 16, (3, 5, 3))
    lengths = np.array([5, 2, 4])
    got = rtl_lstm(layer, x, lengths)
    wrong = lstm_layer(layer.replace(cand_shift=layer.cand_shift + 2), x, lengths)[1][0]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, wrong)
    # a stream whose last flags do not match the sequence lengths is refused
    out = IntegerModel((layer,)).out_stream
    words = layer.in_stream.pack(x, lengths)  # input words: wrong layout on purpose
    with pytest.raises(VerificationError, match="last flag|output steps for"):
        outputs_of(out, words, lengths)
    last = 1 << (out.count * out.element.bits)
    with pytest.raises(VerificationError, match="output step 1: last flag 1, expected 0"):
        outputs_of(out, [0, last, last], [3])


def test_state_resets_between_sequences():
    layer, rng = _case(13, Ternary())
    seq = rng.integers(0, 16, (1, 6, 3))
    x = np.concatenate([seq, seq])  # the same sequence twice in one stream
    got = rtl_lstm(layer, x)
    np.testing.assert_array_equal(got[0], got[1])


def test_cell_properties_and_errors():
    layer, _ = _case(14, Ternary())
    cell = LstmCell(layer, pipeline=1)
    assert cell.initiation_interval == cell.tree_latency + 4 >= 5
    # measured: with no stalls a step is taken every initiation_interval clocks
    x = np.random.default_rng(0).integers(0, 16, (1, 6, 3))
    timed = LstmCell(layer, pipeline=1)
    result = run_stream(timed, IntegerModel((layer,)).in_stream.pack(x))
    assert set(np.diff(result.in_cycles).tolist()) == {cell.initiation_interval}
    assert result.out_cycles[0] - result.in_cycles[0] == cell.latency
    from amaranth.back import verilog
    assert "module" in verilog.convert(cell, name="lstm_cell")
    with pytest.raises(BitfabError, match="direction must be in 0..0, not 1"):
        LstmCell(layer, 1)
    with pytest.raises(BitfabError, match="pipeline must be >= 0, not -1"):
        LstmCell(layer, 0, -1)
    with pytest.raises(BitfabError, match="layer must be an Lstm, not str"):
        LstmCell("lstm")


def _sequence_model(seed, returns="last", encoding=None, n_in=3, hidden=4, classes=3):
    rng = np.random.default_rng(seed)
    layer = random_lstm(rng, n_in, hidden, encoding or Ternary(), returns=returns, max_length=16)
    layers = (layer,)
    if returns == "last":
        layers += (Dense(rng.integers(-3, 4, (classes, hidden)), IntWeights(3), layer.out_format,
                         NoOutput(), rng.integers(-5, 6, classes), name="head"),)
    return IntegerModel(layers, name=f"seq_{returns}"), rng


@pytest.mark.parametrize("returns", ["last", "sequence"])
@pytest.mark.parametrize("pipeline", [0, 1])
def test_sequence_model_network_equals_golden(returns, pipeline):
    """The lstm layer component in a Network (with a dense head after a last-step lstm): the
    golden model's outputs, stalls and bubbles included."""
    model, rng = _sequence_model(20 + pipeline, returns)
    x = rng.integers(0, 16, (12, 7, 3))
    lengths = rng.integers(1, 8, 12)
    got = simulate(model, x, lengths, stall=0.3, bubble=0.3, seed=1, pipeline=pipeline)
    np.testing.assert_array_equal(got, execute(model, x, lengths).output)


def test_lstm_hardware_refusals_name_what_is_supported():
    from bitfab.hw.layer import network_configs, per_step_layers
    # a bidirectional layer and a per-step head build (tests/test_lstm_bidir.py runs them)
    rng = np.random.default_rng(3)
    bi = random_lstm(rng, 3, 4, Ternary(), directions=2)
    head = Dense(np.ones((2, 8), int), Ternary(), bi.out_format)
    configs = network_configs(IntegerModel((bi, head)))
    assert per_step_layers(configs, ((-1,), (0,))) == ((False, True), (True, True))
    with pytest.raises(ConfigError, match="layer must be an Lstm, not str"):
        LstmConfig("x")


@pytest.mark.cocotb
@pytest.mark.slow
def test_verilator_100_sequences(tmp_path):
    """The one cocotb bench on a sequence model: 100 sequences on Verilator, and a wrong
    reference fails it."""
    from bitfab.hw.verilog import generate
    from bitfab.sim.verilog import Design, run_bench

    model, rng = _sequence_model(15)
    model.save(tmp_path / "lstm.bfm")
    x = rng.integers(0, 16, (100, 8, 3))
    lengths = rng.integers(1, 9, 100)
    facts = generate(model, tmp_path / "rtl", pipeline=1)
    design = Design.from_sidecar(tmp_path / "rtl" / f"{facts['top']}.json")
    ok = run_bench(design, tmp_path / "lstm.bfm", x, lengths, seed=4)
    assert (ok.mismatches, ok.vectors, ok.inputs) == (0, 100, int(lengths.sum())), ok
    np.testing.assert_array_equal(model.out_stream.values(ok.outputs),
                                  execute(model, x, lengths).output)
    wrong = run_bench(design, tmp_path / "lstm.bfm", x, lengths, seed=4, wrong_reference=True)
    assert wrong.mismatches == 1


# --- the folded cell ------------------------------------------------------------------------------


def test_folded_cell_timing_reset_and_wrong_reference():
    layer, rng = _case(16, Ternary(), hidden=5)
    cell = FoldedLstmCell(layer, 0, 4, 2, 1)
    gates = cell.gates
    assert (gates.pe, gates.simd, gates.out_features, gates.in_features) == (4, 2, 20, 8)
    # II = ceil(4H / pe) * (in + H) / simd + 2 + Lt (the folded mat-vec) + H + 3
    assert cell.dense_latency >= 5 * 4 + 2
    assert cell.initiation_interval == cell.latency == cell.dense_latency + 5 + 3
    # measured: with no stalls a step is taken every initiation_interval clocks
    seq = rng.integers(0, 16, (1, 6, 3))
    result = run_stream(cell, layer.in_stream.pack(seq))
    assert set(np.diff(result.in_cycles).tolist()) == {cell.initiation_interval}
    assert result.out_cycles[0] - result.in_cycles[0] == cell.latency
    # the same sequence twice in one stream: the state is cleared after the first
    x = np.concatenate([seq, seq])
    got = rtl_lstm(layer, x, fold=(2, 4), stall=0.2, bubble=0.2)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got, lstm_layer(layer, x)[1][0])
    wrong = lstm_layer(layer.replace(cell_shift=layer.cell_shift + 1), x)[1][0]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, wrong)


def test_folded_cell_edge_shapes():
    """One input and one unit (no unit counter, a one-word cell memory), and pe = 4 * hidden."""
    for n_in, hidden, fold in ((1, 1, (1, 1)), (1, 1, (4, 2)), (2, 3, (12, 5))):
        rng = np.random.default_rng(n_in * 10 + hidden)
        layer = random_lstm(rng, n_in, hidden, Ternary(), input=InputFormat.int(3, signed=True))
        x = rng.integers(-4, 4, (6, 5, n_in))
        lengths = rng.integers(1, 6, 6)
        got = rtl_lstm(layer, x, lengths, fold=fold, stall=0.3, bubble=0.3, pipeline=1)
        np.testing.assert_array_equal(got, lstm_layer(layer, x, lengths)[1][0])


@pytest.mark.parametrize("fold", [(1, 1), (8, 7)])
def test_folded_network_equals_golden(fold):
    """A folded lstm (returns="last") and its dense head in a Network == the golden model."""
    from bitfab.hw.layer import Network, network_configs
    model, rng = _sequence_model(22)
    configs = network_configs(model, fold, pipeline=1)
    assert (configs[0].architecture, configs[0].pe, configs[0].simd) == ("folded", *fold)
    x = rng.integers(0, 16, (10, 7, 3))
    lengths = rng.integers(1, 8, 10)
    got = simulate(Network(configs), x, lengths, stall=0.3, bubble=0.3, seed=2)
    np.testing.assert_array_equal(got, execute(model, x, lengths).output)


def test_fold_configuration_and_refusals():
    from bitfab.hw import kinds
    from bitfab.hw.layer import build_network
    layer, _ = _case(17, Ternary())  # 3 inputs, 4 hidden: 16 gate rows, 7 columns
    # a network-wide fold is fitted: pe capped at the gate rows, simd lowered to a divisor
    cfg = kinds.configure(layer, (64, 6), 1, exact=False)
    assert (cfg.architecture, cfg.pe, cfg.simd) == ("folded", 16, 1)
    assert cfg.to_json()["pe"] == 16 and cfg.to_json()["weights"] == "bram"
    cell = FoldedLstmCell(layer, 0, 16, 1, 1)
    assert cfg.initiation_interval == cell.initiation_interval
    Fragment.get(cell, None)
    assert kinds.configure(layer, None).architecture == "unrolled"
    for fold, message in [
            ((17, 1), r"^pe must be in 1..16 \(4 gates x 4 hidden units\), not 17"),
            ((0, 1), r"pe must be in 1..16 \(4 gates x 4 hidden units\), not 0"),
            ((2, 3), r"simd must divide in_features \+ hidden \(3 \+ 4 = 7\), not 3"),
            ((2, True), r"a folded lstm layer needs an integer simd, not True")]:
        with pytest.raises(ConfigError, match=message):
            kinds.configure(layer, fold, 1, exact=True)
    with pytest.raises(ConfigError, match=r"layers\[0\]: simd must divide"):
        kinds.configure(layer, (2, 3), 1, "layers[0]", exact=True)
    with pytest.raises(ConfigError, match="pe and simd apply to the folded architecture only"):
        LstmConfig(layer, 1, "unrolled", 2, 1)
    with pytest.raises(ConfigError, match="architecture must be 'unrolled' or 'folded', "
                                          "not 'tiled'"):
        LstmConfig(layer, 1, "tiled")
    with pytest.raises(ConfigError, match="weights of an lstm layer must be 'bram'"):
        LstmConfig(layer, 1, "folded", 2, 1, "spram")
    with pytest.raises(BitfabError, match="direction must be in 0..0, not 1"):
        FoldedLstmCell(layer, 1, 2, 1)
    with pytest.raises(ConfigError, match=r"simd must divide in_features \(7\), not 2"):
        FoldedLstmCell(layer, 0, 2, 2)
    model, _ = _sequence_model(21)
    net = build_network(model, (4, 7))
    assert isinstance(net.layers[0].cell, FoldedLstmCell)
    assert net.layers[0].initiation_interval == net.layers[0].cell.initiation_interval
    Fragment.get(net, None)


@pytest.mark.cocotb
def test_folded_model_on_verilator(tmp_path):
    """The fast bench (sim.fast) on Verilator: a folded lstm + head, stalls and bubbles, 0
    mismatches; a wrong reference fails it."""
    from bitfab.hw.verilog import generate
    from bitfab.sim.fast import run_fast
    from bitfab.sim.verilog import Design

    model, rng = _sequence_model(23)
    model.save(tmp_path / "lstm.bfm")
    x = rng.integers(0, 16, (40, 8, 3))
    lengths = rng.integers(1, 9, 40)
    facts = generate(model, tmp_path / "rtl", fold=(4, 7), pipeline=1)
    assert facts["layers"][0]["config"]["architecture"] == "folded"
    design = Design.from_sidecar(tmp_path / "rtl" / f"{facts['top']}.json")
    ok = run_fast(design, tmp_path / "lstm.bfm", x, lengths, p_bubble=0.3, p_stall=0.3, seed=4)
    assert (ok.mismatches, ok.vectors, ok.inputs) == (0, 40, int(lengths.sum())), ok
    np.testing.assert_array_equal(model.out_stream.values(ok.outputs),
                                  execute(model, x, lengths).output)
    bad = run_fast(design, tmp_path / "lstm.bfm", x, lengths, p_bubble=0.3, p_stall=0.3, seed=4,
                   wrong_reference=True)
    assert bad.mismatches == 1


def test_board_estimates_fold_an_lstm_model():
    """boards.build plans an lstm model's folds: estimates, block RAMs, interval per step."""
    from bitfab.boards.build import estimate_luts, foldable, initiation_interval, memory_blocks
    from bitfab.boards.targets import get_board
    from bitfab.hw.layer import build_network
    rng = np.random.default_rng(6)
    layer = random_lstm(rng, 4, 8, Ternary(), returns="last", hidden_bits=8, cell_bits=12,
                        table_bits=(8, 8))
    head = Dense(rng.integers(-3, 4, (3, 8)), IntWeights(3), layer.out_format, NoOutput())
    model = IntegerModel((layer, head))
    assert foldable(model)  # candidate_folds tries folds (it builds a cell per fold: slow here)
    icebreaker = get_board("icebreaker")
    assert estimate_luts(model, (1, 1)) < estimate_luts(model, (8, 4)) < estimate_luts(model,
                                                                                         None)
    # one block each: the gate weights (384 x 2 bits), the head's weights, the two 256-entry
    # tanh tables, the cell states
    assert memory_blocks(model, (1, 1), icebreaker) == 5
    assert memory_blocks(model, None, icebreaker) == 0  # the unrolled cell: yosys decides
    net = build_network(model, (2, 4))
    # 32 gate rows / pe 2 x 12 columns / simd 4 = 48 clocks of mat-vec, then 8 units
    assert initiation_interval(model, (2, 4)) == net.layers[0].initiation_interval > 48 + 8
    Fragment.get(net, None)


def test_fold_choice_of_the_digits_lstm_is_the_fastest_fold_that_placed():
    """choose_fold on the 16-unit digits-rows classifier's shapes (docs/results/lstm-synth.md:
    fold 1,4 placed at 5,102 of 5,280 cells, 1,8 took 6,520 in yosys) picks 1,4: the lstm
    kind's calibration on iCE40, where the MLP's 1.8 x LUTs in 80 % refused every fold."""
    from bitfab.boards.build import CALIBRATION, FitError, calibration, choose_fold, estimate_luts
    from bitfab.boards.targets import get_board
    rng = np.random.default_rng(0)
    layer = random_lstm(rng, 8, 16, Ternary(), returns="last", hidden_bits=8, cell_bits=16,
                        table_bits=(8, 8), input=InputFormat.int(8, signed=False), max_length=32)
    head = Dense(rng.integers(-127, 128, (10, 16)), IntWeights(8), layer.out_format, NoOutput())
    model = IntegerModel((layer, head), name="digits-lstm")
    ice = get_board("icebreaker")
    scale, budget = calibration(model, ice)
    assert (scale, budget) == CALIBRATION["ice40", "lstm"]
    assert calibration(model, get_board("ulx3s")) == (1.0, 0.8)  # ECP5: not measured
    assert choose_fold(model, ice) == (1, 4)
    # 1,8 (and every faster fold) is over; the uncalibrated first guess refused 1,2 as well
    assert scale * estimate_luts(model, (1, 8)) > budget * ice.limits.luts
    assert 1.8 * estimate_luts(model, (1, 2)) > 0.8 * ice.limits.luts
    with pytest.raises(FitError, match=r"digits-lstm does not fit .* at any fold"):
        choose_fold(model, ice, scale=1.8, budget=0.8)


def test_simulated_board_paces_steps_of_a_network_slower_than_the_line(tmp_path, capsys,
                                                                      monkeypatch):
    """A folded cell slower than a step frame on the line (4 clocks a bit): the host follows
    each unanswered step with idle bytes, so the board never overruns; without them it does."""
    import json

    from bitfab.boards.protocol import Identity
    from bitfab.cli import run
    model, _ = _sequence_model(31, hidden=8)
    path = tmp_path / "slow.bfm"
    model.save(path)
    args = ["board", "run", str(path), "--simulate", "--vectors", "3", "--fold", "1,1", "--json"]
    assert not run(args)
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["mismatches"], verdict["vectors"]) == (0, 3)
    monkeypatch.setattr(Identity, "idle_bytes", lambda self: 0)
    with pytest.raises(SystemExit) as exit_:
        run(args)
    assert exit_.value.code != 0
    assert "overrun" in capsys.readouterr().err
