"""Training recipes: which quantizer, which activations, which defaults.

A :class:`TrainConfig` is everything needed to rebuild a network: it is stored in the exported
model's metadata, so ``bitfab eval`` can rebuild the torch reference from the file alone.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from bitfab.errors import BitfabError

from .conv import QuantConvNet, image_shape
from .network import QuantMLP
from .quantizers import (
    BinaryWeight,
    DenseShiftWeight,
    FloatWeight,
    IntWeight,
    LutQWeight,
    Pow2Weight,
    SparseBinaryWeight,
    TernaryWeight,
    TwoBitWeight,
    WeightQuantizer,
)

__all__ = ["RECIPES", "Recipe", "float_twin", "TrainConfig", "build_model", "default_hidden",
           "MAX_WEIGHTS", "mlp_weights", "check_int", "check_rate"]

#: the most weights a trained MLP may have (16 Mi: 64 MiB of float32, with Adam's state ~256 MiB;
#: the default MNIST net 784-256-256-10 has 0.27 Mi). A larger ``--hidden`` is refused before any
#: work, as is a model file whose metadata asks for one (it would allocate it to rebuild).
MAX_WEIGHTS = 1 << 24


def mlp_weights(sizes) -> int:
    """Return the weights of an MLP with layer ``sizes`` (inputs, hidden..., classes)."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


@dataclass(frozen=True)
class Recipe:
    """One way to train: a quantizer factory and the activation width it defaults to."""

    name: str
    description: str
    quantizer: Callable[..., WeightQuantizer]
    act_bits: int | None
    #: option name -> default, passed to the quantizer as keyword arguments
    options: dict = field(default_factory=dict)
    #: a network with one hidden layer (the two-layer net of the paper)
    shallow: bool = False
    #: the convolutional network (:data:`bitfab.quant.conv.ARCHES`), None for an MLP
    arch: str | None = None
    #: the default Adam learning rate
    lr: float = 0.01


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("float", "float32 reference (not exportable)", FloatWeight, None),
    Recipe("binary", "BinaryConnect weights, bipolar (BNN) activations", BinaryWeight, 1),
    Recipe("sparse-binary", "Deep Adaptive Network: sparse {-1,0,+1}, magnitude schedule to 25 % "
           "kept (lam > 0 adds the reweighted L1)",
           SparseBinaryWeight, 4, {"kept": 0.25, "end": 0.6, "lam": 0.0}, shallow=True),
    Recipe("ternary", "TWN ternary weights (method=ttq for TTQ)", TernaryWeight, 4,
           {"method": "twn"}),
    Recipe("pow2", "DeepShift power-of-two weights with zero (15 levels, 4 bits)", Pow2Weight, 4,
           {"levels": 7}),
    Recipe("denseshift", "DenseShift zero-free s * 2^p, p in 0..3 (3 bits)", DenseShiftWeight, 4,
           {"P": 3}),
    Recipe("lutq", "LUT-Q, 4-entry learned dictionary (constraint none|pow2|prune|pow2+prune)",
           LutQWeight, 4, {"K": 4, "constraint": "none", "prune": 0.5}),
    Recipe("twobit", "two-stage soft -> hard 2-bit weights", TwoBitWeight, 4,
           {"lam": 1.0, "hard_from": 0.7}),
    Recipe("int8", "8-bit integer weights, 8-bit activations (the baseline)", IntWeight, 8,
           {"bits": 8}),
    # convolutional networks (bitfab.quant.conv): 2-D CNNs on images, ResNets on 1-D signals
    # (mnist1d) or images
    Recipe("cnn-float", "float32 CNN (the twin of the cnn-* recipes; not exportable)",
           FloatWeight, None, arch="cnn"),
    # the hard stage from half way: on Fashion-MNIST (seed 0, 15 epochs, 16-32) hard_from 0.7 /
    # 0.5 gave 89.68 / 90.59 % against the float CNN's 91.53 %
    Recipe("cnn-twobit", "two-stage soft -> hard 2-bit weights on a CNN", TwoBitWeight, 4,
           {"lam": 1.0, "hard_from": 0.5}, arch="cnn"),
    Recipe("cnn-binary", "BinaryConnect weights, bipolar activations, on a CNN", BinaryWeight, 1,
           arch="cnn"),
    Recipe("cnn-ternary", "TWN ternary weights on a CNN", TernaryWeight, 4, {"method": "twn"},
           arch="cnn"),
    Recipe("resnet-float", "float32 ResNet (the twin of the resnet-* recipes; not exportable)",
           FloatWeight, None, arch="resnet"),
    Recipe("resnet-pow2", "power-of-two weights with zero (15 levels) on a ResNet", Pow2Weight,
           4, {"levels": 7}, arch="resnet"),
    # the latent sign and scale bits need larger steps than float weights: on mnist1d (seed 0,
    # 30 epochs) lr 0.003 / 0.01 / 0.02 gave 97.7 / 97.7 / 98.9 % (float ResNet: 98.8 %)
    Recipe("resnet-denseshift", "DenseShift zero-free s * 2^p, p in 0..3, on a ResNet",
           DenseShiftWeight, 4, {"P": 3}, arch="resnet", lr=0.02),
)}


