"""Hand-built IntegerModels: random layers of every encoding, and the SFC topology.

Used by the demo, the benchmarks and the tests (and useful to anyone trying the hardware path
without training a network first). Everything is drawn from a ``numpy.random.Generator`` so a
seed reproduces it.
"""

from __future__ import annotations

import numpy as np

from .conv import Add, AvgPool, Conv, Flatten, MaxPool
from .model import (
    Binary,
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    Lut,
    NoOutput,
    Pow2,
    Requant,
    Ternary,
    Threshold,
)

__all__ = ["ENCODINGS", "random_weights", "random_dense", "random_thresholds", "sfc", "mlp",
           "digits_like", "random_conv", "cnn", "resnet1d"]

#: encoding name -> a default instance
ENCODINGS = {
    "binary": Binary(),
    "ternary": Ternary(),
    "pow2": Pow2(0, 3, zero=True),
    "denseshift": Pow2(0, 3, zero=False),
    "lut": Lut((-3, -1, 0, 2)),
    "int": IntWeights(4),
}


def _xnor(encoding) -> bool:
    """Whether the encoding meets bipolar inputs in an XNOR-popcount (binary weights)."""
    return encoding.datapath(InputFormat.bipolar()) == "xnor_popcount"


def random_weights(rng: np.random.Generator, encoding, shape, sparsity: float = 0.0) -> np.ndarray:
    """Draw weights allowed by ``encoding``; ``sparsity`` zeroes that fraction where zeros exist
    (:meth:`encoding.random <bitfab.encodings.Ternary.random>`)."""
    return encoding.random(rng, shape, sparsity)


def random_thresholds(rng: np.random.Generator, layer: Dense, count: int) -> Threshold:
    """Draw sorted thresholds spread over the layer's reachable accumulator range."""
    lo, hi = layer.acc_range
    span = np.maximum(hi - lo, 1)
    # centred on the accumulator distribution of random inputs, spread by its standard deviation
    centre = (lo + hi) // 2
    sd = np.maximum(np.sqrt(span).astype(np.int64), 1)
    t = np.sort(centre[:, None] + rng.integers(-2, 3, size=(len(lo), count)) * sd[:, None]
                + rng.integers(-1, 2, size=(len(lo), count)), axis=1)
    direction = rng.choice(np.array([-1, 1]), size=len(lo))
    t = np.where(direction[:, None] > 0, t, t[:, ::-1])
    return Threshold(t, direction)


def random_dense(rng: np.random.Generator, n_in: int, n_out: int, encoding="binary",
                 input_format: InputFormat | None = None, output: str = "none",
                 thresholds: int = 1, sparsity: float = 0.0, bias: bool = True,
                 requant_bits: int = 4) -> Dense:
    """Draw a random dense layer; ``output`` is ``none``, ``threshold`` or ``requant``."""
    enc = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    if input_format is None:
        input_format = InputFormat.bipolar() if _xnor(enc) else InputFormat.int(4)
    w = random_weights(rng, enc, (n_out, n_in), sparsity)
    b = rng.integers(-4, 5, size=n_out) if bias else None
    layer = Dense(w, enc, input_format, NoOutput(), b)
    if output == "threshold":
        layer = layer.replace(output=random_thresholds(rng, layer, thresholds))
    elif output == "requant":
        lo, hi = layer.acc_range
        mag = max(int(np.abs(lo).max()), int(np.abs(hi).max()), 1)
        shift = max(mag.bit_length() - requant_bits + 4, 0)
        mult = rng.integers(1, 16, size=n_out)
        layer = layer.replace(output=Requant(mult, shift, requant_bits, signed=True,
                                             rounding=str(rng.choice(["floor", "half_up"]))))
    elif output != "none":
        raise ValueError(f"output must be 'none', 'threshold' or 'requant', not {output!r}")
    return layer


def mlp(rng: np.random.Generator, sizes, encoding="binary", name="mlp") -> IntegerModel:
    """A random MLP: bipolar activations between binary layers (1 threshold), 2-bit activations
    (3 thresholds) between other layers, raw accumulators at the end."""
    enc = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    binary = _xnor(enc)
    layers = []
    fmt = InputFormat.bipolar() if binary else InputFormat.int(8)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layer = random_dense(rng, n_in, n_out, enc, fmt, "none" if last else "threshold",
                             thresholds=1 if binary else 3)
        layers.append(layer.replace(name=f"fc{i}"))
        fmt = InputFormat.bipolar() if binary else InputFormat.int(2)
    return IntegerModel(tuple(layers), name=name)


def digits_like(seed: int = 0) -> IntegerModel:
    """The shape of the digits network of ``bitfab demo`` with random weights: 64 uint5 inputs,
    binary 64-64-32-10, raw accumulators out (40-byte input and 9-byte result payloads)."""
    rng = np.random.default_rng(seed)
    return IntegerModel((
        random_dense(rng, 64, 64, "binary", InputFormat.int(5), "threshold").replace(name="fc0"),
        random_dense(rng, 64, 32, "binary", InputFormat.bipolar(), "threshold").replace(
            name="fc1"),
        random_dense(rng, 32, 10, "binary", InputFormat.bipolar(), "none").replace(name="fc2"),
    ), name="digits")


