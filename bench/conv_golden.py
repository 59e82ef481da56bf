"""Benchmark the golden convolution against a float32 torch convolution of the same shape; print
one JSON object.

For each weight encoding, one 3x3 conv layer (``--image`` H x W x C_in -> ``--out`` channels,
padding 1) runs ``--batch`` images through :func:`bitfab.sim.conv.conv_accumulate` (im2col over
the dense kernels, input packing included) and through ``torch.nn.functional.conv2d`` in float32,
single-threaded, interleaved in one run; each figure is the best of ``--repeat`` runs.
Reported: MACs/s of both and their ratio. The golden result is checked against torch in float64
(exact for these sizes: every partial sum is an integer below 2^53) before anything is timed, so
the figures are for the same numbers.

Usage: ``python bench/conv_golden.py [--batch 256] [--image 28 28 16] [--out 32] [--repeat 3]``.
"""

import os

# single-threaded on both sides: pin BLAS and torch before they load
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import platform
import time

import numpy as np
import torch

from bitfab.examples import random_conv
from bitfab.model import InputFormat
from bitfab.sim.conv import conv_accumulate

ENCODINGS = ("binary", "ternary", "pow2", "denseshift", "lut", "int")


def best(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def torch_conv(layer, x: np.ndarray, dtype) -> np.ndarray:
    """``layer``'s accumulators by torch ``conv2d`` in ``dtype`` (padding by the stated value)."""
    (pt, pb), (pl, pr) = layer.padding
    xt = torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2)
    xt = torch.nn.functional.pad(xt, (pl, pr, pt, pb), value=float(layer.pad_value))
    w = torch.from_numpy(layer.weights.astype(np.float64)).to(dtype).permute(0, 3, 1, 2)
    out = torch.nn.functional.conv2d(xt, w, stride=layer.stride, groups=layer.groups)
    out = out + torch.from_numpy(layer.bias.astype(np.float64)).to(dtype)[None, :, None, None]
    return out.permute(0, 2, 3, 1).reshape(len(x), -1, layer.out_channels).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image", type=int, nargs=3, default=(28, 28, 16),
                        metavar=("H", "W", "C"))
    parser.add_argument("--out", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    shape = tuple(args.image)
    rows = []
    for enc in ENCODINGS:
        fmt = InputFormat.bipolar() if enc == "binary" else InputFormat.int(4)
        layer = random_conv(rng, shape, args.out, 3, enc, fmt, padding=1)
        if fmt.kind == "bipolar":
            x = rng.choice(np.array([-1, 1]), size=(args.batch, *shape))
        else:
            x = rng.integers(0, 16, size=(args.batch, *shape))
        exact = torch_conv(layer, x, torch.float64)
        np.testing.assert_array_equal(conv_accumulate(layer, x), exact.astype(np.int64))
        xf = torch.from_numpy(x.astype(np.float32))
        w = torch.from_numpy(layer.weights.astype(np.float32)).permute(0, 3, 1, 2).contiguous()

        def f32(xf=xf, w=w):
            return torch.nn.functional.conv2d(xf.permute(0, 3, 1, 2), w, padding=1)

        t_gold, _ = best(lambda layer=layer, x=x: conv_accumulate(layer, x), args.repeat)
        t_f32, _ = best(f32, args.repeat)
        macs = args.batch * layer.macs
        rows.append({"encoding": enc, "datapath": layer.datapath,
                     "golden_macs_per_s": macs / t_gold, "torch_f32_macs_per_s": macs / t_f32,
                     "ratio_golden_vs_f32": t_f32 / t_gold})
    print(json.dumps({
        "benchmark": "conv_golden", "threads": 1, "batch": args.batch,
        "layer": {"in_shape": list(shape), "out_channels": args.out, "kernel": [3, 3],
                  "padding": 1},
        "results": rows, "machine": platform.processor() or platform.machine(),
        "command": "python bench/conv_golden.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            for k, v in vars(args).items()),
    }, indent=1))


if __name__ == "__main__":
    main()
