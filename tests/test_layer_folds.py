"""Per-layer folds: ``--fold balanced`` and ``--fold LAYER=PE,SIMD,...`` on every command that
builds hardware, refused by name before any work, and a balanced CNN on the Verilator bench
against the golden model."""

import json

import numpy as np
import pytest
from conftest import bitfab_cli

from bitfab.examples import cnn
from bitfab.hw.config import ConfigError, LayerFolds, fold_text, parse_layer_folds
from bitfab.hw.conv import balanced_configs
from bitfab.hw.layer import network_configs, resolve_fold


def _cnn():
    # conv0 (9 inputs) - pool0 - conv1 (18 inputs) - pool1 - flatten - fc (3 inputs, 10 outputs)
    return cnn(np.random.default_rng(13), image=(6, 6, 1), channels=(2, 3), encoding="ternary",
               name="cnn")


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("layer_folds") / "cnn.bfm"
    _cnn().save(path)
    return path


def test_layer_folds_by_name_index_and_balanced():
    model = _cnn()
    folds = resolve_fold(model, "conv1=1,6; 5=2,3", 1)
    assert folds == LayerFolds((None, None, (1, 6), None, None, (2, 3)))
    got = [(c.architecture, c.pe, c.simd) for c in network_configs(model, folds, 1)]
    assert got[2] == ("folded", 1, 6) and got[5] == ("folded", 2, 3)
    assert got[0] == ("unrolled", None, None)  # a layer not named stays unrolled
    # the text it reports builds the same folds again
    assert fold_text(folds) == "2=1,6,5=2,3" and resolve_fold(model, fold_text(folds), 1) == folds
    balanced = resolve_fold(model, "balanced", 1)
    want = [(c.pe, c.simd) if c.architecture == "folded" else None
            for c in balanced_configs(model, 1)]
    assert list(balanced) == want and any(want)
    # one network-wide fold and none are what they were
    assert resolve_fold(model, "1,8", 1) == (1, 8) and resolve_fold(model, None, 1) is None
    assert parse_layer_folds("a=unrolled,b = 2 , 4") == (("a", None), ("b", (2, 4)))
    # --layer N takes that layer's own fold
    from bitfab.cli.ui import parse_fold
    assert parse_fold("conv1=1,6", model, 1, layer=2) == (1, 6)
    assert parse_fold("conv1=1,6", model, 1, layer=0) is None


_LAYERS = "layers: 0 conv0, 1 pool0, 2 conv1, 3 pool1, 4 flatten, 5 fc"


@pytest.mark.parametrize("text, message", [
    ("fc9=1,2", rf"fold fc9=1,2: layer 'fc9' does not exist in cnn \({_LAYERS}\)"),
    ("6=1,1", rf"fold 6=1,1: layer '6' does not exist in cnn \({_LAYERS}\)"),
    ("fc=2,2", r"fold fc=2,2: layers\[5\] \(fc\): simd must divide in_features \(3\), not 2"),
    ("pool0=1,1", r"fold pool0=1,1: layers\[1\] \(pool0\) is a maxpool layer, which has no "
                  r"weights to fold"),
    ("conv1=1,3,2=1,6", r"fold 2=1,6: layers\[2\] is given twice"),
    ("conv1=0,3", r"fold of conv1 must be two positive integers, not '0,3'"),
    ("conv1=1", r"fold must be 'PE,SIMD', 'balanced' or 'LAYER=PE,SIMD,...', not "
                r"'conv1=1'"),
    ("balance", r"fold must be 'PE,SIMD' with two positive integers, 'balanced' or "
                r"'LAYER=PE,SIMD,...', not 'balance'"),
])
def test_bad_layer_folds_are_refused_by_name(text, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        resolve_fold(_cnn(), text, 1)


@pytest.mark.parametrize("command", [
    ["verilog", "{model}", "--out", "{tmp}/v"],
    ["sim", "{model}", "--simulator", "verilator"],
    ["synth", "{model}", "--board", "icebreaker", "--clock", "12", "--out", "{tmp}/s"],
    ["board", "run", "{model}", "--simulate"],
], ids=["verilog", "sim", "synth", "board-run"])
def test_every_command_refuses_a_bad_layer_fold_before_any_work(cnn_file, capsys, tmp_path,
                                                                 command):
    args = [a.format(model=cnn_file, tmp=tmp_path) for a in command]
    code, out, err = bitfab_cli(capsys, *args, "--fold", "fc=2,2")
    assert code == 1 and out == ""
    assert err == "error: fold fc=2,2: layers[5] (fc): simd must divide in_features (3), " \
                  "not 2\n"
    assert list(tmp_path.iterdir()) == []  # no output folder, no build


def test_balanced_cnn_on_verilator_matches_golden(cnn_file, capsys, tmp_path):
    code, out, err = bitfab_cli(capsys, "verilog", cnn_file, "--out", tmp_path, "--fold",
                                "balanced", "--json")
    assert code == 0, err
    facts = json.loads(out)
    arch = [(la["config"]["architecture"], la["config"]["pe"], la["config"]["simd"])
            for la in facts["layers"]]
    folds = resolve_fold(_cnn(), "balanced", 1)
    assert arch == [("unrolled", None, None) if f is None else ("folded", *f) for f in folds]
    code, out, err = bitfab_cli(capsys, "sim", cnn_file, "--simulator", "verilator", "--fold",
                                "balanced", "--vectors", "20", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["vectors"], result["mismatches"], result["bench"]) == (20, 0, "fast")


@pytest.mark.synth
def test_synth_builds_and_reports_per_layer_folds(tmp_path):
    """yosys only: the board top-level of a balanced CNN, its report naming each layer's fold."""
    from rich.console import Console

    from bitfab.boards.build import synthesize
    from bitfab.boards.report import report_table
    model = _cnn()
    folds = resolve_fold(model, "balanced", 1)
    report = synthesize(model, "icebreaker", fold=folds, place=False, clock_hz=12e6,
                        out=tmp_path / "s").report
    assert report["fold"] == folds.to_json()
    assert [(la["pe"], la["simd"]) for la in report["layers"]] == \
        [(None, None) if f is None else f for f in folds]
    con = Console(width=200, record=True)
    con.print(report_table(report))
    assert f"(fold {folds.text()})" in con.export_text()  # a --fold that builds it again


def test_a_layer_kind_that_does_not_fold_is_refused_by_name(monkeypatch):
    """Every kind with weights folds today: the lstm kind stands in for one that does not."""
    import dataclasses

    from bitfab.hw import kinds
    from bitfab.lstm import random_lstm
    from bitfab.model import IntegerModel
    layer = random_lstm(np.random.default_rng(0), 3, 4, returns="last")
    monkeypatch.setitem(kinds._KINDS, "lstm",
                        dataclasses.replace(kinds.hw_kind(layer), foldable=False))
    model = IntegerModel((layer,), name="cell")
    with pytest.raises(ConfigError, match=r"^fold 0=1,1: layers\[0\] is an lstm layer, "
                                          r"which cannot be folded yet"):
        resolve_fold(model, "0=1,1", 1)
    assert resolve_fold(model, "0=unrolled", 1) == LayerFolds((None,))
