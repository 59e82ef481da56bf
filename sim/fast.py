"""The fast verification path: an HDL test bench that runs stimulus, stalls and capture inside the
simulator, on Verilator and Icarus, down to the synthesized netlist.

:func:`run_fast` is :func:`bitfab.sim.verilog.run_bench` without cocotb: it writes a Verilog test
bench module ``bitfab_tb`` (:func:`bench_verilog`) around the design's top, which

- reads the input payloads (vectors, or time steps with their ``last`` bit:
  ``model.in_stream.pack``) one per line from ``inputs.hex`` (``$fscanf``) and offers them on
  ``i__*``, idling at random (bubbles, chance ``p_bubble`` a cycle; an offer is never withdrawn);
- drops ``o__ready`` at random (stalls, chance ``p_stall``), both drawn from an in-bench xorshift32
  generator seeded from ``seed``;
- writes the payload of every output transfer (valid and ready at a rising edge) to
  ``outputs.hex`` (``$fwrite``), counts cycles and ends when every expected output came (then
  ``drain`` more cycles with ``o__ready`` high, so that extra outputs show) or at ``limit`` cycles.

Python then compares the outputs once, with :func:`bitfab.sim.golden.compare_outputs`: the same
checker, the same :class:`~bitfab.sim.verilog.SimResult` and the same first-mismatch message as the
cocotb bench. The bench's sizes and file names are run-time ``+plusargs``, so one build (cached
by content hash under ``build/sim/``) serves every run of a design.

Verilator builds the bench with a small C++ ``main`` that toggles the clock (``--no-timing``:
no coroutine scheduler); Icarus runs it with an ``always #5`` clock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from bitfab.errors import ToolError
from bitfab.toolchain import build_dir, content_hash, verilator_env

from .verilog import (
    Design,
    SimResult,
    _sources,
    build_estimate,
    checked_run,
    netlist_of,
)

__all__ = ["run_fast", "bench_verilog", "verilator_build", "VERILATOR_FLAGS", "TB_TOP"]

#: the test bench's module name
TB_TOP = "bitfab_tb"
#: Verilator flags of every fast-path build: Amaranth's and the cell models' Verilog trip lint
#: warnings that are not errors; ``-O3`` Verilator optimisation (cheap), the C++ at ``-O1``
#: (``OPT_FAST``, see :func:`verilator_build`) and split into files compiled in parallel
VERILATOR_FLAGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-Wno-UNOPTFLAT",
                   "--x-assign", "0", "--x-initial", "0", "--no-timing", "-O3",
                   "--output-split", "20000", "--output-split-cfuncs", "5000")
#: compiler optimisation of the generated C++ (make's ``OPT_FAST`` / ``OPT_SLOW`` / ``OPT_GLOBAL``)
#: instead of Verilator's ``-Os``: with the split and ``-j2``, builds took 2.1-2.2x less time than
#: the cocotb runner's (docs/results/speed.md)
OPT = "-O1"
#: parallel C++ compile jobs of a Verilator build
BUILD_JOBS = 2

_MAIN_CPP = """\
// bitfab fast bench: toggle the bench's clock until it calls $finish
#include "verilated.h"
#include "V{top}.h"
int main(int argc, char** argv) {{
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    V{top}* tb = new V{top}{{ctx}};
    tb->clk = 0;
    tb->eval();
    while (!ctx->gotFinish()) {{
        tb->clk = 1;
        tb->eval();
        ctx->timeInc(5);
        tb->clk = 0;
        tb->eval();
        ctx->timeInc(5);
    }}
    tb->final();
    delete tb;
    delete ctx;
    return 0;
}}
"""


def bench_verilog(design: Design, in_width: int, out_width: int) -> str:
    """Return the Verilog of the test bench module :data:`TB_TOP` around ``design``'s top, whose
    ``i__payload`` is ``in_width`` and ``o__payload`` ``out_width`` bits wide.

    Run-time arguments: ``+n_in=`` input transfers, ``+n_out=`` expected output transfers,
    ``+limit=`` cycles before it gives up, ``+drain=`` cycles after the last expected output,
    ``+bubble=`` / ``+stall=`` chances in 1/65536, ``+seed=`` the generator's non-zero state.
    Files (in the working folder): ``inputs.hex`` (one payload a line), ``outputs.hex`` (written)
    and ``result.txt`` (``cycles sent received timed_out``).
    """
    p = design.ports
    conns = [f".{p['i_valid']}(i_valid)", f".{p['i_ready']}(i_ready)",
             f".{p['i_payload']}(i_payload)", f".{p['o_valid']}(o_valid)",
             f".{p['o_ready']}(o_ready)", f".{p['o_payload']}(o_payload)"]
    if p.get("clk"):
        conns.insert(0, f".{p['clk']}(clk)")
    if p.get("rst"):
        conns.insert(1, f".{p['rst']}(rst)")
    top = design.top if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", design.top) else \
        f"\\{design.top} "
    return f"""\
