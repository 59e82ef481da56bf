"""Benchmark the fast verification path against the cocotb bench and a plain C++ Verilator
harness, in one run on the same generated Verilog (a bipolar x binary unrolled layer, default
784 x 32, pipeline 2).

- ``fast``: :func:`bitfab.sim.fast.run_fast`, the in-simulator bench (stimulus read with
  ``$fscanf``, outputs written with ``$fwrite``, bubbles/stalls from an in-bench LFSR), checked
  against the golden model; cycles/s is simulated cycles over the simulator process's wall time.
- ``harness``: a plain C++ ``main`` that drives the design's ports directly (``i__valid`` and
  ``o__ready`` high, a new random payload every cycle), checks nothing, and times its own loop.
- ``cocotb``: :func:`bitfab.sim.verilog.run_bench`, the cocotb bench (Python every cycle).

No stalls or bubbles in the cycles/s comparison (a cycle is a clock edge with a vector offered);
the fast path is also run with 20 % stalls and bubbles. ``--digits MODEL.bfm`` also times a
fresh Verilator build of that model's whole-network Verilog by both paths (the fast path's
``-O1``, split, ``-j2`` build; cocotb's runner build). Builds go to a fresh build folder
(``ccache`` may still serve the Verilator runtime objects). Usage:
``python bench/sim_fast.py [--quick] [--inputs 784 --outputs 32] [--digits net.bfm] [--out F]``.

:func:`run` is the entry point of an aggregate bench (``run(quick=True)`` takes well under a
minute once ccache is warm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitfab import InputFormat, IntegerModel
from bitfab.examples import random_dense
from bitfab.hw.verilog import generate
from bitfab.sim.fast import BUILD_JOBS, OPT, run_fast, verilator_build
from bitfab.sim.run import random_inputs
from bitfab.sim.verilog import Design, run_bench
from bitfab.toolchain import icarus_available

_HARNESS = """\
// plain Verilator harness: drive the ports directly, no checking
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include "verilated.h"
#include "V{top}.h"
static uint32_t s = 0x2545f491u;
static inline uint32_t next() {{ s ^= s << 13; s ^= s >> 17; s ^= s << 5; return s; }}
int main(int argc, char** argv) {{
    VerilatedContext* ctx = new VerilatedContext;
    V{top}* d = new V{top}{{ctx}};
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    d->clk = 0; d->rst = 1; d->i__valid = 0; d->o__ready = 0;
    for (int k = 0; k < 2; k++) {{ d->clk = 1; d->eval(); d->clk = 0; d->eval(); }}
    d->rst = 0;
    long outs = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (long c = 0; c < n; c++) {{
{drive}
        d->i__valid = 1; d->o__ready = 1;
        d->clk = 1; d->eval();
        outs += d->o__valid;
        d->clk = 0; d->eval();
    }}
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("%ld %.6f %ld\\n", n, secs, outs);
    d->final();
    delete d; delete ctx;
    return 0;
}}
"""


def harness_cpp(top: str, width: int) -> str:
    """The plain harness's C++ for a design whose ``i__payload`` is ``width`` bits wide."""
    if width <= 32:
        drive = f"        d->i__payload = next() & 0x{(1 << width) - 1:x}u;"
    elif width <= 64:
        drive = (f"        d->i__payload = (((uint64_t)next() << 32) | next()) & "
                 f"0x{(1 << width) - 1:x}ull;")
    else:
        words = (width + 31) // 32
        top_bits = width - 32 * (words - 1)
        drive = (f"        for (int w = 0; w < {words}; w++) d->i__payload[w] = next();\n"
                 f"        d->i__payload[{words - 1}] &= 0x{(1 << top_bits) - 1:x}u;")
    text = _HARNESS.format(top=top, drive=drive)
    # Verilator's C++ names of the ports: "__" in a Verilog name is written "___05F"
    for port in ("i__valid", "i__ready", "i__payload", "o__valid", "o__ready", "o__payload"):
        text = text.replace(f"d->{port}", f"d->{port.replace('__', '___05F')}")
    return text


def _layer(inputs: int, outputs: int) -> IntegerModel:
    layer = random_dense(np.random.default_rng(0), inputs, outputs, "binary",
                         InputFormat.bipolar(), "threshold")
    return IntegerModel((layer,), name=f"speed{inputs}x{outputs}")


