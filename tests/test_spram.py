"""Folded weights in iCE40 UP SPRAM (no initial contents): the load path in the Amaranth
simulation, on the simulated board over the UART, in the iCE40 netlist with SB_SPRAM256KA, and
the fit estimator's placement and refusals."""

import numpy as np
import pytest
from amaranth.back import verilog

from bitfab.boards.build import FitError, choose_fold, memory_blocks, plan_weights, synthesize
from bitfab.boards.host import BoardClient
from bitfab.boards.protocol import ProtocolError, load_crc
from bitfab.boards.simboard import simulated_board
from bitfab.boards.targets import get_board
from bitfab.examples import mlp
from bitfab.hw.config import ConfigError, LayerConfig
from bitfab.hw.layer import Network, build_network, network_configs, weight_image
from bitfab.hw.spram import BootLoad, Ice40Cells
from bitfab.sim import golden
from bitfab.sim.amaranth_sim import outputs_of, run_stream
from bitfab.sim.verilog import Design, run_bench


def small(seed=3):
    rng = np.random.default_rng(seed)
    model = mlp(rng, (16, 12, 5), "binary", name="small")
    x = 2 * rng.integers(0, 2, size=(6, 16)) - 1
    return model, x


def corrupt(image):
    return image ^ np.uint16(0xFFFF)  # every weight negated


def test_load_image_is_the_weight_words_in_16_bit_columns():
    model, _ = small()
    cfg = LayerConfig.folded(model.layers[0], 3, 16, 1, weights="spram")  # 48-bit words
    assert (cfg.spram_columns, cfg.weight_depth, cfg.spram_blocks) == (3, 4, 3)
    image = cfg.load_image()
    words = [int(image[3 * a]) | int(image[3 * a + 1]) << 16 | int(image[3 * a + 2]) << 32
             for a in range(4)]
    assert words == cfg.weight_words()
    with pytest.raises(ConfigError, match="folded layer only"):
        LayerConfig(model.layers[0], "unrolled", weights="spram")
    with pytest.raises(ConfigError, match="no folded dense weight memory"):
        network_configs(model, None, 1, ("spram", None))


@pytest.mark.parametrize("fold", [(2, 4), (3, 16)])
def test_spram_network_loads_then_matches_golden(fold):
    model, x = small()
    net = build_network(model, fold, 1, "spram")
    assert net.spram_layers == (0, 1)
    image = net.load_image()
    run = run_stream(BootLoad(net, image), model.in_stream.pack(x), stall=0.3, bubble=0.3)
    np.testing.assert_array_equal(outputs_of(model.out_stream, run.outputs),
                                  golden.execute(model, x).output)
    # a wrong load gives wrong answers: the check above would fail
    bad = run_stream(BootLoad(build_network(model, fold, 1, "spram"), corrupt(image)),
                     model.in_stream.pack(x))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(outputs_of(model.out_stream, bad.outputs),
                                      golden.execute(model, x).output)


def test_simulated_board_refuses_inputs_until_a_good_load():
    model, x = small()
    image = weight_image(network_configs(model, (2, 4), 1, "spram"))
    with simulated_board(model, (2, 4), weights="spram") as transport:
        client = BoardClient(transport, model, window=1)
        client.check_board()
        with pytest.raises(ProtocolError, match="CRC differs"):
            client.load_weights(corrupt(image))
        with pytest.raises(ProtocolError, match="weights not loaded"):
            client.run(x)
        client = BoardClient(transport, model, weights=image)
        run = client.run(x)  # identify, load, then the vectors
        assert client.loaded
        np.testing.assert_array_equal(run.outputs, golden.execute(model, x).output)


def test_board_run_simulate_with_weights_in_spram(tmp_path, capsys):
    from bitfab.cli import run
    model, _ = small()
    path = tmp_path / "small.bfm"
    model.save(path)
    run(["board", "run", str(path), "--simulate", "--fold", "2,4", "--weights-in", "spram",
         "--vectors", "3", "--json"])
    import json
    out = json.loads(capsys.readouterr().out)
    assert (out["vectors"], out["mismatches"]) == (3, 0)


