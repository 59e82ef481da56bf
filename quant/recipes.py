"""Training recipes: which quantizer, which activations, which defaults.

A :class:`TrainConfig` is everything needed to rebuild a network: it is stored in the exported
model's metadata, so ``bitfab eval`` can rebuild the torch reference from the file alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from bitfab.errors import BitfabError

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

__all__ = ["RECIPES", "Recipe", "TrainConfig", "build_model", "default_hidden"]


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
)}


def default_hidden(recipe: str, dataset: str) -> tuple[int, ...]:
    """Hidden sizes by default: 64-32 on digits, 256-256 on 28x28 data (784-256-256-10);
    one hidden layer for sparse-binary (the two-layer net)."""
    small = dataset in ("digits", "mnist1d")
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
    lr, weight_decay : float
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
    lr: float = 0.01
    weight_decay: float = 0.0
    seed: int = 0
    options: dict = field(default_factory=dict)
    limit: int | None = None
    act_stage: str = "threshold"

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise BitfabError(f"recipe must be one of {sorted(RECIPES)}, not {self.recipe!r}")
        recipe = RECIPES[self.recipe]
        unknown = set(self.options) - set(recipe.options)
        if unknown:
            raise BitfabError(f"recipe {self.recipe!r} takes options {sorted(recipe.options)}, "
                              f"not {sorted(unknown)}")
        if not self.hidden:
            object.__setattr__(self, "hidden", default_hidden(self.recipe, self.dataset))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.act_bits is None and recipe.act_bits is not None:
            object.__setattr__(self, "act_bits", recipe.act_bits)
        if recipe.act_bits is None:
            object.__setattr__(self, "act_bits", None)
        elif not 1 <= self.act_bits <= 8:
            raise BitfabError(f"act_bits must be in 1..8, not {self.act_bits!r}")
        if self.epochs < 1:
            raise BitfabError(f"epochs must be at least 1, not {self.epochs!r}")
        if self.batch_size < 2:
            raise BitfabError(f"batch_size must be at least 2, not {self.batch_size!r}")
        object.__setattr__(self, "options", {**recipe.options, **self.options})

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


def build_model(config: TrainConfig, n_in: int, n_out: int, input_format,
                input_scale: float) -> QuantMLP:
    """Return the untrained network of ``config``."""
    recipe = RECIPES[config.recipe]
    factory = partial(recipe.quantizer, **config.options)
    return QuantMLP(n_in, config.hidden, n_out, lambda shape: factory(shape), config.act_bits,
                    input_format, input_scale, config.act_stage)
