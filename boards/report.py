"""The build report: resources used and available, Fmax per clock, timing verdict, tools, times.

:func:`yosys_counts` reads yosys ``stat -json``; :func:`build_report` merges it with nextpnr's
``--report`` JSON into the object ``report.json`` holds and ``bitfab synth --json`` prints;
:func:`report_table` renders it for people.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["yosys_counts", "input_clocks", "build_report", "report_table", "link_rates"]

# cell types per resource (yosys techmap names)
_CELLS = {
    "ice40": {
        "luts": ("SB_LUT4",), "carry": ("SB_CARRY",),
        "bram": ("SB_RAM40_4K", "SB_RAM40_4KNR", "SB_RAM40_4KNW", "SB_RAM40_4KNRNW"),
        "spram": ("SB_SPRAM256KA",), "dsp": ("SB_MAC16",),
    },
    "ecp5": {
        "luts": ("LUT4",), "carry": ("CCU2C",), "bram": ("DP16KD", "PDPW16KD"),
        "spram": (), "dsp": ("MULT18X18D",), "distributed_ram": ("TRELLIS_DPR16X4",),
    },
}

# nextpnr utilization entries: (report name, what it counts)
_PNR = {
    "ice40": {"logic_cells": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM",
              "dsp": "ICESTORM_DSP", "pll": "ICESTORM_PLL", "io": "SB_IO"},
    "ecp5": {"logic_cells": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD",
             "dsp": "MULT18X18D", "pll": "EHXPLLL", "io": "TRELLIS_IO"},
}


def yosys_counts(stat: dict, board) -> dict:
    """Return ``luts``, ``ffs``, ``carry``, ``bram``, ``spram``, ``dsp`` (and ``distributed_ram``
    on ECP5) from a yosys ``stat -json`` object. ECP5 ``luts`` include the two LUT4s of every
    CCU2C carry cell."""
    cells = stat.get("design", stat).get("num_cells_by_type", {})
    table = _CELLS[board.family]
    out = {k: sum(int(cells.get(c, 0)) for c in names) for k, names in table.items()}
    if board.family == "ecp5":
        # a CCU2C carry cell is two LUT4s of a slice (what nextpnr counts as TRELLIS_COMB)
        out["luts"] += 2 * out["carry"]
    ff_prefix = "SB_DFF" if board.family == "ice40" else "TRELLIS_FF"
    out["ffs"] = sum(int(n) for c, n in cells.items() if c.startswith(ff_prefix))
    return out


def input_clocks(network) -> int:
    """Clocks between input items of ``network`` at full rate: its slowest layer's initiation
    interval, where an image layer takes the clocks of a whole image
    (:func:`bitfab.hw.conv.image_clocks`)."""
    from bitfab.hw.conv import ConvConfig, image_clocks
    return max(image_clocks(c.config) if isinstance(c.config, ConvConfig)
               else c.initiation_interval for c in network.layers)


def link_rates(baud: int, in_bytes: int, out_bytes: int) -> dict:
    """The UART link's frame sizes (payload plus :data:`~.protocol.FRAME_OVERHEAD`) and the
    frames per second it carries at ``baud`` (8N1: 10 bits a byte) each way; ``vectors_per_s``
    is the slower direction (the line is full duplex)."""
    from .protocol import FRAME_OVERHEAD
    frame_in, frame_out = in_bytes + FRAME_OVERHEAD, out_bytes + FRAME_OVERHEAD
    return {"baud": baud, "frame_in_bytes": frame_in, "frame_out_bytes": frame_out,
            "in_frames_per_s": round(baud / 10 / frame_in, 1),
            "out_frames_per_s": round(baud / 10 / frame_out, 1),
            "vectors_per_s": round(baud / 10 / max(frame_in, frame_out), 1)}


def build_report(*, board, model, fold, pipeline, clock, baud, counts, pnr, bitstream: Path | None,
                 flow, seed, versions, wall_s, times, network, frame_bytes, divisor=None,
                 clock_choice=None, selftest=None) -> dict:
    """Return the report object of a finished build; ``pnr`` and ``bitstream`` None for a
    synthesis that was not placed and routed (then ``timing_met`` is None). ``clock_choice``
    says how the clock was chosen, ``selftest`` describes the on-board self-test built in."""
    limits = board.limits
    placed = pnr is not None
    pnr = pnr or {}
    util = pnr.get("utilization", {})

    def pnr_used(key):
        name = _PNR[board.family].get(key)
        entry = util.get(name) if name else None
        return (entry["used"], entry["available"]) if entry else (None, None)

    lc_used, lc_avail = pnr_used("logic_cells")
    resources = {
        "lut4": {"used": counts["luts"], "available": limits.luts},
        "logic_cells": {"used": lc_used, "available": lc_avail},
        "ff": {"used": counts["ffs"], "available": limits.ffs},
        "carry": {"used": counts["carry"], "available": None},
        "bram": {"used": pnr_used("bram")[0] if pnr_used("bram")[0] is not None
                 else counts["bram"], "available": limits.bram},
        "spram": {"used": counts["spram"], "available": limits.spram},
        "dsp": {"used": counts["dsp"], "available": limits.dsp},
    }
    if "distributed_ram" in counts:
        resources["distributed_ram"] = {"used": counts["distributed_ram"], "available": None}
    clocks = []
    for name, f in sorted(pnr.get("fmax", {}).items()):
        achieved, constraint = float(f["achieved"]), float(f["constraint"])
        clocks.append({
            "clock": name, "fmax_mhz": round(achieved, 2), "constraint_mhz": round(constraint, 3),
            "slack_ns": round(1e3 / constraint - 1e3 / achieved, 3),
            "met": achieved >= constraint,
        })
    met = all(c["met"] for c in clocks)
    worst = min(clocks, key=lambda c: c["fmax_mhz"] / c["constraint_mhz"]) if clocks else None
    if not placed:
        met, verdict = None, "not placed and routed (synthesis only)"
    elif worst is None:
        verdict = "no clock constraint reported"
    elif met:
        verdict = (f"met: {worst['fmax_mhz']:.1f} MHz achieved for {worst['constraint_mhz']:g} "
                   f"MHz ({worst['slack_ns']:+.2f} ns slack)")
    else:
        verdict = (f"FAILED by {worst['constraint_mhz'] - worst['fmax_mhz']:.1f} MHz "
                   f"({-worst['slack_ns']:.2f} ns) on {worst['clock']}: "
                   f"{worst['fmax_mhz']:.1f} MHz achieved, {worst['constraint_mhz']:g} MHz "
                   f"needed; lower --clock or raise --pipeline")
    in_bytes, out_bytes = frame_bytes
    per_input = input_clocks(network)
    uart = link_rates(baud, in_bytes, out_bytes) | {
        "divisor": divisor, "bridge": board.bridge.to_json()}
    datapath = round(clock.f_out / per_input, 1)
    return {
        "board": board.name, "board_title": board.title, "device": board.device,
        "family": board.family,
        "model": model.name, "fingerprint": model.fingerprint(),
        "fold": _fold_json(fold), "pipeline": pipeline,
        "layers": [_layer_json(c) for c in network.layers],
        "weight_load": _weight_load(network, baud),
        "latency_cycles": network.latency, "initiation_interval": network.initiation_interval,
        # one input item: a vector, an image (all its pixels) or a sequence step
        "clocks_per_input": per_input,
        "inputs_per_s_at_fmax": round(worst["fmax_mhz"] * 1e6 / per_input, 1) if worst else None,
        "resources": resources,
        "clock": clock.to_json(),
        "clocks": clocks,
        "fmax_mhz": worst["fmax_mhz"] if worst else None,
        "timing_met": met, "timing": verdict,
        # inputs per second the datapath takes at the design clock, and end to end through
        # the UART (whichever is slower)
        "datapath_inputs_per_s": datapath,
        "end_to_end_inputs_per_s": min(datapath, uart["vectors_per_s"]),
        "uart": uart,
        "clock_choice": clock_choice or {"mode": "given" if clock.params else "oscillator"},
        "selftest": selftest,
        "bitstream": str(bitstream) if bitstream else None,
        "bitstream_bytes": bitstream.stat().st_size if bitstream else None,
        "yosys_flow": flow, "seed": seed, "tools": versions,
        "wall_s": round(wall_s, 2), "stage_s": {k: round(v, 2) for k, v in times.items()},
    }


def _weight_load(network, baud: int) -> dict | None:
    """The weight load a bitstream with weights in SPRAM needs (None: none): its words,
    frames, bytes on the line and seconds at ``baud``."""
    from .protocol import FRAME_OVERHEAD, LOAD_BYTES, LOAD_WORDS, load_crc
    if not getattr(network, "spram_layers", ()):
        return None
    image = network.load_image()
    frames = -(-len(image) // LOAD_WORDS)
    line = frames * (LOAD_BYTES + FRAME_OVERHEAD + FRAME_OVERHEAD + 1)  # 'W' out, 'L' back
    return {"layers": list(network.spram_layers), "words": int(len(image)), "frames": frames,
            "crc": f"{load_crc(image):04x}",
            "seconds_at_baud": round(frames * (LOAD_BYTES + FRAME_OVERHEAD) * 10 / baud, 2),
            "line_bytes": line}


def _layer_json(component) -> dict:
    cfg = component.config
    facts = cfg.to_json()  # the model's kind and datapath (an lstm_mps config holds an lstm)
    return {"kind": facts["kind"], "architecture": cfg.architecture, "pe": cfg.pe,
            "simd": cfg.simd, "datapath": facts["datapath"], "in": cfg.layer.in_features,
            "out": cfg.layer.out_features,
            "weights": getattr(cfg, "weights", None) if cfg.architecture == "folded" else None,
            "initiation_interval": component.initiation_interval}


def _fold_json(fold):
    # (pe, simd) -> [pe, simd]; per-layer folds -> one [pe, simd] or None per layer
    if fold is None:
        return None
    return fold.to_json() if hasattr(fold, "to_json") else list(fold)


def report_table(report: dict):
    """Return a rich table of a report (resources, then timing)."""
    from rich.table import Table
    fold = report["fold"]
    if fold and isinstance(fold[0], list | None):  # per layer (LayerFolds.to_json): as --fold
        text = ",".join(f"{k}={f[0]},{f[1]}" for k, f in enumerate(fold) if f is not None)
        text = f"fold {text}"
    else:
        text = f"fold {'x'.join(map(str, fold)) if fold else 'unrolled'}"
    table = Table(title=f"bitfab synth — {report['model']} on {report['board_title']} "
                        f"({text})")
    for col in ("resource", "used", "available", "use"):
        table.add_column(col, justify="left" if col == "resource" else "right")
    for name, r in report["resources"].items():
        used, avail = r["used"], r["available"]
        pct = f"{100 * used / avail:.1f} %" if used is not None and avail else "-"
        table.add_row(name, "-" if used is None else str(used),
                      "-" if avail is None else str(avail), pct)
    for c in report["clocks"]:
        colour = "green" if c["met"] else "red"
        table.add_row(f"Fmax {c['clock']}", f"[{colour}]{c['fmax_mhz']:.1f} MHz[/]",
                      f"{c['constraint_mhz']:g} MHz", f"{c['slack_ns']:+.2f} ns")
    if report.get("weight_load"):
        load = report["weight_load"]
        table.add_row("weight load", f"{load['words']} words", f"{load['frames']} frames",
                      f"{load['seconds_at_baud']} s")
    if report.get("inputs_per_s_at_fmax"):
        table.add_row("inputs/s at Fmax", f"{report['inputs_per_s_at_fmax']:,.0f}",
                      f"{report['clocks_per_input']} clk each", "-")
    if report.get("datapath_inputs_per_s"):
        clk = report["clock"]["clock_mhz"]
        table.add_row("inputs/s at clock", f"{report['datapath_inputs_per_s']:,.0f}",
                      f"{clk:g} MHz", "-")
        uart = report["uart"]
        table.add_row("inputs/s on the UART", f"{uart['vectors_per_s']:,.0f}",
                      f"{uart['baud']} baud", "-")
    return table
