"""The golden model of the image kinds (:mod:`bitfab.conv`): conv, pooling, flatten, add.

Exact integers, batched. An image batch is ``(batch, pixels, channels)`` in stream order (the
layout :func:`bitfab.sim.golden.execute` passes). A convolution is the dense kernels of
:func:`bitfab.sim.golden.matrix_accumulate` on its windows (im2col): every output pixel's window,
in ``(ky, kx, c)`` order, is one row, so each datapath's exact kernel (XNOR-popcount,
add/sub/skip, shift-add, dictionary, multiply) runs unchanged. The rows are built a few images
at a time so that the window matrix stays below :data:`WINDOW_ELEMENTS` elements.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bitfab.conv import Add, AvgPool, Conv, Flatten, MaxPool

from .golden import matrix_accumulate, register, stage_forward

__all__ = ["windows", "conv_accumulate", "conv_layer", "maxpool_layer", "avgpool_layer",
           "flatten_layer", "add_layer", "WINDOW_ELEMENTS"]

#: The most elements of one block of window rows (int64: 256 MiB).
WINDOW_ELEMENTS = 1 << 25


def windows(x: np.ndarray, kernel: tuple, stride: tuple) -> np.ndarray:
    """Return the windows of images ``x`` ``(batch, *spatial, channels)`` as a read-only view
    ``(batch, *out_spatial, *kernel, channels)`` (no padding: pad ``x`` first)."""
    dims = len(kernel)
    axes = tuple(range(1, dims + 1))
    v = sliding_window_view(x, kernel, axis=axes)  # (batch, *spatial', channels, *kernel)
    v = v[(slice(None),) + tuple(slice(None, None, s) for s in stride)]
    order = (0,) + axes + tuple(range(dims + 2, 2 * dims + 2)) + (dims + 1,)
    return v.transpose(order)


def _images(layer, values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape((len(values),) + tuple(layer.in_shape))


def _caches(layer: Conv) -> list:
    """One cache of prepared weights per group, kept beside the frozen layer's fields."""
    return layer.__dict__.setdefault("_golden_caches", [{} for _ in range(layer.groups)])


def conv_accumulate(layer: Conv, values: np.ndarray) -> np.ndarray:
    """Return the exact accumulators ``(batch, out_pixels, out_channels)`` of ``layer`` for
    images ``values`` (``(batch, pixels, channels)`` or ``(batch, *in_shape)``)."""
    x = _images(layer, values)
    pad = ((0, 0),) + tuple(layer.padding) + ((0, 0),)
    if any(a or b for a, b in layer.padding):
        x = np.pad(x, pad, constant_values=layer.pad_value)
    batch = len(x)
    out_pixels = int(np.prod(layer.out_shape[:-1]))
    og, cg = layer.out_channels // layer.groups, layer.group_channels
    row = int(np.prod(layer.kernel)) * cg
    caches = _caches(layer)
    acc = np.empty((batch, out_pixels, layer.out_channels), dtype=np.int64)
    step = max(1, WINDOW_ELEMENTS // max(out_pixels * row, 1))
    for start in range(0, batch, step):
        win = windows(x[start:start + step], layer.kernel, layer.stride)
        b = win.shape[0]
        for g in range(layer.groups):
            rows = win[..., g * cg:(g + 1) * cg].reshape(b * out_pixels, row)
            w = layer.matrix[g * og:(g + 1) * og]
            part = matrix_accumulate(layer.datapath, layer.encoding, w, rows, caches[g])
            acc[start:start + b, :, g * og:(g + 1) * og] = part.reshape(b, out_pixels, og)
    return acc + layer.bias


@register("conv")
def conv_layer(layer: Conv, values: np.ndarray, lengths=None):
    """Run a conv layer on images; return ``(outputs, accumulators)``, both
    ``(batch, out_pixels, out_channels)``."""
    acc = conv_accumulate(layer, values)
    return stage_forward(layer.output, acc), acc


def _pool_windows(layer, values: np.ndarray) -> np.ndarray:
    """``(batch, out_pixels, window, channels)`` of a pooling layer's input images."""
    win = windows(_images(layer, values), layer.kernel, layer.stride)
    batch, channels = len(win), layer.in_shape[-1]
    return win.reshape(batch, -1, layer.window, channels)


@register("maxpool")
def maxpool_layer(layer: MaxPool, values: np.ndarray, lengths=None):
    """Run a maxpool layer: the maximum of each window; return ``(outputs, outputs)``."""
    out = _pool_windows(layer, values).max(axis=2)
    return out, out


@register("avgpool")
def avgpool_layer(layer: AvgPool, values: np.ndarray, lengths=None):
    """Run an avgpool layer: the exact sum of each window, then its output stage; return
    ``(outputs, sums)``."""
    acc = _pool_windows(layer, values).sum(axis=2)
    return stage_forward(layer.output, acc), acc


@register("flatten")
def flatten_layer(layer: Flatten, values: np.ndarray, lengths=None):
    """Run a flatten layer: ``(batch, pixels, channels)`` -> ``(batch, pixels * channels)``."""
    out = np.asarray(values, dtype=np.int64).reshape(len(values), -1)
    return out, out


@register("add")
def add_layer(layer: Add, values: tuple, lengths=None):
    """Run an add layer on ``(a, b)``: ``(a << shift) + (b << skip_shift)``, then its output
    stage; return ``(outputs, sums)``."""
    a, b = (np.asarray(v, dtype=np.int64) for v in values)
    acc = (a << layer.shift) + (b << layer.skip_shift)
    return stage_forward(layer.output, acc), acc
