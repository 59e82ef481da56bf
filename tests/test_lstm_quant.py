"""quant/ LSTM: gate quantizer, export, torch integer eval == golden model, F1, the recipe."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bitfab.cli import main
from bitfab.errors import BitfabError
from bitfab.model import InputFormat, IntegerModel
from bitfab.quant import lstm_train
from bitfab.quant.evaluate import reference
from bitfab.quant.lstm import (
    QuantLstm,
    fake_fixed,
    gate_quant,
    integer_lstm,
    reverse_padded,
)
from bitfab.quant.lstm_data import (
    FEATURES,
    SHAPES,
    entities,
    entity_f1,
    load_ner,
    parse_conll,
)
from bitfab.quant.lstm_train import (
    CHAR_FEATURES,
    LstmConfig,
    evaluate_integer,
    fit_lstm,
    integer_forward,
    ner_inputs,
)
from bitfab.sim.golden import execute
from bitfab.sim.lstm import lstm_layer, lstm_step, table_lookup


def test_gate_quant_values_and_gradient():
    z = torch.linspace(-6, 6, 1001, requires_grad=True)
    q = gate_quant(z)
    assert set(q.tolist()) == {0.0, 0.5, 1.0}
    # the two thresholds on the pre-activation: -ln 3 and +ln 3
    expected = (z.detach() >= -np.log(3)).float() / 2 + (z.detach() >= np.log(3)).float() / 2
    np.testing.assert_array_equal(q.detach().numpy(), expected.numpy())
    q.sum().backward()
    s = torch.sigmoid(z.detach())
    np.testing.assert_array_equal(z.grad.numpy(), (s * (1 - s)).numpy())
    assert z.grad.min() > 0  # the straight-through gradient passes everywhere


def test_fake_fixed_and_reverse():
    x = torch.tensor([0.3, -2.0, 0.999, 0.0625], requires_grad=True)
    y = fake_fixed(x, 4)
    assert y.tolist() == [0.25, -1.0, 0.875, 0.125]  # half-up: 0.0625 * 8 = 0.5 -> 1
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4
    seq = torch.arange(8).reshape(2, 4, 1)
    out = reverse_padded(seq, torch.tensor([4, 2]))
    assert out[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


def _coverage(layer, x, lengths, hs, cs):
    """Replay every valid step of ``lstm_layer`` with ``lstm_step`` from its recorded states.

    Returns the gate codes seen for i, f, o (three sets), the table indices looked up in the
    candidate and the cell tanh tables (two sets) and every cell value.
    """
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    codes, cand, cell, cells = [set(), set(), set()], set(), set(), []
    for d, (h_all, c_all) in enumerate(zip(hs, cs)):
        h_prev, c_prev = np.zeros_like(h_all), np.zeros_like(c_all)  # the state before a step
        if d == 0:
            h_prev[:, 1:], c_prev[:, 1:] = h_all[:, :-1], c_all[:, :-1]
        else:  # backward: position t follows t + 1 (0 after a sequence's end: padding)
            h_prev[:, :-1], c_prev[:, :-1] = h_all[:, 1:], c_all[:, 1:]
        h, c, acc, q = lstm_step(layer, d, x[valid], h_prev[valid], c_prev[valid])
        np.testing.assert_array_equal(h, h_all[valid])  # the replay is the recorded run
        np.testing.assert_array_equal(c, c_all[valid])
        for k in range(3):
            codes[k] |= set(q[:, k].ravel().tolist())
        sizes = layer.table_sizes
        cand |= set(table_lookup(np.arange(sizes[0]), acc[:, 2], layer.cand_shift[d]).ravel()
                    .tolist())
        cell |= set(table_lookup(np.arange(sizes[1]), c, layer.cell_shift[d]).ravel().tolist())
        cells.append(c.ravel())
    return codes, cand, cell, np.concatenate(cells)


@pytest.mark.parametrize("weights,directions,output", [
    ("ternary", 2, "sequence"), ("pow2", 1, "last"), ("int8", 2, "last")])
def test_integer_eval_equals_golden(weights, directions, output):
    torch.manual_seed(0)
    lstm = QuantLstm(6, 9, directions, True, weights, hidden_bits=6, output=output)
    with torch.no_grad():
        lstm.weight.mul_(4)  # big weights: every gate code and table end occurs
        lstm.bias.normal_(0, 1)
    layer = lstm.to_integer(InputFormat.int(6, signed=True), cell_bits=12, table_bits=(6, 5),
                            max_length=20)
    rng = np.random.default_rng(1)
    x = rng.integers(-32, 32, (40, 20, 6))
    lengths = rng.integers(1, 21, 40)
    golden, hs, cs = lstm_layer(layer, x, lengths)
    np.testing.assert_array_equal(integer_lstm(layer, x, lengths).numpy(), golden)
    # the inputs exercise the whole cell: each gate takes every code 0, 1, 2 (0, 0.5, 1) and no
    # other, both ends of both tanh tables are read, and the cell state saturates
    codes, cand, cell, c = _coverage(layer, x, lengths, hs, cs)
    assert codes == [{0, 1, 2}] * 3
    assert {0, layer.table_sizes[0] - 1} <= cand and {0, layer.table_sizes[1] - 1} <= cell
    assert c.min() == layer.cell_range[0] or c.max() == layer.cell_range[1]
    # a deliberately wrong reference fails
    wrong = layer.replace(cell_table=np.roll(layer.cell_table, 1, axis=1))
    assert not np.array_equal(integer_lstm(wrong, x, lengths).numpy(), golden)


def test_float_gates_do_not_export():
    lstm = QuantLstm(3, 4, 1, True, "float")
    with pytest.raises(BitfabError, match="gate weights 'float' have no integer form"):
        lstm.to_integer(InputFormat.int(8, signed=True))
    with pytest.raises(BitfabError, match="lstm weights must be one of"):
        QuantLstm(3, 4, 1, True, "binary")


def test_entities_and_f1_by_hand():
    assert entities(["B-a", "I-a", "I-b", "O", "B-a"]) == {("a", 0, 2), ("b", 2, 3), ("a", 4, 5)}
    true = [["B-per", "I-per", "O", "B-loc"], ["O", "B-org"]]
    pred = [["B-per", "I-per", "O", "B-org"], ["O", "B-org"]]
    # true: per(0,2), loc(3,4), org(1,2); pred: per, org(3,4), org(1,2): tp 2, P 2/3, R 2/3
    assert entity_f1(true, pred) == pytest.approx(2 / 3, abs=0, rel=1e-12)
    assert entity_f1([["O"]], [["O"]]) == 0.0
    pred = [["B-per", "B-per", "O", "B-loc"], ["O", "I-org"]]
    # per(0,1), per(1,2), loc, org(1,2) (I- starts a chunk): tp 2 (loc, org), P 2/4, R 2/3
    assert entity_f1(true, pred) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), rel=1e-12)
    import seqeval.metrics as seqeval  # a train dependency: missing is a failure, not a skip
    assert entity_f1(true, pred) == pytest.approx(seqeval.f1_score(true, pred), rel=1e-12)


def test_ner_corpus():
    data = load_ner(0)
    assert len(data.tags) == len(data.ids) == 2394
    types = {t.split("-", 1)[1] for t in data.tag_names if t != "O"}
    assert len(types) == 10
    assert len(data.train) + len(data.test) == 2394
    assert max(len(t) for t in data.tags) <= 64
    # every feature: ids inside its table; word and shape ids as the first recipe had them
    full = load_ner(0, features=FEATURES, buckets=64)
    assert full.sizes == (len(data.vocab), len(SHAPES), 64, 64, 64, 64, 64)
    ids = np.concatenate(full.ids)
    assert np.all(ids >= 1) and np.all(ids.max(0) < full.sizes)  # 0 is padding
    np.testing.assert_array_equal(ids[:, :2], np.concatenate(data.ids))
    with pytest.raises(BitfabError, match="buckets must be an integer in 2.."):
        load_ner(0, features=("word", "suf3"), buckets=1)
    with pytest.raises(BitfabError, match="ner features must be distinct names"):
        load_ner(0, features=("word", "word"))
    assert parse_conll("a\tO\nB\tB-x\n \t\nc\tO\n") == [(["a", "B"], ["O", "B-x"]), (["c"], ["O"])]
    with pytest.raises(BitfabError, match="is not 'word<TAB>tag'"):
        parse_conll("a O\n")


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory):
    """A tagger with the hashed character features after a very short training, saved and
    loaded again, with its data."""
    config = LstmConfig("ner", True, "ternary", hidden=8, epochs=1, limit=150,
                        features=CHAR_FEATURES, o_weight=0.4, word_dropout=0.1, dropout=0.1)
    result = fit_lstm(config)
    path = tmp_path_factory.mktemp("ner") / "ner.bfm"
    result.model.save(path)
    return result, IntegerModel.load(path)


@pytest.mark.train
def test_ner_export_bit_exact_on_real_sentences(ner_model):
    result, model = ner_model
    data = result.data
    assert model.metadata["ner_features"] == list(result.config.features)
    codes = result.net.embedding_codes()
    for feature, rows in zip(data.features, data.sizes):  # one table per feature, round trip
        np.testing.assert_array_equal(model.extras[f"{feature}_embedding"], codes[feature])
        assert codes[feature].shape == (rows, result.config.feature_dim(feature))
    ids, _, lengths = data.batch(data.test[:60])
    x = ner_inputs(model, ids)
    assert x.shape[2] == model.in_features == sum(map(result.config.feature_dim, data.features))
    h, logits = integer_forward(model, x, lengths)
    trace = execute(model, x, lengths)
    np.testing.assert_array_equal(trace.outputs[0], h.numpy())
    np.testing.assert_array_equal(trace.output, logits.numpy())
    # the eval path rebuilds the same ids from the metadata alone, and scores what training did
    x_all, lengths_all, _, name, metric = lstm_train.test_split(model)
    ids_all, _, _ = data.batch(data.test)
    np.testing.assert_array_equal(x_all, ner_inputs(model, ids_all))
    assert (name, metric) == ("ner", "entity F1")
    assert evaluate_integer(model, data) == result.score
    # a wrong table gives other inputs: the lookup really reads the extras
    wrong = model.replace(extras={**model.extras, "suf3_embedding":
                                  np.roll(model.extras["suf3_embedding"], 1, axis=0)})
    assert not np.array_equal(ner_inputs(wrong, ids), x)


@pytest.mark.train
def test_ner_inputs_refuse_bad_ids(ner_model):
    _, model = ner_model
    features = model.metadata["ner_features"]
    ids = np.zeros((2, 3, len(features)), dtype=np.int64)
    k = features.index("pre3")
    ids[1, 2, k] = len(model.extras["pre3_embedding"])  # one past the table
    with pytest.raises(BitfabError, match=r"^ner token id 512 of feature 'pre3' is outside its "
                                          r"pre3_embedding table \(ids 0..511\)$"):
        ner_inputs(model, ids)
    ids[1, 2, k] = -1
    with pytest.raises(BitfabError, match="token id -1 of feature 'pre3'"):
        ner_inputs(model, ids)
    with pytest.raises(BitfabError, match=r"ner token ids must be an integer array \(batch, T, "):
        ner_inputs(model, ids[..., :2])
    bad = model.replace(metadata={**model.metadata, "ner_features": ["word", "char"]})
    with pytest.raises(BitfabError, match="ner features must be distinct names among"):
        ner_inputs(bad, ids)


@pytest.mark.train
def test_old_word_shape_model_still_evaluates(tmp_path):
    """A model of the first NER recipe (word + shape tables, no feature metadata) evaluates."""
    config = LstmConfig("ner", True, "pow2", hidden=6, epochs=1, limit=100,
                        features=("word", "shape"))
    result = fit_lstm(config)
    meta = {k: v for k, v in result.model.metadata.items() if not k.startswith("ner_")}
    old = result.model.replace(metadata=meta)
    old.save(tmp_path / "old.bfm")
    old = IntegerModel.load(tmp_path / "old.bfm")
    assert set(old.extras) == {"word_embedding", "shape_embedding"}
    ref = reference(old)
    np.testing.assert_array_equal(execute(old, ref.x[:60], ref.lengths[:60]).output,
                                  ref.outputs[:60])
    data = load_ner(0)  # the first recipe's ids: word and shape, min_count 2
    ids, _, _ = data.batch(data.test)
    words, shapes = ids[..., 0], ids[..., 1]
    np.testing.assert_array_equal(ref.x, np.concatenate(
        [old.extras["word_embedding"][words], old.extras["shape_embedding"][shapes]], axis=-1))


@pytest.mark.train
def test_digits_rows_train_and_cli(tmp_path):
    out = tmp_path / "digits.bfm"
    res = CliRunner().invoke(main, ["train", "--recipe", "lstm-gates", "--dataset", "digits",
                                    "--epochs", "3", "--hidden", "16", "--limit", "600",
                                    "--option", "weights=pow2", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["score"] > 0.5 and summary["float_score"] > 0.5
    assert summary["delta_points"] == pytest.approx(
        100 * (summary["score"] - summary["float_score"]))
    model = IntegerModel.load(out)
    from bitfab.quant.lstm_data import row_sequences
    _, _, x_test, y_test, steps, _ = row_sequences("digits", 0)
    lengths = np.full(len(x_test), steps)
    golden = execute(model, x_test, lengths).output
    np.testing.assert_array_equal(golden, integer_forward(model, x_test, lengths)[1].numpy())
    assert np.mean(golden.argmax(1) == y_test) == pytest.approx(summary["score"], abs=0)


def test_recipe_bad_options():
    res = CliRunner().invoke(main, ["train", "--recipe", "lstm-gates", "--option", "K=3"])
    assert isinstance(res.exception, BitfabError)  # bitfab.cli.run prints it on one line
    assert "recipe 'lstm-gates' takes options weights" in str(res.exception)
    cfg = lstm_train.lstm_config("ner", None, 3, None, {"features": "word+shape+suf3",
                                                         "o_weight": 0.5}, None)
    assert cfg.features == ("word", "shape", "suf3") and cfg.o_weight == 0.5 and cfg.seed == 3
    assert {k: getattr(cfg, k) for k in ("hidden", "epochs", "lr", "buckets")} == {
        k: lstm_train.NER_DEFAULTS[k] for k in ("hidden", "epochs", "lr", "buckets")}
    with pytest.raises(BitfabError, match=r"^word_dropout must be below 1, not 1.0$"):
        LstmConfig(word_dropout=1.0)
    with pytest.raises(BitfabError, match="ner features must be distinct names among"):
        lstm_train.lstm_config("ner", None, 0, None, {"features": "word+chars"}, None)


def test_doctests():
    import doctest

    from bitfab.quant import lstm, lstm_data
    from bitfab.sim import lstm as golden_lstm
    for module in (lstm, lstm_data, golden_lstm):
        failed, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried and not failed, module.__name__
