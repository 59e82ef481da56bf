"""Run every measurement of ``bench/`` and write JSON, a Markdown table and plots.

Each measurement is a module in ``bench/`` exposing ``run(quick: bool) -> dict``, listed once in
:data:`SECTIONS` with how its numbers enter the table and the plots. Every module runs in its own
process (one at a time unless ``--jobs``: timings must not overlap); one that fails, times out
or is missing is an ``error`` entry in the JSON and a row of the table, never a crash.

    python bench/all.py [--quick] [--out FOLDER] [--only golden,boards] [--jobs N]
    make bench [QUICK=1]

Writes ``bench.json``, ``bench.md`` and ``bench-*.png`` (matplotlib, where installed) in ``--out``
(``docs/results``; ``build/bench-quick`` with ``--quick``, which runs small shapes: the CI smoke
test, whose numbers mean nothing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# --- table rows of each measurement (section result -> [(measurement, value, compared with)]) ---


def _g(v, unit=""):
    return "-" if v is None else f"{v:.3g}{unit}"


def _golden_rows(r: dict) -> list:
    layer = r["layer"]
    shape = f"{layer['in']}x{layer['out']}, {layer['batch']} vectors"
    rows = [(f"binary fast path ({shape})", f"{_g(r['binary_macs_per_s'])} MAC/s",
             f"{r['binary_vs_float32']:.2f}x float32 BLAS "
             f"({_g(r['float32_matmul_macs_per_s'])} MAC/s)"),
            ("binary popcount kernel (packing included)", f"{_g(r['popcount_macs_per_s'])} MAC/s",
             f"{r['popcount_vs_float32']:.2f}x float32 BLAS")]
    for name, e in r["encodings"].items():
        if name == "binary":
            continue
        plan = e["plan"]
        rows.append((f"{name} ({e['datapath']}, {e['input']} inputs; "
                     f"{plan['dtype']} x{plan['lanes']})", f"{_g(e['fast_macs_per_s'])} MAC/s",
                     f"{e['fast_vs_float32']:.2f}x float32 BLAS; datapath kernel "
                     f"{e['kernel_vs_float32']:.2f}x"))
    rows.append((f"SFC 784-256-256-256-10, {r['sfc_batch']} vectors",
                 f"{r['sfc_seconds']:.3f} s", f"{_g(r['sfc_macs_per_s'])} MAC/s"))
    return rows


def _datapath_rows(r: dict) -> list:
    n_in, n_out = r["shape"]
    rows = [(f"{name}, {n_in}x{n_out}", f"{c['lut4_per_synapse']} LUT4/synapse",
             f"{c['lut4_vs_int_baseline']}x the int baseline ({c['lut4']} LUT4)")
            for name, c in r["unrolled"].items()]
    f = r.get("folded_binary")
    if f:
        rows.append((f"folded binary pe={f['pe']} simd={f['simd']}", f"{f['lut4']} LUT4",
                     f"II {f['initiation_interval']}, {f['ram']} RAM"))
    return rows


def _adder_rows(r: dict) -> list:
    lay = r["layer"]
    rows = [(f"binary layer {lay['in']}x{lay['out']}: adder tree",
             f"{lay['bitfab']['lut4_per_synapse']} LUT4/synapse",
             f"{lay['lut4_ratio_bitfab_vs_baseline']}x plain sum() "
             f"({lay['baseline']['lut4_per_synapse']} LUT4/synapse)")]
    pop = r["popcount"]
    for label, row in pop.items():
        if not isinstance(row, dict) or "ice40" not in row:
            continue
        fmax = ", ".join(f"{d} {_g(row[d].get('fmax_mhz'))} MHz" for d in pop["targets_mhz"]
                         if d in row)
        rows.append((f"popcount {pop['bits']} bits, {label}", f"{row['ice40']['lut4']} LUT4",
                     fmax or "-"))
    return rows


def _board_rows(r: dict) -> list:
    rows = []
    for name, b in r["boards"].items():
        rows.append((f"{name}: Fmax ({r['network']} unrolled)", f"{_g(b['fmax_mhz'])} MHz",
                     f"constraint {b['constraint_mhz']} MHz; {b['lut4']} LUT4"))
        rows.append((f"{name}: vectors/s", f"{_g(b['datapath_vectors_per_s'])} datapath",
                     f"{_g(b['link_vectors_per_s'])} over the UART at {b['baud']} baud"))
        rows.append((f"{name}: flow time", f"{b['flow_s']:.1f} s",
                     ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in b["stage_s"].items())))
    return rows


def _sim_rows(r: dict) -> list:
    rows = [(f"{name}, {r['synapses']} synapses", f"{_g(s['cycles_per_s'])} cycles/s",
             f"build {s['build_s']:.1f} s" if s.get("build_s") is not None else "-")
            for name, s in r["simulators"].items()]
    rows.append(("Verilator / Amaranth", f"{r['verilator_vs_amaranth']:.0f}x",
                 f"target {r['targets']['verilator_vs_amaranth']}x"))
    return rows


def _board_rate_rows(r: dict) -> list:
    rows = []
    for name, b in r["boards"].items():
        rows.append((f"{name}: link at {b['baud']:,} baud", f"{_g(b['link_vectors_per_s'])} "
                     f"vectors/s", f"{b['speedup_over_115200']:.1f}x the 115200-baud link"))
        rows.append((f"{name}: self-test at {b['clock_mhz']:g} MHz (simulated)",
                     f"{_g(b['selftest_vectors_per_s_simulated'])} vectors/s",
                     f"clock / II = {_g(b['datapath_vectors_per_s_at_clock'])}"))
    return rows


def _sim_fast_rows(r: dict) -> list:
    paths = r["paths"]
    harness = paths["harness"]["cycles_per_s"]
    rows = [(f"{name}, {r['layer']} layer", f"{_g(p['cycles_per_s'])} cycles/s",
             f"{p['cycles_per_s'] / harness:.2f}x the plain C++ harness")
            for name, p in paths.items() if p.get("cycles_per_s") and name != "harness"]
    rows.append((f"plain C++ harness, {r['layer']} layer", f"{_g(harness)} cycles/s", "-"))
    return rows


# --- plots (section results -> one PNG each; skipped where the sections are missing) ---------


def _bars(ax, labels, values, log=False, **kw):
    ax.barh(range(len(values)), [v or 0 for v in values], **kw)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")


def _plot_area(plt, results):
    dp, at = results.get("datapaths"), results.get("adder_trees")
    if not dp:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    shape = f"{dp['shape'][0]}x{dp['shape'][1]}"
    names = [f"{name}, {shape}" for name in dp["unrolled"]]
    vals = [c["lut4_per_synapse"] for c in dp["unrolled"].values()]
    if at:
        lay = at["layer"]
        names += [f"binary {lay['in']}x{lay['out']}, adder tree",
                  f"binary {lay['in']}x{lay['out']}, plain sum()"]
        vals += [lay["bitfab"]["lut4_per_synapse"], lay["baseline"]["lut4_per_synapse"]]
    _bars(ax, names, vals, color="tab:blue")
    base = dp["unrolled"].get(next(k for k in dp["unrolled"] if "baseline" in k), {})
    if base:
        ax.axvline(base["lut4_per_synapse"], color="tab:red", ls="--", label="int baseline")
        ax.legend(fontsize=8)
    ax.set_xlabel("LUT4 per synapse (yosys synth_ice40, unrolled layers)")
    return fig


def _plot_boards(plt, results):
    b = results.get("boards")
    if not b:
        return None
    names = list(b["boards"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3))
    _bars(a1, names, [b["boards"][n]["fmax_mhz"] for n in names], color="tab:green")
    a1.set_xlabel(f"Fmax, MHz ({b['network']} unrolled)")
    y = range(len(names))
    a2.barh([i - 0.2 for i in y], [b["boards"][n]["datapath_vectors_per_s"] or 0 for n in names],
            height=0.4, label="datapath at Fmax")
    a2.barh([i + 0.2 for i in y], [b["boards"][n]["link_vectors_per_s"] or 0 for n in names],
            height=0.4, label="UART link")
    a2.set_yticks(list(y), names, fontsize=8)
    a2.invert_yaxis()
    a2.set_xscale("log")
    a2.set_xlabel("vectors/s")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_golden(plt, results):
    g = results.get("golden")
    if not g:
        return None
    names = list(g["encodings"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    y = range(len(names))
    for k, (key, label) in enumerate((("fast_macs_per_s", "golden fast path"),
                                      ("kernel_macs_per_s", "datapath kernel"),
                                      ("float32_matmul_macs_per_s", "float32 BLAS"))):
        ax.barh([i + (k - 1) * 0.27 for i in y], [g["encodings"][n][key] for n in names],
                height=0.27, label=label)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"MAC/s, one thread ({g['layer']['in']}x{g['layer']['out']}, "
                  f"{g['layer']['batch']} vectors)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_sim(plt, results):
    s = results.get("sim_speed")
    if not s:
        return None
    names = list(s["simulators"])
    fig, ax = plt.subplots(figsize=(7, 2.5))
    _bars(ax, names, [s["simulators"][n]["cycles_per_s"] for n in names], log=True,
          color="tab:purple")
    ax.set_xlabel(f"simulated cycles/s ({s['synapses']}-synapse binary layer)")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Section:
    """One measurement: ``bench/<module>.py`` exposing ``run(quick) -> dict``."""

    name: str
    module: str
    title: str
    rows: object  # result dict -> [(measurement, value, compared with)]
    #: run by ``--quick`` (the CI smoke test); a section whose quick run builds several
    #: simulators is left to its own tests there (its row says "not run")
    smoke: bool = True


#: every measurement of ``make bench``, in table order
SECTIONS = (
    Section("golden", "golden", "golden model MAC/s vs numpy float32 BLAS", _golden_rows),
    Section("datapaths", "hw_datapaths", "area per synapse of every datapath vs the int baseline",
            _datapath_rows),
    Section("adder_trees", "hw_area", "adder trees vs a plain sum()", _adder_rows),
    Section("boards", "board_flow", "Fmax, flow time and vectors/s per board", _board_rows),
    Section("sim_speed", "sim_speed", "simulated cycles/s: Amaranth, Icarus, Verilator",
            _sim_rows),
    Section("board_rates", "board_rates", "vectors/s per board: datapath, link, self-test",
            _board_rate_rows, smoke=False),
    Section("sim_fast", "sim_fast", "Verilator cycles/s: fast bench vs plain C++ harness vs "
            "cocotb", _sim_fast_rows, smoke=False),
)
#: plot file -> function of the section results
PLOTS = {"bench-area.png": _plot_area, "bench-boards.png": _plot_boards,
         "bench-golden.png": _plot_golden, "bench-sim.png": _plot_sim}


# --- running ---------------------------------------------------------------------------------


def run_section(section: Section, quick: bool, timeout: float) -> dict:
    """Run one section in its own process; return ``{"result", "seconds"}`` or ``{"error"}``."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", section.module,
               "--result", str(out)] + (["--quick"] if quick else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s",
                    "seconds": round(time.perf_counter() - start, 1)}
        seconds = round(time.perf_counter() - start, 1)
        if proc.returncode or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": f"exit {proc.returncode}: {tail[0][:300]}", "seconds": seconds}
        return {"result": json.loads(out.read_text()), "seconds": seconds}


