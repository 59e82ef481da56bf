"""The fast verification path (:mod:`bitfab.sim.fast`): the in-simulator test bench on Verilator
and Icarus, with random stalls and bubbles, against the golden model; a wrong reference fails it
with the first mismatch named as the cocotb bench names it; ``bitfab sim`` uses it by default."""

import numpy as np
import pytest

from bitfab import InputFormat, IntegerModel
from bitfab.examples import cnn, random_dense
from bitfab.hw.verilog import generate
from bitfab.sim import golden
from bitfab.sim.fast import bench_verilog, run_fast
from bitfab.sim.run import random_inputs
from bitfab.sim.verilog import Design, run_bench

pytestmark = pytest.mark.cocotb


def design_of(model, folder, **kwargs):
    facts = generate(model, folder, **kwargs)
    return Design.from_sidecar(folder / f"{facts['top']}.json")


def dense_model(tmp_path, n_in=24, n_out=5):
    layer = random_dense(np.random.default_rng(3), n_in, n_out, "ternary",
                         InputFormat.int(4, signed=True), "requant", thresholds=3, sparsity=0.25)
    model = IntegerModel((layer,), name="fast")
    model.save(tmp_path / "fast.bfm")
    return model, tmp_path / "fast.bfm"


@pytest.fixture(params=["verilator", "icarus"])
def simulator(request, tool):
    if request.param == "icarus":
        tool("iverilog", "Icarus is optional outside CI")
    return request.param


