"""Benchmark the golden model against numpy float32 BLAS of the same shape, in one run (JSON).

- ``binary_macs_per_s``: a 784x256 bipolar layer on ``batch`` inputs through
  :func:`bitfab.sim.golden.matrix_accumulate` (the fast path: the bits ``x > 0`` through an
  exact float32 BLAS matmul, two outputs per column; int64 inputs in, int64 accumulators out),
  next to numpy float32 matmul of the same shape (inputs already float32), single-threaded, in the
  same run; ``popcount_*`` is the bit-packed popcount kernel (packing included) on the same data;
- ``encodings``: the same for a 784x256 layer of every weight encoding on its input format
  (bipolar for binary, int4 otherwise): the fast path, the datapath's own kernel
  (:func:`bitfab.sim.golden.reference_accumulate`) and float32 BLAS, all checked equal;
- ``sfc_seconds``: ``batch`` inputs through FINN's SFC topology (784-256-256-256-10, bipolar) with
  :func:`bitfab.sim.golden.execute` (input checks and all layers included).

Usage: ``python bench/golden.py [--repeat N] [--batch B] [--quick]``. Each figure is the best of N
runs (CPU time of this process, so that other jobs on the machine count less). ``run(quick)`` is
the entry point of ``bench/all.py``.
"""

import os

# single-threaded, as the target says: pin BLAS before numpy loads it
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bitfab import InputFormat  # noqa: E402
from bitfab.examples import ENCODINGS, random_dense, sfc  # noqa: E402
from bitfab.sim import golden  # noqa: E402


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.process_time()
        result = fn()
        times.append(time.process_time() - t)
    return min(times), result


def _side_by_side(layer, x, repeat) -> dict:
    """The fast path, the datapath kernel and float32 BLAS on one layer, checked equal."""
    w = layer.weights
    xf = x.astype(np.float32)
    wf = np.ascontiguousarray(w.T.astype(np.float32))
    if layer.datapath == "xnor_popcount":
        xf = np.where(x > 0, 1, -1).astype(np.float32)
        wf = np.ascontiguousarray(np.where(w > 0, 1, -1).T.astype(np.float32))
    cache = {}
    t_fast, fast = best(lambda: golden.matrix_accumulate(layer.datapath, layer.encoding, w, x,
                                                         cache), repeat)
    t_ref, ref = best(lambda: golden.reference_accumulate(layer.datapath, layer.encoding, w, x),
                      repeat)
    t_f32, f32 = best(lambda: xf @ wf, repeat)
    np.testing.assert_array_equal(fast, ref)  # same numbers, every way
    np.testing.assert_array_equal(fast, f32.astype(np.int64))
    macs = x.shape[0] * w.size
    plan = golden.exact_plan(1, 2 * w.shape[1], *w.shape) if layer.datapath == "xnor_popcount" \
        else golden.exact_plan(int(np.abs(x).max()), int(np.abs(w).sum(axis=1).max()), *w.shape)
    return {
        "datapath": layer.datapath, "input": layer.input.describe(),
        "plan": {"dtype": np.dtype(plan[0]).name if plan[0] else "int64", "lanes": plan[1]},
        "fast_macs_per_s": macs / t_fast, "fast_seconds": t_fast,
        "kernel_macs_per_s": macs / t_ref, "kernel_seconds": t_ref,
        "float32_matmul_macs_per_s": macs / t_f32, "float32_matmul_seconds": t_f32,
        "fast_vs_float32": t_f32 / t_fast, "kernel_vs_float32": t_f32 / t_ref,
    }


def run(quick: bool = False, repeat: int | None = None, batch: int | None = None) -> dict:
    """Measure; ``quick``: 1,000 inputs, 2 repeats (a smoke test, not a measurement)."""
    repeat = repeat or (2 if quick else 5)
    batch = batch or (1_000 if quick else 10_000)
    rng = np.random.default_rng(0)
    n, out = 784, 256
    binary = random_dense(rng, n, out, "binary", InputFormat.bipolar())
    x = rng.choice(np.array([-1, 1]), size=(batch, n))
    row = _side_by_side(binary, x, repeat)
    encodings = {"binary": row}
    for name in sorted(ENCODINGS):
        if name == "binary":
            continue
        fmt = InputFormat.int(4)
        layer = random_dense(rng, n, out, name, fmt)
        xi = rng.integers(fmt.min_value, fmt.max_value + 1, size=(batch, n))
        encodings[name] = _side_by_side(layer, xi, repeat)

    model = sfc(np.random.default_rng(1))
    images = rng.choice(np.array([-1, 1]), size=(batch, 784))
    t_sfc, _ = best(lambda: golden.execute(model, images), max(1, repeat // 2))
    macs = batch * n * out
    return {
        "benchmark": "golden",
        "threads": 1,
        "timer": "process CPU time, best of repeats",
        "layer": {"in": n, "out": out, "batch": batch},
        "binary_macs_per_s": row["fast_macs_per_s"],
        "binary_seconds": row["fast_seconds"],
        "popcount_macs_per_s": row["kernel_macs_per_s"],
        "popcount_seconds": row["kernel_seconds"],
        "float32_matmul_macs_per_s": row["float32_matmul_macs_per_s"],
        "float32_matmul_seconds": row["float32_matmul_seconds"],
        "binary_vs_float32": row["fast_vs_float32"],
        "popcount_vs_float32": row["kernel_vs_float32"],
        "encodings": encodings,
        "sfc_batch": batch,
        "sfc_seconds": t_sfc,
        "sfc_macs_per_s": batch * sum(la.macs for la in model.layers) / t_sfc,
        "targets": {"binary_macs_per_s": 10e9, "sfc_seconds": 1.0, "binary_vs_float32": 1.0},
        "met": {"binary_macs_per_s": macs / row["fast_seconds"] >= 10e9,
                "sfc_seconds": t_sfc * 10_000 / batch < 1.0,
                "binary_vs_float32": row["fast_vs_float32"] >= 1.0},
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.repeat, args.batch), indent=1))


if __name__ == "__main__":
    main()