@pytest.mark.synth
@pytest.mark.slow
def test_ice40_netlist_with_sb_spram256ka_is_bit_exact(tmp_path):
    # the wrong-load case is the Amaranth tests' (a second netlist would double the yosys time)
    model, _ = small()
    path = tmp_path / "small.bfm"
    model.save(path)
    x = 2 * np.random.default_rng(5).integers(0, 2, size=(40, 16)) - 1
    # one layer in SPRAM (48-bit words: three SB_SPRAM256KA side by side), one in block RAM
    configs = network_configs(model, (3, 16), 1, ("spram", None))
    top = BootLoad(Network(configs), weight_image(configs))
    source = verilog.convert(top, name="top", emit_src=False, platform=Ice40Cells())
    assert source.count("SB_SPRAM256KA") == 3
    (tmp_path / "top.v").write_text(source)
    design = Design(tmp_path / "top.v", "top", 16, 1, 5, model.layers[-1].out_bits,
                    top.latency, top.initiation_interval)
    r = run_bench(design, path, x, simulator="icarus", netlist="ice40", seed=2)
    assert (r.netlist, r.vectors, r.mismatches) == ("ice40", 40, 0)
    bad = run_bench(design, path, x, simulator="icarus", netlist="ice40", seed=2,
                    wrong_reference=True)  # the cached netlist, a corrupted expectation
    assert bad.mismatches == 1


def test_fit_places_the_largest_layers_in_spram_and_refuses_what_fits_nowhere():
    rng = np.random.default_rng(1)
    big = mlp(rng, (784, 256, 256, 10), "binary", name="big")
    ice = get_board("icebreaker")
    assert memory_blocks(big, (2, 16), ice) > ice.limits.bram
    plan = plan_weights(big, (2, 16), ice)
    assert plan == ("spram", None, None)  # the 200 kbit layer only: the rest fits EBR
    assert memory_blocks(big, (2, 16), ice, plan) <= ice.limits.bram
    assert plan_weights(mlp(rng, (16, 8, 4), "binary"), (2, 4), ice) is None  # fits EBR
    for name in ("ice40-hx8k", "ulx3s"):
        with pytest.raises(FitError, match=r"has no SPRAM .*layers\[0\] \(200704 weight bits"):
            plan_weights(big, (2, 16), get_board(name), "spram")
    with pytest.raises(FitError, match=r"layers\[0\] \(200704 weight bits.*32 \(131072 bits\) "
                                       r"available \(no SPRAM\)"):
        plan_weights(big, (2, 16), get_board("ice40-hx8k"))
    huge = mlp(rng, (2048, 640, 2), "binary", name="huge")  # 1.3 Mbit in one layer
    with pytest.raises(FitError, match=r"huge does not fit .*layers\[0\] \(1310720 weight bits"):
        choose_fold(huge, ice, scale=1.0)
    with pytest.raises(FitError, match="has no SPRAM"):  # before any folder or tool
        synthesize(big, "ice40-hx8k", fold=(2, 16), weights_in="spram",
                   out=pytest.importorskip("pathlib").Path("/nonexistent/never"))


def test_load_crc_is_what_the_board_computes():
    # the CRC-16 of the words, high byte first (the board's 16-bit-wide CRC)
    from bitfab.boards.protocol import crc16
    assert load_crc([0x3132, 0x3334]) == crc16(b"1234")


def test_a_memory_deeper_than_one_spram_takes_rows_of_them():
    # structure only: the row select is checked by no simulation (a 16k-deep netlist load is slow)
    from bitfab.hw.spram import SpramWeights
    mem = SpramWeights(20, 20000)  # 2 columns x 2 rows
    assert (mem.columns, mem.blocks) == (2, 4)
    assert verilog.convert(mem, emit_src=False, platform=Ice40Cells()).count("SB_SPRAM256KA") == 4


def test_spram_board_self_tests_and_pipelines_after_the_load():
    """Weights in SPRAM beside the board link: a self-test before the load is refused (error
    5); the client loads first, the self-test then finds no mismatch, and a run pipelines its
    vectors (a deep window at the simulated link rate) and equals golden."""
    from bitfab.boards.selftest import SelfTestData
    from bitfab.sim.run import selftest_vectors
    rng = np.random.default_rng(3)
    model = mlp(rng, (64, 8, 2), "binary", name="wide")  # 14-byte inputs, 8-byte results
    x = 2 * rng.integers(0, 2, size=(12, 64)) - 1
    image = weight_image(network_configs(model, (2, 16), 1, "spram"))
    data = SelfTestData(*selftest_vectors(model, 8, seed=0), 0)
    with simulated_board(model, (2, 16), 1, weights="spram", selftest=data,
                         timeout_bits=8000) as transport:
        with pytest.raises(ProtocolError, match="weights not loaded"):
            BoardClient(transport, model).selftest()
        client = BoardClient(transport, model, weights=image)
        report = client.selftest()  # identify, load, then the self-test
        assert client.loaded and (report.vectors, report.mismatches) == (8, 0)
        run = client.run(x)
        assert client.window > 2
        np.testing.assert_array_equal(run.outputs, golden.execute(model, x).output)