def sfc(rng: np.random.Generator) -> IntegerModel:
    """FINN's SFC topology 784-256-256-256-10, bipolar weights and activations."""
    return mlp(rng, (784, 256, 256, 256, 10), "binary", name="sfc")


def random_conv(rng: np.random.Generator, in_shape, out_channels: int, kernel, encoding="binary",
                input_format: InputFormat | None = None, output: str = "none",
                thresholds: int = 1, stride=1, padding=0, groups: int = 1,
                sparsity: float = 0.0, requant_bits: int = 4, name: str = "",
                source: str = "") -> Conv:
    """Draw a random conv layer (1-D or 2-D by ``in_shape``); ``output`` as
    :func:`random_dense`. Bipolar inputs pad with -1 or +1 at random, int inputs with 0."""
    enc = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    if input_format is None:
        input_format = InputFormat.bipolar() if _xnor(enc) else InputFormat.int(4)
    kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * (len(in_shape) - 1)
    w = random_weights(rng, enc, (out_channels,) + kernel + (in_shape[-1] // groups,), sparsity)
    pad = int(rng.choice([-1, 1])) if input_format.kind == "bipolar" else 0
    layer = Conv(w, enc, input_format, tuple(in_shape), stride, padding, pad, groups,
                 bias=rng.integers(-4, 5, size=out_channels), name=name, source=source)
    if output == "threshold":
        layer = layer.replace(output=random_thresholds(rng, layer, thresholds))
    elif output == "requant":
        lo, hi = layer.acc_range
        mag = max(int(np.abs(lo).max()), int(np.abs(hi).max()), 1)
        # a typical accumulator (about sqrt of the bound) maps to the middle of the range
        shift = max((int(np.sqrt(mag)) * 16).bit_length() - requant_bits, 0)
        layer = layer.replace(output=Requant(rng.integers(1, 16, size=out_channels), shift,
                                             requant_bits, signed=False))
    elif output != "none":
        raise ValueError(f"output must be 'none', 'threshold' or 'requant', not {output!r}")
    return layer


def cnn(rng: np.random.Generator, image=(8, 8, 1), channels=(4, 8), classes: int = 10,
        encoding="binary", name: str = "cnn") -> IntegerModel:
    """A random small CNN: (conv 3x3 pad 1 -> maxpool 2) per entry of ``channels``, flatten,
    dense. Binary encodings get bipolar activations (1 threshold), others 2-bit ones."""
    enc = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    binary = _xnor(enc)
    act = InputFormat.int(1) if binary else InputFormat.int(2)
    fmt = InputFormat.bipolar() if binary else InputFormat.int(4)
    shape, layers = tuple(image), []
    for i, c in enumerate(channels):
        conv = random_conv(rng, shape, c, 3, enc, fmt, "threshold", 1 if binary else 3,
                           padding=1, name=f"conv{i}")
        pool = MaxPool(act, conv.out_shape, 2, name=f"pool{i}")
        layers += [conv, pool]
        shape = pool.out_shape
        fmt = InputFormat.bipolar() if binary else act
    layers.append(Flatten(act, shape, name="flatten"))
    layers.append(random_dense(rng, int(np.prod(shape)), classes, enc, fmt, "none")
                  .replace(name="fc"))
    return IntegerModel(tuple(layers), name=name)


def resnet1d(rng: np.random.Generator, length: int = 16, channels: int = 4, classes: int = 4,
             encoding="pow2", name: str = "resnet1d") -> IntegerModel:
    """A random small 1-D ResNet on 4-bit signals: a stem conv, one residual block (two convs
    and an add on the identity), a stride-2 block whose skip path is a 1x1 conv, global average
    pooling (a sum and a requant), flatten and a dense classifier. Activations are unsigned
    3-bit requantized values; every skip edge is aligned by a shift."""
    enc = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    act = InputFormat.int(3)

    def conv(shape, c, k, name, source="", stride=1, padding=1, fmt=act):
        return random_conv(rng, shape, c, k, enc, fmt, "requant", stride=stride,
                           padding=padding, requant_bits=3, name=name, source=source)

    stem = conv((length, 1), channels, 3, "stem", fmt=InputFormat.int(4, signed=True))
    a1 = conv(stem.out_shape, channels, 3, "a1")
    a2 = conv(a1.out_shape, channels, 3, "a2")
    add1 = Add(act, act, a2.out_shape, "stem", 0, 1,
               Requant(np.ones(channels, dtype=np.int64), 1, 3), name="add1")
    b1 = conv(add1.out_shape, 2 * channels, 3, "b1", stride=2)
    b2 = conv(b1.out_shape, 2 * channels, 3, "b2")
    proj = conv(add1.out_shape, 2 * channels, 1, "proj", source="add1", stride=2, padding=0)
    add2 = Add(act, act, b2.out_shape, "proj", 0, 0,
               Requant(np.ones(2 * channels, dtype=np.int64), 1, 3), name="add2", source="b2")
    window = b2.out_shape[0]
    gap = AvgPool(act, add2.out_shape, window, output=Requant(
        np.full(2 * channels, 1, dtype=np.int64), max(window.bit_length() - 1, 0), 3),
        name="gap")
    flat = Flatten(act, gap.out_shape, name="flatten")
    fc = random_dense(rng, flat.out_shape[0], classes, enc, act, "none").replace(name="fc")
    return IntegerModel((stem, a1, a2, add1, b1, b2, proj, add2, gap, flat, fc), name=name)