@pytest.mark.parametrize("fold", [None, (2, 4)], ids=["unrolled", "folded"])
def test_dense_layer_bit_exact_with_stalls_and_a_wrong_reference_fails(tmp_path, simulator,
                                                                        fold):
    model, path = dense_model(tmp_path)
    design = design_of(model, tmp_path / "rtl", layer=0, fold=fold, pipeline=1)
    x = random_inputs(model, 400, seed=1)[0]
    ok = run_fast(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=2)
    assert (ok.simulator, ok.vectors, ok.inputs, ok.mismatches, ok.first_mismatch) == \
        (simulator, 400, 400, 0, None)
    np.testing.assert_array_equal(model.out_stream.values(ok.outputs),
                                  golden.execute(model, x).output)
    # stalls and bubbles really happened: more cycles than the vectors need at full rate
    assert ok.cycles > 400 * max(design.initiation_interval, 1.2)
    bad = run_fast(design, path, x, simulator=simulator, p_bubble=0.3, p_stall=0.3, seed=2,
                   wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == 200
    expected, actual = bad.first_mismatch["expected"], bad.first_mismatch["actual"]
    assert expected != actual and expected[1:] == actual[1:]


def test_framed_image_stream(tmp_path, simulator):
    """A CNN reads an image one pixel a transfer, ``last`` on each image's final pixel."""
    model = cnn(np.random.default_rng(13), image=(6, 6, 1), channels=(2, 3), encoding="ternary")
    assert model.in_stream.framed
    model.save(tmp_path / "cnn.bfm")
    design = design_of(model, tmp_path / "rtl", pipeline=1)
    x = random_inputs(model, 30, seed=2)[0]
    ok = run_fast(design, tmp_path / "cnn.bfm", x, simulator=simulator, p_bubble=0.3,
                  p_stall=0.3, seed=3)
    assert (ok.vectors, ok.inputs, ok.mismatches) == (30, 30 * 36, 0)
    np.testing.assert_array_equal(model.out_stream.values(ok.outputs),
                                  golden.execute(model, x).output)
    bad = run_fast(design, tmp_path / "cnn.bfm", x, simulator=simulator, seed=3,
                   wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == 15


def test_framed_sequence_out_per_step(tmp_path, tool):
    """An lstm that answers every time step: a framed output, ``last`` compared as a column."""
    from bitfab.lstm import random_lstm
    from bitfab.model import Ternary
    tool("iverilog", "Icarus is optional outside CI")
    rng = np.random.default_rng(21)
    model = IntegerModel((random_lstm(rng, 3, 4, Ternary(), returns="sequence",
                                      max_length=16),), name="seq")
    assert model.in_stream.framed and model.out_stream.framed
    model.save(tmp_path / "seq.bfm")
    design = design_of(model, tmp_path / "rtl", pipeline=1)
    x = rng.integers(0, 16, (40, 7, 3))
    lengths = rng.integers(1, 8, 40)
    ok = run_fast(design, tmp_path / "seq.bfm", x, lengths, simulator="icarus", p_bubble=0.3,
                  p_stall=0.3, seed=4)
    steps = int(lengths.sum())
    assert (ok.vectors, ok.inputs, ok.mismatches) == (steps, steps, 0)
    want = golden.expected_rows(model, x, lengths)
    np.testing.assert_array_equal(ok.outputs, want)
    assert ok.outputs[:, -1].sum() == 40  # one last bit per sequence


def test_same_first_mismatch_as_the_cocotb_bench(tmp_path, tool):
    """Both benches hand the same outputs to the same checker: the same verdict, word for word."""
    tool("iverilog", "Icarus is optional outside CI")
    model, path = dense_model(tmp_path)
    design = design_of(model, tmp_path / "rtl", layer=0, pipeline=1)
    x = random_inputs(model, 60, seed=5)[0]
    runs = [f(design, path, x, simulator="icarus", seed=1, wrong_reference=True)
            for f in (run_fast, run_bench)]
    assert [r.first_mismatch for r in runs][0] == runs[1].first_mismatch
    assert [(r.vectors, r.inputs, r.mismatches) for r in runs] == [(60, 60, 1)] * 2
    np.testing.assert_array_equal(runs[0].outputs, runs[1].outputs)


def test_a_lost_output_is_a_timeout_and_a_mismatch(tmp_path):
    """A design that never answers: the bench gives up at its cycle limit."""
    model, path = dense_model(tmp_path)
    design = design_of(model, tmp_path / "rtl", layer=0, pipeline=1)
    x = random_inputs(model, 10, seed=5)[0]
    r = run_fast(design, path, x, simulator="verilator", p_stall=1.0, max_cycles=500)
    assert r.cycles == 500 and r.mismatches == 11  # 10 lost outputs and the timeout
    assert r.first_mismatch is not None


@pytest.mark.synth
def test_ice40_netlist(tmp_path, simulator):
    model, path = dense_model(tmp_path, n_in=12, n_out=3)
    design = design_of(model, tmp_path / "rtl", layer=0, pipeline=1)
    x = random_inputs(model, 200, seed=7)[0]
    ok = run_fast(design, path, x, simulator=simulator, netlist="ice40", p_bubble=0.3,
                  p_stall=0.3, seed=8)
    assert (ok.netlist, ok.vectors, ok.mismatches) == ("ice40", 200, 0)
    assert ok.flow
    bad = run_fast(design, path, x, simulator=simulator, netlist="ice40", seed=8,
                   wrong_reference=True)
    assert bad.mismatches == 1 and bad.first_mismatch["vector"] == 100


def test_bench_is_one_module_around_the_top():
    d = Design("x.v", "top", 3, 2, 2, 1, ports=dict(
        clk=None, rst=None, i_valid="i__valid", i_ready="i__ready", i_payload="i__payload",
        o_valid="o__valid", o_ready="o__ready", o_payload="o__payload"))
    text = bench_verilog(d, 6, 2)
    assert "reg [5:0] i_payload" in text and "wire [1:0] o_payload" in text
    assert ".clk(" not in text and ".rst(" not in text  # a combinational design: no clock port


def test_cli_bench_choice(tmp_path, capsys, tool):
    """``bitfab sim --bench``: fast by default, cocotb on request (and for a waveform); the
    verdicts agree."""
    import json

    from bitfab.cli import run
    tool("iverilog", "Icarus is optional outside CI")
    model, path = dense_model(tmp_path, n_in=10, n_out=3)
    verdicts = {}
    for bench in ("auto", "cocotb"):
        run(["sim", str(path), "--simulator", "icarus", "--vectors", "30", "--bench", bench,
             "--json"])
        verdicts[bench] = json.loads(capsys.readouterr().out)
    assert verdicts["auto"]["bench"] == "fast" and verdicts["cocotb"]["bench"] == "cocotb"
    assert [(v["vectors"], v["mismatches"]) for v in verdicts.values()] == [(30, 0)] * 2
    run(["sim", str(path), "--simulator", "icarus", "--vectors", "5", "--vcd",
         str(tmp_path / "w.vcd"), "--json"])
    assert json.loads(capsys.readouterr().out)["bench"] == "cocotb"
    assert (tmp_path / "w.vcd").exists()