def _child(module: str, quick: bool, result: Path) -> None:
    sys.path.insert(0, str(HERE))
    data = importlib.import_module(module).run(quick)
    result.write_text(json.dumps(data, indent=1, default=float))


def _numbers(obj) -> int:
    if isinstance(obj, bool):
        return 0
    if isinstance(obj, (int, float)):
        return 1
    if isinstance(obj, dict):
        return sum(_numbers(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_numbers(v) for v in obj)
    return 0


def table(sections: dict) -> tuple[list, list]:
    """The table rows ``(section, measurement, value, compared with)`` and the errors."""
    rows, errors = [], []
    for s in SECTIONS:
        entry = sections.get(s.name)
        if entry is None:
            rows.append((s.name, s.title, "not run", "not in this run (see the text above)"))
            continue
        if "error" in entry:
            rows.append((s.name, s.title, "**error**", entry["error"].replace("|", "/")))
            errors.append(s.name)
            continue
        try:
            rows += [(s.name, *r) for r in s.rows(entry["result"])]
        except Exception as exc:  # a result without the expected fields is a row, not a crash
            rows.append((s.name, s.title, "**error**", f"table: {type(exc).__name__}: {exc}"))
            errors.append(s.name)
    return rows, errors


def write_markdown(path: Path, report: dict, plots: list) -> None:
    rows, errors = table(report["sections"])
    m = report["machine"]
    lines = [
        "# Measured results: `make bench`",
        "",
        "Written by `" + report["command"] + "` (do not edit by hand); the numbers come from the "
        f"run of {report['started']} on {m['cpus']} CPUs ({m['machine']}, Python {m['python']}), "
        f"load average {m['load_start']} at the start and {m['load_end']} at the end"
        + (" (the machine was shared with other jobs: wall times and ratios move between runs)"
           if max(m["load_start"], m["load_end"]) > 0.5 * m["cpus"] else "") + "."
        + (f" Up to {report['jobs']} sections ran at once, so their wall times overlap."
           if report.get("jobs", 1) > 1 else ""),
        "" if not report["quick"] else "\n**Quick run** (small shapes, a smoke test): the "
        "numbers below mean nothing.\n",
        "| section | measurement | value | compared with |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Seconds per section (wall): " + ", ".join(
        f"{k} {v.get('seconds', '-')} (started {v.get('started', '-')})"
        for k, v in report["sections"].items()) + "."]
    if errors:
        lines += ["", "Failed or missing: " + ", ".join(errors) + " (see `bench.json`)."]
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def write_plots(out: Path, report: dict) -> list:
    results = {k: v["result"] for k, v in report["sections"].items() if "result" in v}
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["plot_errors"] = {"*": "matplotlib is not installed (pip install '.[train]')"}
        return []
    written = []
    for name, fn in PLOTS.items():
        try:
            fig = fn(plt, results)
        except Exception as exc:  # a plot of odd data is an error entry, not a crash
            report.setdefault("plot_errors", {})[name] = f"{type(exc).__name__}: {exc}"
            continue
        if fig is not None:
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(name)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes: a smoke test")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder of the results (default docs/results; build/bench-quick with "
                         "--quick, so that a smoke test never overwrites the published page)")
    ap.add_argument("--only", default="", help="comma-separated section names (the others stay "
                                                 "as the last bench.json in --out has them)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="sections at once (default 1; 2 with --quick)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per section (default 600 quick, 7200 otherwise)")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.section:  # a child: run one module
        _child(args.section, args.quick, args.result)
        return 0
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - {s.name for s in SECTIONS})
    if unknown:
        ap.error(f"--only: unknown sections {unknown}; known: {[s.name for s in SECTIONS]}")
    chosen = [s for s in SECTIONS if s.name in only] if only else \
        [s for s in SECTIONS if s.smoke or not args.quick]
    jobs = args.jobs or (2 if args.quick else 1)
    timeout = args.timeout or (600 if args.quick else 7200)
    if args.out is None:
        args.out = ROOT / "build" / "bench-quick" if args.quick else ROOT / "docs" / "results"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python bench/all.py", *(argv if argv is not None
                                                         else sys.argv[1:])]),
        "jobs": jobs,
        "quick": args.quick,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "python": platform.python_version(),
                    "load_start": round(os.getloadavg()[0], 1)},
        "sections": {},
    }
    previous = args.out / "bench.json"
    if only and previous.exists():  # --only: the other sections stay as the last run left them
        old = json.loads(previous.read_text())
        if old.get("quick") == args.quick:
            report["sections"] = {k: v for k, v in old["sections"].items() if k not in only}
            report["command"] = f"{old['command']}`, then `{report['command']}"
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {s.name: pool.submit(run_section, s, args.quick, timeout) for s in chosen}
        for s in chosen:
            try:
                entry = futures[s.name].result()
            except Exception:  # the runner itself failed: still a row
                entry = {"error": traceback.format_exc().strip().splitlines()[-1]}
            if "result" in entry and not _numbers(entry["result"]):
                entry = {"error": "the result holds no numbers", **entry}
            entry["started"] = report["started"]
            report["sections"][s.name] = entry
            print(f"{s.name}: {'error: ' + entry['error'] if 'error' in entry else 'ok'} "
                  f"({entry.get('seconds', '-')} s)", file=sys.stderr, flush=True)
    report["machine"]["load_end"] = round(os.getloadavg()[0], 1)
    plots = write_plots(args.out, report)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(args.out / "bench.md", report, plots)
    print(f"wrote {args.out / 'bench.md'}, bench.json and {len(plots)} plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