// bitfab fast bench (bitfab.sim.fast): stimulus, stalls and capture inside the simulator
`timescale 1ns/1ps
module {TB_TOP}
`ifdef VERILATOR
  (input clk);
`else
  ;
  reg clk = 0;
  always #5 clk = ~clk;
`endif
  reg rst = 1;
  reg i_valid = 0;
  reg o_ready = 0;
  reg [{in_width - 1}:0] i_payload = 0;
  reg [{in_width - 1}:0] next_payload;
  wire i_ready, o_valid;
  wire [{out_width - 1}:0] o_payload;
  {top} dut({", ".join(conns)});
  integer n_in, n_out, limit, drain, bubble, stall, fin, fout, fres;
  integer sent, received, cycles, resets, draining, left, timed_out, got;
  reg [31:0] rng;
  reg offering;
  initial begin
    if (!$value$plusargs("n_in=%d", n_in)) n_in = 0;
    if (!$value$plusargs("n_out=%d", n_out)) n_out = 0;
    if (!$value$plusargs("limit=%d", limit)) limit = 10000;
    if (!$value$plusargs("drain=%d", drain)) drain = 8;
    if (!$value$plusargs("bubble=%d", bubble)) bubble = 0;
    if (!$value$plusargs("stall=%d", stall)) stall = 0;
    if (!$value$plusargs("seed=%d", rng)) rng = 32'h2545f491;
    fin = $fopen("inputs.hex", "r");
    fout = $fopen("outputs.hex", "w");
    sent = 0; received = 0; cycles = 0; resets = 0; draining = 0; left = 0; timed_out = 0;
    offering = 0;
  end
  task finish;
    begin
      fres = $fopen("result.txt", "w");
      $fwrite(fres, "%0d %0d %0d %0d\\n", cycles, sent, received, timed_out);
      $fclose(fres);
      $fclose(fout);
      $finish;
    end
  endtask
  always @(posedge clk) begin
    if (resets < 2) begin
      // rst high for two rising edges with i__valid = o__ready = 0
      resets = resets + 1;
      if (resets == 2) rst <= 0;
    end else begin
      cycles = cycles + 1;
      // sample: the transfers of this edge (values driven after the previous edge)
      if (i_valid && i_ready) begin
        sent = sent + 1;
        offering = 0;
      end
      if (o_ready && o_valid) begin
        $fwrite(fout, "%h\\n", o_payload);
        received = received + 1;
      end
      if (!draining && received >= n_out) begin
        draining = 1;
        left = drain;
      end
      if (draining) begin
        // let a design that emits too many outputs show it
        if (left == 0) finish;
        else begin
          left = left - 1;
          i_valid <= 0;
          o_ready <= 1;
        end
      end else if (cycles >= limit) begin
        timed_out = 1;
        finish;
      end else begin
        // drive the next cycle: xorshift32, low half for bubbles, high half for stalls
        rng = rng ^ (rng << 13);
        rng = rng ^ (rng >> 17);
        rng = rng ^ (rng << 5);
        if (!offering && sent < n_in && {{16'd0, rng[15:0]}} >= bubble) begin
          got = $fscanf(fin, "%h\\n", next_payload);
          i_payload <= next_payload;
          offering = 1;
        end
        i_valid <= offering;
        o_ready <= {{16'd0, rng[31:16]}} >= stall;
      end
    end
  end
endmodule
"""


def _run_logged(cmd, log: Path, env: dict, cwd: Path, what: str, on_line=None) -> None:
    """Run ``cmd``, its output to ``log`` (and each line to ``on_line``); raise ToolError naming
    the log on failure."""
    with open(log, "w") as f, subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            f.write(line)
            if on_line:
                on_line(line)
        code = proc.wait()
    if code:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]).strip()
        raise ToolError(f"{what} failed (exit {code}); see {log}: {tail[-400:]}")


def verilator_build(sources, top: str, out: Path, *, main_cpp: str | None = None,
                    flags=VERILATOR_FLAGS, opt: str = OPT, jobs: int = BUILD_JOBS,
                    defines=(), say=None) -> Path:
    """Build ``sources`` (Verilog paths) with Verilator into ``out/obj`` and return the
    executable: a C++ ``main`` (``main_cpp``, default one that toggles ``clk`` of ``top``), the
    C++ at ``opt`` split into files compiled ``jobs`` at a time, the runtime objects through
    ``ccache`` when installed (:func:`bitfab.toolchain.verilator_env`).

    ``say(stage, detail)`` reports ``build`` progress: Verilog translation, then the C++ files
    compiled so far.
    """
    say = say or (lambda stage, detail="": None)
    env = verilator_env()
    # bitfab's own make flags: jobs and the optimisation level (the env's -j is the core count)
    flags_make = re.sub(r"-j\s*\d*", "", env.get("MAKEFLAGS", "")).strip()
    env["MAKEFLAGS"] = f"{flags_make} -j{jobs}".strip()
    out.mkdir(parents=True, exist_ok=True)
    main = out / "main.cpp"
    main.write_text(main_cpp or _MAIN_CPP.format(top=top))
    obj = out / "obj"
    if obj.exists():
        shutil.rmtree(obj)
    root = env["VERILATOR_ROOT"]
    exe = Path(root) / "bin" / "verilator"
    if not exe.exists():
        exe = "verilator"
    start = time.perf_counter()
    say("build", f"verilator: translating {build_estimate(sources).split(',')[0]}")
    cmd = [exe, "--cc", "--exe", "--top-module", top, "--Mdir", obj, "-o", "sim", *flags,
           *[f"-D{d}" for d in defines], main, *sources]
    _run_logged(cmd, out / "verilate.log", env, out, "verilator")
    mk = obj / f"V{top}.mk"
    total = _compile_units(obj / f"V{top}_classes.mk")
    done = [0]
    translate_s = time.perf_counter() - start

    def compiled(line):
        if line.startswith(("ccache ", "c++ ", "g++ ")) and (" -c " in line or ".gch" in line):
            done[0] += 1
            say("build", f"verilator: compiling C++ {min(done[0], total)}/{total} files "
                         f"(-j{jobs}, {opt}; translated in {translate_s:.0f} s)")

    _run_logged(["make", "-C", obj, "-f", mk.name, f"OPT_FAST={opt}", f"OPT_SLOW={opt}",
                 f"OPT_GLOBAL={opt}", "sim"], out / "make.log", env, out, "the C++ build",
                compiled)
    return obj / "sim"


def _compile_units(classes_mk: Path) -> int:
    """Return the number of C++ compilations a Verilator makefile runs (for the progress line):
    ``main``, the runtime, and the model's files one by one (a parallel build, with its two
    precompiled headers) or as one ``__ALL`` file."""
    if not classes_mk.exists():
        return 1
    lists, name = {}, None
    for line in classes_mk.read_text().splitlines():
        if "+=" in line:
            name = line.split("+=")[0].strip()
            lists[name] = 0
        elif name and line.startswith("  ") and line.strip() not in ("", "\\"):
            lists[name] += 1
        else:
            name = None
    parallel = "VM_PARALLEL_BUILDS = 1" in classes_mk.read_text()
    model = sum(v for k, v in lists.items() if k.startswith(("VM_CLASSES", "VM_SUPPORT")))
    runtime = sum(v for k, v in lists.items() if k.startswith("VM_GLOBAL"))
    return 1 + runtime + (model + 2 if parallel else 1)


def _icarus_build(sources, out: Path, defines=()) -> Path:
    vvp = out / "sim.vvp"
    cmd = ["iverilog", "-g2012", "-o", vvp, "-s", TB_TOP, *[f"-D{d}" for d in defines],
           *sources]
    _run_logged(cmd, out / "build.log", dict(os.environ), out, "iverilog")
    return vvp


def run_fast(design: Design, model_path, x: np.ndarray, lengths=None, *,
             simulator: str = "verilator", netlist: str | None = None, p_bubble: float = 0.2,
             p_stall: float = 0.2, seed: int = 0, wrong_reference: bool = False,
             max_cycles: int | None = None, progress=None) -> SimResult:
    """Simulate ``design`` on input values ``x`` with the in-simulator bench and compare with the
    golden model; the parameters and the result are those of
    :func:`bitfab.sim.verilog.run_bench` (no waveform: ``vcd`` runs take the cocotb bench).

    ``max_cycles`` overrides the cycle limit (default ``transfers * II * 4 + 10,000``).
    """
    from .golden import compare_outputs, expected_rows

    model, x, lengths = checked_run(design, model_path, x, lengths, simulator, netlist)
    say = progress or (lambda stage, detail="": None)
    payloads = model.in_stream.pack(x, lengths)
    want = np.array(expected_rows(model, x, lengths), dtype=np.int64)
    if wrong_reference and len(want):
        row = want[len(want) // 2]
        row[0] = (row[0] + 1) % (1 << model.out_stream.element.bits)

    build_start = time.perf_counter()
    design, flow = netlist_of(design, netlist, say)
    sources = _sources(design, netlist)
    in_width, out_width = model.in_stream.payload_bits, model.out_stream.payload_bits
    bench = bench_verilog(design, in_width, out_width)
    defines = ("NO_ICE40_DEFAULT_ASSIGNMENTS",) if netlist == "ice40" and \
        simulator == "icarus" else ()
    opts = (VERILATOR_FLAGS, OPT) if simulator == "verilator" else ()
    key = content_hash(*sources, bench, simulator, defines, opts, _MAIN_CPP)
    bdir = build_dir("sim", f"fast-{design.top}-{simulator}-{key}")
    stamp = bdir / "built.ok"
    if simulator == "verilator":
        exe = bdir / "obj" / "sim"
    else:
        exe = bdir / "sim.vvp"
    if stamp.exists() and exe.exists():
        say("build", f"{simulator}: cached")
    else:
        (bdir / "bench.v").write_text(bench)
        srcs = [*sources, bdir / "bench.v"]
        if simulator == "verilator":
            verilator_build(srcs, TB_TOP, bdir, say=say)
        else:
            say("build", "icarus: compiling; cached afterwards")
            _icarus_build(srcs, bdir, defines)
        stamp.write_text("ok")
    build_s = time.perf_counter() - build_start

    run = build_dir("sim", "runs", f"fast-{design.top}-{simulator}-{seed}-{os.getpid()}")
    for name in ("outputs.hex", "result.txt"):
        (run / name).unlink(missing_ok=True)
    (run / "inputs.hex").write_text("".join(f"{p:x}\n" for p in payloads))
    transfers = max(len(payloads), len(want))
    limit = max_cycles or (transfers * design.initiation_interval * 4 + 10_000)
    drain = 4 * design.latency + 4 * design.initiation_interval + 8
    # seed -> a non-zero 32-bit xorshift state
    state = (int(seed) * 2654435761 + 0x2545F491) % (1 << 32) or 1
    args = [f"+n_in={len(payloads)}", f"+n_out={len(want)}", f"+limit={limit}",
            f"+drain={drain}", f"+bubble={round(p_bubble * 65536)}",
            f"+stall={round(p_stall * 65536)}", f"+seed={state}"]
    cmd = [exe, *args] if simulator == "verilator" else ["vvp", "-n", exe, *args]
    say("simulate", f"{len(x)} {'sequences' if lengths is not None else 'vectors'} on "
                    f"{simulator} (in-simulator bench)")
    start = time.perf_counter()
    _run_logged(cmd, run / "sim.log", dict(os.environ), run, f"the {simulator} simulation")
    wall = time.perf_counter() - start
    if not (run / "result.txt").exists():
        raise ToolError(f"the {simulator} simulation ended without a verdict; see "
                        f"{run / 'sim.log'}")
    cycles, sent, received, timed_out = (int(v) for v in (run / "result.txt").read_text().split())
    lines = (run / "outputs.hex").read_text().split()
    try:
        received_payloads = [int(line, 16) for line in lines]
    except ValueError:
        bad = next(i for i, line in enumerate(lines) if not re.fullmatch(r"[0-9a-fA-F]+", line))
        raise ToolError(f"output {bad} of the {simulator} simulation has unknown bits "
                        f"({lines[bad]!r}); see {run}") from None
    stream = model.out_stream
    got = stream.unpack_codes(received_payloads) if received_payloads else \
        np.zeros((0, stream.count + int(stream.framed)), dtype=np.int64)
    mismatches, first = compare_outputs(got, want)
    mismatches += int(bool(timed_out))
    return SimResult(simulator, int(len(want)), mismatches, cycles,
                     cycles / wall if wall else 0.0, wall, first, netlist, build_s, got, None,
                     flow, len(payloads))
