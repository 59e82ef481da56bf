"""The hardware LSTM cell against the golden model in the Amaranth simulator."""

import numpy as np
import pytest

from bitfab.errors import BitfabError, VerificationError
from bitfab.hw.lstm import LstmCell
from bitfab.lstm import random_lstm
from bitfab.model import InputFormat, IntWeights, Lut, Pow2, Ternary
from bitfab.sim.lstm import lstm_layer
from bitfab.sim.lstm_hw import rtl_lstm, step_payloads, unstream


def _case(seed, encoding, directions=1, n_in=3, hidden=4, signed=False):
    rng = np.random.default_rng(seed)
    fmt = InputFormat.int(4, signed=signed)
    layer = random_lstm(rng, n_in, hidden, encoding, directions=directions, input=fmt)
    return layer, rng


@pytest.mark.parametrize("encoding,pipeline,signed", [
    (Ternary(), 0, False), (Pow2(0, 2), 1, True), (IntWeights(3), 2, False),
    (Lut((-3, 0, 1, 2)), 1, True)])
def test_cell_equals_golden_with_stalls(encoding, pipeline, signed):
    layer, rng = _case(10, encoding, directions=2, signed=signed)
    fmt = layer.input
    x = rng.integers(fmt.min_value, fmt.max_value + 1, (8, 9, layer.in_features))
    lengths = rng.integers(1, 10, 8)
    _, hs, _ = lstm_layer(layer, x, lengths)
    for d in range(2):
        got = rtl_lstm(layer, x, lengths, direction=d, pipeline=pipeline, stall=0.3,
                       bubble=0.3, seed=d)
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
    words = step_payloads(layer, x, lengths)  # input words: wrong layout on purpose
    with pytest.raises(VerificationError, match="last flag|hidden states for"):
        unstream(layer, words, x.shape, lengths)


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
    from bitfab.sim.amaranth_sim import run_stream
    x = np.random.default_rng(0).integers(0, 16, (1, 6, 3))
    timed = LstmCell(layer, pipeline=1)
    result = run_stream(timed, step_payloads(layer, x, np.array([6])))
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


@pytest.mark.cocotb
@pytest.mark.slow
def test_verilator_100_sequences(tmp_path):
    from bitfab.model import IntegerModel
    from bitfab.sim.lstm_verilog import run_lstm_bench

    layer, rng = _case(15, Ternary(), directions=2)
    IntegerModel((layer,)).save(tmp_path / "lstm.bfm")
    x = rng.integers(0, 16, (100, 8, 3))
    lengths = rng.integers(1, 9, 100)
    verdict = run_lstm_bench(tmp_path / "lstm.bfm", x, lengths, direction=1, seed=4)
    assert verdict["mismatches"] == 0, verdict
    assert verdict["steps"] == int(lengths.sum()) and verdict["sequences"] == 100
    wrong = run_lstm_bench(tmp_path / "lstm.bfm", x, lengths, direction=1, seed=4,
                           wrong_reference=True)
    assert wrong["mismatches"] == 1
