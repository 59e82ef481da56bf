"""Hand-built IntegerModels: random layers of every encoding, and the SFC topology.

Used by the demo, the benchmarks and the tests (and useful to anyone trying the hardware path
without training a network first). Everything is drawn from a ``numpy.random.Generator`` so a
seed reproduces it.
"""

from __future__ import annotations

import numpy as np

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

__all__ = ["ENCODINGS", "random_weights", "random_dense", "random_thresholds", "sfc", "mlp"]

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


def sfc(rng: np.random.Generator) -> IntegerModel:
    """FINN's SFC topology 784-256-256-256-10, bipolar weights and activations."""
    return mlp(rng, (784, 256, 256, 256, 10), "binary", name="sfc")
