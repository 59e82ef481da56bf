"""Benchmark the golden model; print one JSON object.

- ``binary_macs_per_s``: xnor-popcount over a 784x256 bipolar layer on 10,000 inputs (input packing
  included), next to numpy float32 matmul of the same shape, single-threaded, in the same run;
- ``sfc_seconds``: 10,000 inputs through FINN's SFC topology (784-256-256-256-10, bipolar) with
  :func:`bitfab.sim.golden.execute` (input checks and all layers included).

Usage: ``python bench/golden.py [--repeat N]``. Each figure is the best of N runs.
"""

import os

# single-threaded, as the target says: pin BLAS before numpy loads it
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import platform
import time

import numpy as np

from bitfab.examples import sfc
from bitfab.sim import golden


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batch, n, out = 10_000, 784, 256
    x = rng.choice(np.array([-1, 1]), size=(batch, n))
    w = rng.choice(np.array([-1, 1]), size=(out, n))
    wp = golden.pack_bits(w > 0)
    t_pop, acc = best(lambda: golden.xnor_popcount_matmul(golden.pack_bits(x > 0), wp, n),
                      args.repeat)
    xf, wf = x.astype(np.float32), np.ascontiguousarray(w.T.astype(np.float32))
    t_f32, ref = best(lambda: xf @ wf, args.repeat)
    np.testing.assert_array_equal(acc, ref.astype(np.int64))  # same numbers, both ways

    model = sfc(np.random.default_rng(1))
    images = rng.choice(np.array([-1, 1]), size=(batch, 784))
    t_sfc, _ = best(lambda: golden.execute(model, images), max(1, args.repeat // 2))
    macs = batch * n * out
    print(json.dumps({
        "benchmark": "golden",
        "threads": 1,
        "layer": {"in": n, "out": out, "batch": batch},
        "binary_macs_per_s": macs / t_pop,
        "binary_seconds": t_pop,
        "float32_matmul_macs_per_s": macs / t_f32,
        "float32_matmul_seconds": t_f32,
        "popcount_vs_float32": t_f32 / t_pop,
        "sfc_batch": batch,
        "sfc_seconds": t_sfc,
        "sfc_macs_per_s": batch * sum(la.macs for la in model.layers) / t_sfc,
        "targets": {"binary_macs_per_s": 10e9, "sfc_seconds": 1.0},
        "met": {"binary_macs_per_s": macs / t_pop >= 10e9, "sfc_seconds": t_sfc < 1.0},
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
