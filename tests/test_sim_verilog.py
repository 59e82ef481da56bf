"""The cocotb bench on Verilator and Icarus, down to the synthesized netlist, against the golden
model; and proof that the bench fails when the reference is wrong by one."""

import json

import numpy as np
import pytest

from bitfab import InputFormat, IntegerModel
from bitfab.cli import run
from bitfab.examples import mlp, random_dense
from bitfab.hw.verilog import generate
from bitfab.sim import golden
from bitfab.sim.run import random_inputs, simulate_model
from bitfab.sim.verilog import Design, run_bench

pytestmark = pytest.mark.cocotb

#: one small layer per datapath kind: (encoding, input format, output stage)
KINDS = {
    "xnor_popcount": ("binary", InputFormat.bipolar(), "threshold"),
    "ternary": ("ternary", InputFormat.int(4, signed=True), "requant"),
    "shift_add": ("pow2", InputFormat.int(4), "none"),
    "lut": ("lut", InputFormat.int(3, signed=True), "threshold"),
    "int": ("int", InputFormat.int(4), "none"),
}


def layer_model(tmp_path, kind, n_in=24, n_out=5):
    encoding, fmt, output = KINDS[kind]
    rng = np.random.default_rng(sum(map(ord, kind)))
    layer = random_dense(rng, n_in, n_out, encoding, fmt, output, thresholds=3, sparsity=0.25)
    model = IntegerModel((layer,), name=f"k_{kind}")
    path = tmp_path / f"{kind}.bfm"
    model.save(path)
    assert layer.datapath == kind
    return model, path


def design_of(model, tmp_path, **kwargs):
    facts = generate(model, tmp_path / "rtl", **kwargs)
    return Design.from_sidecar(tmp_path / "rtl" / f"{facts['top']}.json")