def run(quick: bool = False, inputs: int = 784, outputs: int = 32, pipeline: int = 2,
        digits: str | None = None, partial: str | None = None,
        skip_cocotb: bool = False) -> dict:
    """Measure cycles/s of the fast path, the plain harness and the cocotb bench on one design;
    return the JSON object (``quick``: a 128 x 16 layer, fewer vectors). ``partial``: a file
    rewritten with the results so far after each part (a long run that is stopped keeps them).
    ``skip_cocotb``: the fast path and the harness only (the cocotb build is the longest)."""
    if quick:
        inputs, outputs = 128, 16
    n_fast, n_harness, n_cocotb = (100_000, 200_000, 2_000) if quick else \
        (40_000, 200_000, 3_000)
    out = {"benchmark": "sim_fast", "layer": f"{inputs}x{outputs}", "pipeline": pipeline,
           "synapses": inputs * outputs, "quick": quick, "python": platform.python_version(),
           "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "verilator_opt": OPT, "build_jobs": BUILD_JOBS, "paths": {}}
    saved = os.environ.get("BITFAB_BUILD_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["BITFAB_BUILD_DIR"] = str(tmp / "build")
        try:
            model = _layer(inputs, outputs)
            path = tmp / "speed.bfm"
            model.save(path)
            facts = generate(model, tmp / "rtl", pipeline=pipeline)
            design = Design.from_sidecar(tmp / "rtl" / f"{facts['top']}.json")
            out["verilog_mb"] = design.verilog.stat().st_size / 1e6
            paths = out["paths"]

            def keep():
                if partial:
                    Path(partial).write_text(json.dumps(out, indent=1) + "\n")

            say("fast path (verilator)")
            x = random_inputs(model, n_fast, seed=1)[0]
            r = run_fast(design, path, x, simulator="verilator", p_bubble=0, p_stall=0)
            paths["fast"] = _result(r)
            r = run_fast(design, path, x, simulator="verilator", p_bubble=0.2, p_stall=0.2)
            paths["fast_stalls_0.2"] = _result(r)

            keep()
            say("plain C++ harness")
            start = time.perf_counter()
            exe = verilator_build([design.verilog.resolve()], design.top, tmp / "harness",
                                  main_cpp=harness_cpp(design.top, model.in_stream.payload_bits))
            build_s = time.perf_counter() - start
            start = time.perf_counter()
            n, secs, outs = subprocess.run([exe, str(n_harness)], check=True, text=True,
                                           capture_output=True).stdout.split()
            wall = time.perf_counter() - start
            paths["harness"] = {"cycles": int(n), "outputs": int(outs), "loop_s": float(secs),
                                "process_s": wall, "cycles_per_s": int(n) / float(secs),
                                "build_s": build_s}

            keep()
            if not skip_cocotb:
                say("cocotb bench (verilator)")
                r = run_bench(design, path, x[:n_cocotb], simulator="verilator", p_bubble=0,
                              p_stall=0)
                paths["cocotb"] = _result(r)

            keep()
            if icarus_available() and not skip_cocotb:
                say("icarus: fast path and cocotb bench")
                k = 300 if quick else 100
                paths["icarus_fast"] = _result(run_fast(design, path, x[:k], simulator="icarus",
                                                        p_bubble=0, p_stall=0))
                paths["icarus_cocotb"] = _result(run_bench(design, path, x[:k],
                                                           simulator="icarus", p_bubble=0,
                                                           p_stall=0))
            keep()
            if digits:
                out["digits_build"] = digits_build(digits, tmp)
        finally:
            if saved is None:
                os.environ.pop("BITFAB_BUILD_DIR", None)
            else:
                os.environ["BITFAB_BUILD_DIR"] = saved
    fast, harness = (paths[k]["cycles_per_s"] for k in ("fast", "harness"))
    out["fast_vs_harness"] = fast / harness
    if "cocotb" in paths:
        out["fast_vs_cocotb"] = fast / paths["cocotb"]["cycles_per_s"]
        out["cocotb_vs_harness"] = paths["cocotb"]["cycles_per_s"] / harness
    if "icarus_fast" in paths:
        out["icarus_fast_vs_cocotb"] = paths["icarus_fast"]["cycles_per_s"] / \
            paths["icarus_cocotb"]["cycles_per_s"]
    out["targets"] = {"fast_vs_harness": 0.5, "fast_cycles_per_s_784x32": 100_000,
                      "digits_build_s_idle": 120}
    out["met"] = {"fast_vs_harness": out["fast_vs_harness"] >= 0.5}
    if (inputs, outputs) == (784, 32):
        out["met"]["fast_cycles_per_s_784x32"] = fast >= 100_000
    return out


def digits_build(model_path, tmp: Path) -> dict:
    """Time fresh Verilator builds of ``model_path``'s whole-network Verilog (pipeline 2): the
    fast path's bench and the cocotb bench's runner build; both run 20 vectors bit-exact."""
    model = IntegerModel.load(model_path)
    facts = generate(model, tmp / "digits", pipeline=2)
    design = Design.from_sidecar(tmp / "digits" / f"{facts['top']}.json")
    x = random_inputs(model, 20, seed=0)[0]
    res = {"model": str(model_path), "verilog_mb": design.verilog.stat().st_size / 1e6}
    say("digits: fast-path build")
    r = run_fast(design, model_path, x, simulator="verilator")
    res["fast"] = {"build_s": r.build_s, "mismatches": r.mismatches}
    say("digits: cocotb build")
    r = run_bench(design, model_path, x, simulator="verilator")
    res["cocotb"] = {"build_s": r.build_s, "mismatches": r.mismatches}
    res["speedup"] = res["cocotb"]["build_s"] / res["fast"]["build_s"]
    return res


def _result(r) -> dict:
    return {"vectors": r.vectors, "mismatches": r.mismatches, "cycles": r.cycles,
            "cycles_per_s": r.cycles_per_s, "wall_s": r.wall_s, "build_s": r.build_s}


def say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}...", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--outputs", type=int, default=32)
    parser.add_argument("--pipeline", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a 128 x 16 layer, fewer vectors")
    parser.add_argument("--digits", help="also time fresh builds of this model's network")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--skip-cocotb", action="store_true",
                        help="the fast path and the harness only (no cocotb, no Icarus)")
    args = parser.parse_args()
    result = run(args.quick, args.inputs, args.outputs, args.pipeline, args.digits,
                 partial=args.out, skip_cocotb=args.skip_cocotb)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
