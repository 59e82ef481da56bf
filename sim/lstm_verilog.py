"""Run the LSTM cell's Verilog through the cocotb bench (:mod:`bitfab.sim.lstm_cocotb`).

:func:`run_lstm_bench` converts :class:`bitfab.hw.lstm.LstmCell` to Verilog, builds it with
Verilator (or Icarus) once per distinct Verilog (cached by content hash under ``build/sim/``),
streams whole sequences with random bubbles and stalls and returns the verdict, read from the
bench's results file (cocotb's ``runner.test()`` does not raise on a failed test).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from bitfab.errors import ToolError
from bitfab.toolchain import build_dir, content_hash, icarus_available, verilator_env

from .verilog import _environ

__all__ = ["cell_verilog", "run_lstm_bench"]


def cell_verilog(model_path, layer_index: int = 0, direction: int = 0, pipeline: int = 1,
                 out: Path | None = None) -> tuple[Path, int]:
    """Write the Verilog of one direction's cell; return ``(path, initiation interval)``."""
    from amaranth.back import verilog

    from bitfab.hw.lstm import LstmCell
    from bitfab.model import IntegerModel

    layer = IntegerModel.load(model_path).layers[layer_index]
    cell = LstmCell(layer, direction, pipeline)
    ii = cell.initiation_interval
    text = verilog.convert(cell, name="lstm_cell")
    out = out or build_dir("lstm", content_hash(text))
    path = Path(out) / "lstm_cell.v"
    path.write_text(text)
    return path, ii


def run_lstm_bench(model_path, x: np.ndarray, lengths: np.ndarray, *, layer: int = 0,
                   direction: int = 0, pipeline: int = 1, simulator: str = "verilator",
                   p_bubble: float = 0.2, p_stall: float = 0.2, seed: int = 0,
                   wrong_reference: bool = False) -> dict:
    """Simulate the cell on sequences ``x`` ``(batch, T, in)`` with ``lengths``; return the
    bench's verdict (``steps``, ``mismatches``, ``first_mismatch``, ``cycles``, ...)."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    if simulator not in ("verilator", "icarus"):
        raise ToolError(f"simulator must be 'verilator' or 'icarus', not {simulator!r}")
    if simulator == "icarus" and not icarus_available():
        raise ToolError("Icarus Verilog (iverilog, vvp) is not on PATH: apt-get install iverilog")
    source, ii = cell_verilog(model_path, layer, direction, pipeline)
    key = content_hash(source, simulator)
    bdir = build_dir("sim", f"lstm_cell-{simulator}-{key}")
    runner = get_runner(simulator)
    env = verilator_env() if simulator == "verilator" else dict(os.environ)
    build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial",
                  "0", "-O3"] if simulator == "verilator" else []
    run = build_dir("sim", "runs", f"lstm_cell-{simulator}-{seed}-{os.getpid()}")
    np.save(run / "inputs.npy", np.asarray(x, dtype=np.int64))
    np.save(run / "lengths.npy", np.asarray(lengths, dtype=np.int64))
    results = run / "results.json"
    results.unlink(missing_ok=True)
    config = {"model": str(Path(model_path).resolve()), "layer": layer, "direction": direction,
              "inputs": str(run / "inputs.npy"), "lengths": str(run / "lengths.npy"),
              "p_bubble": p_bubble, "p_stall": p_stall, "seed": seed, "ii": ii,
              "wrong_reference": wrong_reference, "results": str(results)}
    (run / "bench.json").write_text(json.dumps(config))
    log = io.StringIO()
    with _environ(env), contextlib.redirect_stdout(log):
        stamp = bdir / "built.ok"
        if not stamp.exists():
            runner.build(sources=[str(source)], hdl_toplevel="lstm_cell", build_dir=str(bdir),
                         build_args=build_args, always=True, timescale=("1ns", "1ps"),
                         log_file=str(bdir / "build.log"))
            stamp.write_text("ok")
        try:
            xml = runner.test(hdl_toplevel="lstm_cell", hdl_toplevel_lang="verilog",
                              test_module="bitfab.sim.lstm_cocotb", build_dir=str(bdir),
                              test_dir=str(run), extra_env={"BITFAB_BENCH": str(run /
                                                                              "bench.json")},
                              results_xml=str(run / "results.xml"),
                              log_file=str(run / "test.log"))
        except SystemExit:
            xml = run / "results.xml"  # under pytest the runner exits on a failed test
    num_tests, num_failed = get_results(Path(xml))
    if not results.exists():
        raise ToolError(f"the {simulator} simulation ended without a verdict ({num_tests} "
                        f"tests, {num_failed} failed); see {run / 'test.log'}")
    verdict = json.loads(results.read_text())
    verdict["simulator"] = simulator
    return verdict
