"""The lstm layer kind: semantics, golden model, file round trip, bad input."""

import numpy as np
import pytest

from bitfab.errors import ModelFormatError, ModelRangeError
from bitfab.lstm import Lstm, random_lstm
from bitfab.model import Dense, InputFormat, IntegerModel, IntWeights, Pow2, Ternary
from bitfab.sim.golden import execute, predict
from bitfab.sim.lstm import gate_mul, lstm_layer, lstm_step, table_lookup


def _tiny(**changes) -> Lstm:
    """One input, one hidden unit, identity-like tables: every step is computable by hand."""
    w = np.zeros((1, 4, 1, 2), dtype=np.int64)
    w[0, :, 0, 0] = [1, 1, 1, 1]  # every gate sees x
    args = dict(
        weights=w, encoding=Ternary(), input=InputFormat.int(4, signed=True), hidden_bits=4,
        cell_bits=5, gate_thresholds=np.array([[[[0, 2]], [[-8, -8]], [[1, 1]]]]),
        cand_table=np.arange(-8, 8)[None] * 2, cand_shift=np.array([0]),
        cell_table=np.clip(np.arange(-8, 8), -7, 7)[None], cell_shift=np.array([1]),
        max_length=8)
    args.update(changes)
    return Lstm(**args)


def test_gate_mul_and_table():
    np.testing.assert_array_equal(gate_mul(np.array([0, 1, 1, 2, 1]), np.array([7, 7, -7, -7, -1])),
                                  [0, 3, -4, -7, -1])
    table = np.arange(8) * 10
    np.testing.assert_array_equal(table_lookup(table, np.array([-100, -9, -8, 7, 8, 100]), 1),
                                  [0, 0, 0, 70, 70, 70])


def test_step_by_hand():
    layer = _tiny()
    # x = 3: acc = 3 for every gate. i: 3 >= 0, 3 >= 2 -> 2 (pass); f: always 2; o: 3 >= 1 -> 2.
    # g = cand[3 + 8] = 6; c = c_prev + 6 = 10 + 6 = 16 -> saturates at 15; h = cell[15 >> 1 + 8]
    h, c, acc, q = lstm_step(layer, 0, np.array([[3]]), np.array([[0]]), np.array([[10]]))
    np.testing.assert_array_equal(acc, [[[3], [3], [3], [3]]])
    np.testing.assert_array_equal(q, [[[2], [2], [2]]])
    np.testing.assert_array_equal(c, [[15]])
    np.testing.assert_array_equal(h, [[7]])
    # x = 1: i = 1 (half), o = 2; g = cand[9] = 2 -> 1; c = -5 + 1 = -4; h = cell[-2 + 8] = -2
    h, c, _, q = lstm_step(layer, 0, np.array([[1]]), np.array([[0]]), np.array([[-5]]))
    np.testing.assert_array_equal(q, [[[1], [2], [2]]])
    np.testing.assert_array_equal(c, [[-4]])
    np.testing.assert_array_equal(h, [[-2]])
    # x = -1: i = 0, o = 0 (h = 0), f passes: c unchanged
    h, c, _, q = lstm_step(layer, 0, np.array([[-1]]), np.array([[0]]), np.array([[-5]]))
    np.testing.assert_array_equal(q, [[[0], [2], [0]]])
    np.testing.assert_array_equal((h, c), ([[0]], [[-5]]))


def test_wrong_reference_fails():
    layer = _tiny()
    h, _, _, _ = lstm_step(layer, 0, np.array([[3]]), np.array([[0]]), np.array([[10]]))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(h, [[8]])  # unsaturated cell: tanh index 16 >> 1
    rng = np.random.default_rng(1)
    layer = random_lstm(rng, 3, 4)
    x = rng.integers(0, 16, (3, 6, 3))
    out, _, _ = lstm_layer(layer, x)
    bad = layer.replace(cell_shift=layer.cell_shift + 1)
    assert not np.array_equal(out, lstm_layer(bad, x)[0])


@pytest.mark.parametrize("directions", [1, 2])
def test_masks_equal_separate_runs(directions):
    rng = np.random.default_rng(2)
    layer = random_lstm(rng, 4, 5, directions=directions)
    x = rng.integers(0, 16, (5, 9, 4))
    lengths = np.array([9, 1, 4, 7, 2])
    out, _, _ = lstm_layer(layer, x, lengths)
    for b, n in enumerate(lengths):
        alone, _, _ = lstm_layer(layer, x[b, :n])
        np.testing.assert_array_equal(out[b, :n], alone[0])
        np.testing.assert_array_equal(out[b, n:], 0)


def test_backward_direction_reads_reversed():
    rng = np.random.default_rng(3)
    bi = random_lstm(rng, 3, 4, directions=2)
    back = bi.replace(weights=bi.weights[1:], bias=bi.bias[1:],
                      gate_thresholds=bi.gate_thresholds[1:], cand_table=bi.cand_table[1:],
                      cell_table=bi.cell_table[1:], cand_shift=bi.cand_shift[1:],
                      cell_shift=bi.cell_shift[1:])
    x = rng.integers(0, 16, (2, 6, 3))
    out, _, _ = lstm_layer(bi, x)
    rev, _, _ = lstm_layer(back, x[:, ::-1])
    np.testing.assert_array_equal(out[:, :, 4:], rev[:, ::-1])


