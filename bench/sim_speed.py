"""Benchmark simulated cycles per second: Amaranth's simulator, Icarus and Verilator on the same
design (a bipolar x binary unrolled layer, default 784 x 32 = 25,088 synapses), measured in one run.

Prints one JSON object: per simulator the vectors run, cycles, cycles/s, build seconds, and the
Verilator/Amaranth ratio. Each simulator runs ``bitfab sim``'s default bench (Amaranth's; on
Verilator and Icarus the fast in-simulator bench, :mod:`bitfab.sim.fast`, since it replaced cocotb
there: ``bench/sim_fast.py`` compares the two) with no stalls, so a cycle is a clock edge with a new
vector offered. Usage:
``python bench/sim_speed.py [--inputs 784 --outputs 32] [--quick]``. ``run(quick)`` is the entry
point of ``bench/all.py`` (``quick``: a 16 x 4 layer, Amaranth and Verilator only, a smoke test).
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitfab import InputFormat, IntegerModel
from bitfab.examples import random_dense
from bitfab.sim.run import simulate_model
from bitfab.toolchain import icarus_available


def run(quick: bool = False) -> dict:
    """The measurement of ``bench/all.py``; ``quick``: a 16 x 4 layer, no Icarus."""
    if quick:
        return measure(argparse.Namespace(inputs=16, outputs=4, pipeline=2, quick=True),
                       plan=[("amaranth", 20), ("verilator", 300)], icarus=False)
    return measure(argparse.Namespace(inputs=784, outputs=32, pipeline=2, quick=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--outputs", type=int, default=32)
    parser.add_argument("--pipeline", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a 128 x 16 layer, fewer vectors")
    args = parser.parse_args()
    if args.quick:
        args.inputs, args.outputs = 128, 16
    print(json.dumps(measure(args), indent=1))


def measure(args, plan=None, icarus: bool = True) -> dict:
    layer = random_dense(np.random.default_rng(0), args.inputs, args.outputs, "binary",
                         InputFormat.bipolar(), "threshold")
    model = IntegerModel((layer,), name=f"speed{args.inputs}x{args.outputs}")
    out = {"benchmark": "sim_speed", "synapses": args.inputs * args.outputs,
           "pipeline": args.pipeline, "python": platform.python_version(), "simulators": {}}
    if plan is None:
        plan = [("amaranth", 20 if not args.quick else 50), ("verilator", 3000)]
    if icarus and icarus_available():
        plan.insert(1, ("icarus", 100 if not args.quick else 300))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed.bfm"
        model.save(path)
        for simulator, vectors in plan:
            print(f"{simulator}: {vectors} vectors...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            r = simulate_model(path, simulator=simulator, vectors=vectors, stall=0.0,
                               pipeline=args.pipeline)
            out["simulators"][simulator] = {
                "vectors": r.vectors, "mismatches": r.mismatches, "cycles": r.cycles,
                "cycles_per_s": r.cycles_per_s, "build_s": r.build_s,
                "total_s": time.perf_counter() - start}
    sims = out["simulators"]
    out["verilator_vs_amaranth"] = sims["verilator"]["cycles_per_s"] / \
        sims["amaranth"]["cycles_per_s"]
    out["targets"] = {"verilator_cycles_per_s": 100_000, "verilator_vs_amaranth": 300}
    out["met"] = {"verilator_cycles_per_s": sims["verilator"]["cycles_per_s"] >= 100_000,
                  "verilator_vs_amaranth": out["verilator_vs_amaranth"] >= 300}
    return out


if __name__ == "__main__":
    main()