@pytest.fixture(params=["verilator", "icarus"])
def simulator(request, tool):
    if request.param == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    return request.param


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_datapath_is_bit_exact_and_a_wrong_reference_fails(tmp_path, kind, simulator):
    model, path = layer_model(tmp_path, kind)
    design = design_of(model, tmp_path, layer=0, pipeline=1)
    x = random_inputs(model, 1000, seed=1)[0]
    ok = run_bench(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=2)
    assert (ok.vectors, ok.mismatches, ok.first_mismatch) == (1000, 0, None)
    np.testing.assert_array_equal(
        model.layers[0].out_format.from_codes(ok.outputs), golden.execute(model, x).output)
    assert ok.cycles > 1000  # stalls and bubbles really happened
    bad = run_bench(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=2,
                    wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == 500
    expected, actual = bad.first_mismatch["expected"], bad.first_mismatch["actual"]
    assert expected != actual and expected[1:] == actual[1:]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_folded_datapath_on_icarus(tmp_path, kind, tool):
    """Folded layers (weights in a memory, per-fold constants selected by the fold counter) on
    the four-state simulator: a constant table written as an ``always @*`` block stayed X
    there until its selector changed, so the first vectors of a folded layer were X."""
    tool("iverilog", "Icarus is optional outside CI")
    model, path = layer_model(tmp_path, kind)
    design = design_of(model, tmp_path, layer=0, fold=(2, 4), pipeline=1)
    assert design.initiation_interval == 3 * 6  # 3 neuron folds x 6 synapse folds
    x = random_inputs(model, 300, seed=3)[0]
    r = run_bench(design, path, x, simulator="icarus", p_bubble=0.3, p_stall=0.3, seed=4)
    assert (r.vectors, r.mismatches, r.first_mismatch) == (300, 0, None)
    np.testing.assert_array_equal(
        model.layers[0].out_format.from_codes(r.outputs), golden.execute(model, x).output)


def test_folded_network_and_combinational_layer_on_verilator(tmp_path):
    model = mlp(np.random.default_rng(4), (32, 16, 6), "binary", name="fold")
    path = tmp_path / "fold.bfm"
    model.save(path)
    x = random_inputs(model, 1000, seed=3)[0]
    folded = design_of(model, tmp_path / "f", fold=(2, 8), pipeline=1)
    assert folded.initiation_interval > 1
    r = run_bench(folded, path, x, simulator="verilator", seed=5)
    assert (r.vectors, r.mismatches) == (1000, 0)
    comb = design_of(model, tmp_path / "c", layer=0, pipeline=0)
    assert comb.ports["clk"] is None  # no register at all: the bench runs a virtual clock
    r = run_bench(comb, path, x, simulator="verilator", seed=6)
    assert (r.vectors, r.mismatches) == (1000, 0)


@pytest.mark.synth
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("family, sim", [("ice40", "verilator"), ("ice40", "icarus"),
                                         ("ecp5", "verilator")])
def test_synthesized_netlist_is_bit_exact(tmp_path, tool, kind, family, sim):
    if sim == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    model, path = layer_model(tmp_path, kind, n_in=16, n_out=4)
    design = design_of(model, tmp_path, layer=0, pipeline=1)
    x = random_inputs(model, 1000, seed=7)[0]
    r = run_bench(design, path, x, simulator=sim, netlist=family, seed=8)
    assert (r.netlist, r.vectors, r.mismatches) == (family, 1000, 0)
    bad = run_bench(design, path, x, simulator=sim, netlist=family, seed=8,
                    wrong_reference=True)
    assert bad.mismatches == 1


def test_bitfab_sim_cli_verdict_and_mismatch_report(tmp_path, capsys, monkeypatch):
    model = mlp(np.random.default_rng(9), (20, 8, 4), "ternary", name="cli")
    path = tmp_path / "cli.bfm"
    model.save(path)
    x = random_inputs(model, 50, seed=1)[0]
    np.save(tmp_path / "x.npy", x)
    run(["sim", str(path), "--simulator", "verilator", "--inputs", str(tmp_path / "x.npy"),
         "--json"])  # returns normally: exit status 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["simulator"] == "verilator" and verdict["vectors"] == 50
    assert verdict["mismatches"] == 0 and verdict["cycles_per_s"] > 0
    assert verdict["bench"] == "fast"  # the default: the in-simulator bench, not cocotb
    # a wrong reference: the command exits 1 and names vector, expected and actual values
    import bitfab.sim.fast as fast
    real = fast.run_fast
    monkeypatch.setattr(fast, "run_fast",
                        lambda *a, **k: real(*a, **{**k, "wrong_reference": True}))
    with pytest.raises(SystemExit) as bad:
        run(["sim", str(path), "--simulator", "verilator", "--vectors", "40"])
    out, err = capsys.readouterr()
    assert bad.value.code == 1
    assert "first mismatch: vector 20" in out
    assert err.startswith("error: 1 of 40 vectors differ from the golden model; first: ")
    assert '"expected": [' in err and '"actual": [' in err


def test_amaranth_simulator_through_the_same_command(tmp_path):
    model = mlp(np.random.default_rng(2), (12, 6, 3), "pow2", name="am")
    model.save(tmp_path / "am.bfm")
    r = simulate_model(tmp_path / "am.bfm", simulator="amaranth", vectors=60, stall=0.3)
    assert (r.simulator, r.vectors, r.mismatches) == ("amaranth", 60, 0)
    assert r.cycles >= 60


@pytest.mark.train
@pytest.mark.slow  # Verilator on the whole digits test split
def test_trained_model_on_its_real_test_inputs(tmp_path):
    """A network trained by quant/ on digits, simulated on its test split, equals the golden
    model (and hence, by quant's own tests, the torch reference) on every image."""
    import torch

    from bitfab.quant.data import load_dataset
    from bitfab.quant.recipes import TrainConfig
    from bitfab.quant.train import export, fit

    torch.set_num_threads(1)
    data = load_dataset("digits", 0)
    result = fit(TrainConfig("ternary", "digits", hidden=(16,), epochs=3, seed=0), data)
    model = export(result)
    path = tmp_path / "digits.bfm"
    model.save(path)
    r = simulate_model(path, simulator="verilator", inputs=data.x_test, stall=0.1)
    assert (r.vectors, r.mismatches) == (len(data.x_test), 0)
    preds = golden.predict(model, data.x_test)
    assert np.mean(preds == data.y_test) > 0.5  # a real network, not noise


@pytest.mark.parametrize("sim", ["amaranth", "icarus"])
def test_vcd_waveform_on_request(tmp_path, tool, sim):
    if sim == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    model = mlp(np.random.default_rng(3), (10, 4, 2), "binary", name="wave")
    model.save(tmp_path / "wave.bfm")
    vcd = tmp_path / f"{sim}.vcd"
    r = simulate_model(tmp_path / "wave.bfm", simulator=sim, vectors=10, vcd=vcd)
    assert r.mismatches == 0 and r.vcd == str(vcd)
    text = vcd.read_text()
    assert "$enddefinitions" in text and "valid" in text


@pytest.mark.synth
@pytest.mark.slow
@pytest.mark.parametrize("kind, family", [("xnor_popcount", "ice40"), ("ternary", "ice40"),
                                          ("shift_add", "ecp5")])
def test_bit_heap_and_shared_chains_netlist_is_bit_exact(tmp_path, kind, family):
    """The compressors of issue 17 switched on (bit heaps for wide terms, adders sharing carry
    chains through junction cells) down to the synthesized iCE40 and ECP5 netlists: 32 inputs,
    so that the popcounts, column counts and shared totals really get chained levels."""
    from bitfab.hw import adder_tree
    model, path = layer_model(tmp_path, kind, n_in=32, n_out=4)
    with adder_tree.structure(bit_heap=True, chain_cells=24):
        design = design_of(model, tmp_path, layer=0, pipeline=1)
    assert "_chain" in design.verilog.read_text()  # the junctions are in the Verilog
    x = random_inputs(model, 1000, seed=7)[0]
    r = run_bench(design, path, x, simulator="verilator", netlist=family, seed=8)
    assert (r.netlist, r.vectors, r.mismatches) == (family, 1000, 0)
    bad = run_bench(design, path, x, simulator="verilator", netlist=family, seed=8,
                    wrong_reference=True)
    assert bad.mismatches == 1