def float_twin(recipe: str) -> str:
    """Return the float recipe of the same network shape as ``recipe``.

    >>> float_twin("cnn-twobit"), float_twin("pow2")
    ('cnn-float', 'float')
    """
    arch = RECIPES[recipe].arch
    return "float" if arch is None else f"{arch}-float"


def default_hidden(recipe: str, dataset: str) -> tuple[int, ...]:
    """Hidden sizes by default: 64-32 on digits, 256-256 on 28x28 data (784-256-256-10);
    one hidden layer for sparse-binary (the two-layer net); the channel widths of the
    convolutional recipes: 16-32 (cnn), 16-32-64 (resnet)."""
    small = dataset in ("digits", "mnist1d")
    arch = RECIPES[recipe].arch
    if arch == "cnn":
        return (16, 32)
    if arch == "resnet":
        return (16, 32, 64)
    if RECIPES[recipe].shallow:
        return (128,) if small else (512,)
    return (64, 32) if small else (256, 256)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in the exported model's metadata).

    Members
    -------
    recipe : str
    dataset : str
    hidden : tuple of int
    act_bits : int or None
    epochs, batch_size : int
    lr : float or None
        Adam's learning rate (None: the recipe's, 0.01 for most).
    weight_decay : float
    seed : int
    options : dict
        Quantizer keyword arguments (override the recipe's defaults).
    limit : int or None
        Train on the first ``limit`` training examples only (tests, quick looks).
    act_stage : str
        ``threshold`` (exact batchnorm folding) or ``requant`` (integer bias + multiplier).
    """

    recipe: str
    dataset: str = "digits"
    hidden: tuple = ()
    act_bits: int | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 0.0
    seed: int = 0
    options: dict = field(default_factory=dict)
    limit: int | None = None
    act_stage: str = "threshold"

    def __post_init__(self):
        if not isinstance(self.recipe, str) or self.recipe not in RECIPES:
            raise BitfabError(f"recipe must be one of {sorted(RECIPES)}, not {self.recipe!r}")
        recipe = RECIPES[self.recipe]
        if not isinstance(self.options, dict):
            raise BitfabError(f"options must be a mapping, not {self.options!r}")
        unknown = set(self.options) - set(recipe.options)
        if unknown:
            raise BitfabError(f"recipe {self.recipe!r} takes options {sorted(recipe.options)}, "
                              f"not {sorted(unknown)}")
        if not isinstance(self.dataset, str):
            raise BitfabError(f"dataset must be a dataset name, not {self.dataset!r}")
        if not self.hidden:
            object.__setattr__(self, "hidden", default_hidden(self.recipe, self.dataset))
        object.__setattr__(self, "hidden", tuple(check_int("hidden", h, 1) for h in self.hidden))
        # a lower bound (at least one input, two classes) refuses a huge net before any data
        if mlp_weights((1,) + self.hidden + (2,)) > MAX_WEIGHTS:
            raise BitfabError(f"hidden sizes {list(self.hidden)} make more than {MAX_WEIGHTS} "
                              f"weights, the most bitfab trains")
        for name, low, high in (("epochs", 1, None), ("batch_size", 2, None),
                                ("seed", 0, 2**32 - 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low, high))
        if self.limit is not None:
            object.__setattr__(self, "limit", check_int("limit", self.limit, 2))
        if self.lr is None:
            object.__setattr__(self, "lr", recipe.lr)
        object.__setattr__(self, "lr", check_rate("lr", self.lr))
        object.__setattr__(self, "weight_decay",
                           check_rate("weight_decay", self.weight_decay, positive=False))
        if self.act_bits is None and recipe.act_bits is not None:
            object.__setattr__(self, "act_bits", recipe.act_bits)
        if recipe.act_bits is None:
            object.__setattr__(self, "act_bits", None)
        elif isinstance(self.act_bits, bool) or not isinstance(self.act_bits, int) or \
                not 1 <= self.act_bits <= 8:
            raise BitfabError(f"act_bits must be in 1..8, not {self.act_bits!r}")
        object.__setattr__(self, "options", {**recipe.options, **self.options})
        if recipe.arch == "cnn" and self.dataset == "mnist1d":
            raise BitfabError(f"recipe {self.recipe!r} is a 2-D CNN and dataset mnist1d holds "
                              f"1-D signals: use resnet-pow2 or resnet-denseshift")
        if recipe.arch == "resnet" and self.act_bits == 1:
            raise BitfabError(f"recipe {self.recipe!r} adds activation codes: act_bits must be "
                              f"2..8, not 1 (bipolar)")
        if recipe.arch is not None and self.act_stage != "threshold":
            raise BitfabError(f"recipe {self.recipe!r} folds batchnorm into thresholds: "
                              f"act_stage must be 'threshold', not {self.act_stage!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        try:
            return cls(**{**d, "hidden": tuple(d.get("hidden", ()))})
        except TypeError as exc:
            raise BitfabError(f"metadata.config is not a training configuration ({exc})") from None


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int in ``low..high``; raise :class:`BitfabError` naming ``name``
    and the range otherwise (a training setting, from the command line or a model's metadata).
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise BitfabError(f"{name} must be an integer, not {value!r}") from None
    if value < low or (high is not None and value > high):
        raise BitfabError(f"{name} must be "
                          f"{f'in {low}..{high}' if high is not None else f'at least {low}'}, "
                          f"not {value!r}")
    return value


def check_rate(name: str, value, positive: bool = True) -> float:
    """Return ``value`` as a finite float, > 0 (``positive``) or >= 0; raise
    :class:`BitfabError` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise BitfabError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                          f"not {value!r}")
    return float(value)


def build_model(config: TrainConfig, n_in: int, n_out: int, input_format,
                input_scale: float) -> QuantMLP | QuantConvNet:
    """Return the untrained network of ``config``; refuse one of more than :data:`MAX_WEIGHTS`
    weights (before allocating it)."""
    weights = mlp_weights((n_in,) + config.hidden + (n_out,))
    if weights > MAX_WEIGHTS:
        sizes = "-".join(map(str, (n_in,) + config.hidden + (n_out,)))
        raise BitfabError(f"a {sizes} network has {weights} weights, more than {MAX_WEIGHTS}, "
                          f"the most bitfab trains")
    recipe = RECIPES[config.recipe]
    factory = partial(recipe.quantizer, **config.options)
    if recipe.arch is not None:
        shape = image_shape(config.dataset, n_in)
        return QuantConvNet(recipe.arch, shape, config.hidden, n_out, lambda s: factory(s),
                            config.act_bits, input_format, input_scale)
    return QuantMLP(n_in, config.hidden, n_out, lambda shape: factory(shape), config.act_bits,
                    input_format, input_scale, config.act_stage)