@pytest.mark.parametrize("encoding", [Ternary(), Pow2(0, 3), IntWeights(4)])
def test_file_round_trip(tmp_path, encoding):
    rng = np.random.default_rng(4)
    layer = random_lstm(rng, 3, 4, encoding, directions=2, returns="last")
    head = Dense(rng.integers(-3, 4, (3, 8)), IntWeights(3), layer.out_format)
    model = IntegerModel((layer, head), 0.5, name="lstm")
    model.save(tmp_path / "m.bfm")
    back = IntegerModel.load(tmp_path / "m.bfm")
    assert back.fingerprint() == model.fingerprint()
    x = rng.integers(0, 16, (4, 5, 3))
    lengths = np.array([5, 2, 1, 3])
    np.testing.assert_array_equal(execute(back, x, lengths).output,
                                  execute(model, x, lengths).output)
    assert predict(model, x, lengths).shape == (4,)
    assert back.layers[0].describe() == "bi-lstm 3->4 (last)"
    assert model.weight_bits > layer.weights.size
    assert back.layers[0].output.describe() == "h int6, last step"


def test_sequence_model_dense_per_step():
    rng = np.random.default_rng(5)
    layer = random_lstm(rng, 3, 4)
    head = Dense(rng.integers(-3, 4, (2, 4)), IntWeights(3), layer.out_format)
    model = IntegerModel((layer, head))
    x = rng.integers(0, 16, (2, 5, 3))
    trace = execute(model, x, [5, 3])
    assert trace.output.shape == (2, 5, 2)
    np.testing.assert_array_equal(trace.output[1, 3:], 0)
    np.testing.assert_array_equal(trace.output[0], trace.outputs[0][0] @ head.weights.T)


def test_bad_sequences():
    layer = _tiny()
    model = IntegerModel((layer,))
    with pytest.raises(ModelRangeError, match="more than the layer's max_length 8"):
        execute(model, np.zeros((1, 9, 1), dtype=int))
    with pytest.raises(ModelRangeError, match="has length 0: an empty sequence"):
        execute(model, np.zeros((2, 3, 1), dtype=int), [3, 0])
    with pytest.raises(ModelRangeError, match="more than the 3 steps given"):
        execute(model, np.zeros((1, 3, 1), dtype=int), [4])
    with pytest.raises(ModelRangeError, match=r"sequence 0, step 2, input 0: value 8 is outside "
                                              r"int4 \[-8, 7\]"):
        execute(model, np.array([[[1], [2], [8]]]))
    with pytest.raises(ModelRangeError, match=r"shape \(batch, steps, 1\)"):
        execute(model, np.zeros((1, 3, 2), dtype=int))
    with pytest.raises(ModelRangeError, match="must hold integers"):
        execute(model, np.full((1, 3, 1), 0.5))
    # padding is never read: a value out of range there is fine
    execute(model, np.array([[[1], [99]]]), [1])


def test_bad_layers():
    with pytest.raises(ModelFormatError, match="not ascending"):
        _tiny(gate_thresholds=np.array([[[[3, 2]], [[0, 0]], [[0, 0]]]]))
    with pytest.raises(ModelFormatError, match="cand_table size must be a power of two"):
        _tiny(cand_table=np.zeros((1, 12), dtype=int))
    with pytest.raises(ModelFormatError, match="cell_table values must fit the 4-bit hidden"):
        _tiny(cell_table=np.full((1, 16), 8))
    with pytest.raises(ModelFormatError, match="cand_table values must fit the 5-bit cell"):
        _tiny(cand_table=np.full((1, 16), 16))
    with pytest.raises(ModelFormatError, match="not ternary"):
        _tiny(weights=np.full((1, 4, 1, 2), 2))
    with pytest.raises(ModelFormatError, match="returns must be 'sequence' or 'last'"):
        _tiny(returns="all")
    with pytest.raises(ModelFormatError, match="acc_bits: declared 2 bits"):
        _tiny(acc_bits=2)
    with pytest.raises(ModelFormatError, match="input must be an int InputFormat"):
        _tiny(input=InputFormat.bipolar())
    with pytest.raises(ModelFormatError, match="max_length must be in"):
        _tiny(max_length=0)


def test_bitfab_info_reads_lstm(tmp_path):
    import json

    from click.testing import CliRunner

    from bitfab.cli import main

    rng = np.random.default_rng(6)
    layer = random_lstm(rng, 3, 4, returns="last")
    head = Dense(rng.integers(-3, 4, (2, 4)), IntWeights(3), layer.out_format)
    IntegerModel((layer, head)).save(tmp_path / "m.bfm")
    res = CliRunner().invoke(main, ["info", str(tmp_path / "m.bfm"), "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert facts["layers"][0]["kind"] == "lstm"
    assert facts["layers"][0]["output"] == "h int6, last step"
    assert facts["layers"][0]["datapath"] == "ternary"
    res = CliRunner().invoke(main, ["info", str(tmp_path / "m.bfm")])
    assert res.exit_code == 0 and "lstm" in res.output
