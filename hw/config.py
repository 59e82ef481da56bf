"""Datapath configurations: one frozen dataclass per layer datapath, validated on construction.

A :class:`LayerConfig` names everything a hardware generator needs to build one dense layer: the
:class:`~bitfab.model.Dense` layer itself (weights, encoding, input format, output stage), the
architecture (``unrolled`` or ``folded``), the folding factors ``pe`` and ``simd`` and the pipeline
parameter ``K``. Variants are made with :meth:`LayerConfig.replace`. This module never imports
amaranth, so host code can build and inspect configurations without it.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bitfab.encodings import DATAPATHS, is_encoding
from bitfab.errors import BitfabError
from bitfab.model import STAGES, Dense

__all__ = ["ConfigError", "LayerConfig", "ARCHITECTURES", "DATAPATHS", "DEFAULT_PIPELINE",
           "STORAGES", "SPRAM_DEPTH", "SPRAM_WIDTH", "parse_fold", "check_pipeline",
           "LayerFolds", "BALANCED", "parse_layer_folds", "fold_text"]

#: the two architectures
ARCHITECTURES = ("unrolled", "folded")
#: where a folded layer's weight memory lives: ``bram`` (block RAM with initial contents in the
#: bitstream: iCE40 EBR, ECP5 DP16KD) or ``spram`` (iCE40 UP SB_SPRAM256KA, no initial contents:
#: loaded at run time, docs/boards.md "Weights in SPRAM")
STORAGES = ("bram", "spram")
#: words and bits of one SB_SPRAM256KA
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16
#: the pipeline parameter ``K`` every command uses unless told otherwise (``bitfab verilog``,
#: ``sim``, ``synth`` and ``board run`` alike: what a user simulates is what they synthesize)
DEFAULT_PIPELINE = 1


class ConfigError(BitfabError, ValueError):
    """A hardware configuration (architecture, folding, pipelining) is invalid."""


def _index(value, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, not {value!r}") from None


def check_pipeline(pipeline) -> int:
    """Return ``pipeline`` as a non-negative int, or raise :class:`ConfigError`."""
    pipeline = _index(pipeline, "pipeline")
    if pipeline < 0:
        raise ConfigError(f"pipeline must be a non-negative integer, not {pipeline}")
    return pipeline


def parse_fold(text: str) -> tuple[int, int]:
    """Parse ``"PE,SIMD"`` (e.g. ``"4,8"``) into two integers; raise :class:`ConfigError`."""
    parts = str(text).split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"fold must be 'PE,SIMD' with two positive integers, not {text!r}")
    return int(parts[0]), int(parts[1])


#: ``--fold balanced``: every conv and dense layer its own fold, the intervals balanced
#: (:func:`bitfab.hw.layer.layer_folds`)
BALANCED = "balanced"


def parse_layer_folds(text: str) -> tuple:
    """Parse ``"LAYER=PE,SIMD,LAYER=PE,SIMD..."`` (``LAYER`` a layer's name or 0-based index,
    ``=unrolled`` for one left unrolled; entries apart by ``,`` or ``;``) into
    ``((layer, (pe, simd) or None), ...)``, layers as written; raise :class:`ConfigError`
    naming the entry that does not parse."""
    entries, pos, text = [], 0, str(text)
    while pos < len(text):
        m = _ENTRY.match(text, pos)
        if m is None:
            where = f" ({text[pos:]!r} is not LAYER=PE,SIMD or LAYER=unrolled)" if pos else ""
            raise ConfigError(f"fold must be 'PE,SIMD', 'balanced' or "
                              f"'LAYER=PE,SIMD,...', not {text!r}{where}")
        name, value = m.group(1), m.group(2)
        fold = None if value == "unrolled" else tuple(int(v) for v in value.split(","))
        if fold is not None and min(fold) < 1:
            raise ConfigError(f"fold of {name} must be two positive integers, not {value!r}")
        entries.append((name, fold))
        pos = m.end()
    if not entries:
        raise ConfigError("fold must name at least one layer (LAYER=PE,SIMD), not ''")
    return tuple(entries)


_ENTRY = re.compile(r"\s*([^=,;\s]+)\s*=\s*(unrolled|\d+\s*,\s*\d+)\s*(?:[,;]|$)")


@dataclass(frozen=True)
class LayerFolds:
    """One fold per layer of a network, each taken as given (not capped to the layer as one
    network-wide fold is): what ``--fold balanced`` and ``--fold LAYER=PE,SIMD,...`` make
    (:func:`bitfab.hw.layer.layer_folds`, which checks every fold against its layer).
    :func:`bitfab.hw.layer.network_configs` takes it wherever it takes ``(pe, simd)``.

    Members
    -------
    folds : tuple
        Per layer ``(pe, simd)``, or None: unrolled (and every layer without weights).

    Raises
    ------
    ConfigError
        A fold that is not two positive integers.
    """

    folds: tuple

    def __post_init__(self):
        out = []
        for i, fold in enumerate(tuple(self.folds)):
            if fold is not None:
                if len(tuple(fold)) != 2:
                    raise ConfigError(f"folds[{i}] must be (pe, simd) or None, not {fold!r}")
                fold = tuple(_index(v, f"folds[{i}]") for v in fold)
                if min(fold) < 1:
                    raise ConfigError(f"folds[{i}] must be two positive integers, not {fold!r}")
            out.append(fold)
        object.__setattr__(self, "folds", tuple(out))

    def __len__(self) -> int:
        return len(self.folds)

    def __getitem__(self, index):
        return self.folds[index]

    def __iter__(self):
        return iter(self.folds)

    def __str__(self) -> str:
        # a file-name-safe tag (simulation caches): 1x8-u-2x4
        return "-".join("u" if f is None else f"{f[0]}x{f[1]}" for f in self.folds)

    def text(self) -> str:
        """The ``--fold`` that makes these folds again: ``INDEX=PE,SIMD`` per folded layer
        (``unrolled`` when none is)."""
        parts = [f"{i}={f[0]},{f[1]}" for i, f in enumerate(self.folds) if f is not None]
        return ",".join(parts) or "unrolled"

    def to_json(self) -> list:
        """``[[pe, simd] or None, ...]``, one entry per layer."""
        return [None if f is None else list(f) for f in self.folds]


def fold_text(fold) -> str:
    """``"unrolled"``, ``"PE,SIMD"`` or a :class:`LayerFolds`' :meth:`~LayerFolds.text`."""
    if fold is None:
        return "unrolled"
    if isinstance(fold, LayerFolds):
        return fold.text()
    return f"{fold[0]},{fold[1]}"


@dataclass(frozen=True, eq=False)
class LayerConfig:
    """How one dense layer becomes hardware.

    Members
    -------
    layer : Dense
        The layer (its weights become netlist constants or memory contents).
    architecture : ``"unrolled"`` or ``"folded"``
        *unrolled*: every weight is a constant in the netlist; one vector per clock.
        *folded*: ``pe`` output channels x ``simd`` inputs per clock, weights in a memory.
    pe : int or None
        Processing elements (output channels computed in parallel); folded only, ``1 <= pe <= out``.
        Channels are padded to a multiple of ``pe``.
    simd : int or None
        Inputs consumed per clock by every PE; folded only, must divide ``in_features``.
    pipeline : int
        ``K``: a register stage after every ``K`` adder levels (0 = combinational sums).
    weights : ``"bram"`` or ``"spram"``
        Where a folded layer's weight memory lives (:data:`STORAGES`); ``spram`` memories start
        empty and are written through the layer's ``load`` port (:meth:`load_image`).

    Raises
    ------
    ConfigError
        An unknown architecture, ``pe``/``simd`` out of range or given to an unrolled layer,
        ``simd`` not dividing ``in_features``, a negative ``pipeline``, an encoding or input format
        that no datapath supports.
    """

    layer: Dense
    architecture: Literal["unrolled", "folded"] = "unrolled"
    pe: int | None = None
    simd: int | None = None
    pipeline: int = 0
    weights: Literal["bram", "spram"] = "bram"

    def __post_init__(self):
        layer = self.layer
        if not isinstance(layer, Dense):
            raise ConfigError(f"layer must be a bitfab.model.Dense, not {type(layer).__name__}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be 'unrolled' or 'folded', "
                              f"not {self.architecture!r}")
        enc = layer.encoding
        if not is_encoding(enc) or layer.datapath not in DATAPATHS:
            raise ConfigError(f"no datapath supports the encoding {enc!r}")
        if layer.input.kind not in ("bipolar", "int"):
            raise ConfigError(f"no datapath supports the input format {layer.input!r}")
        if STAGES.get(getattr(layer.output, "kind", None)) is not type(layer.output):
            raise ConfigError(f"no output stage supports {layer.output!r}")
        object.__setattr__(self, "pipeline", check_pipeline(self.pipeline))
        if self.weights not in STORAGES:
            raise ConfigError(f"weights must be 'bram' or 'spram', not {self.weights!r}")
        if self.weights == "spram" and self.architecture != "folded":
            raise ConfigError("weights in spram apply to a folded layer only (an unrolled "
                              "layer's weights are netlist constants)")
        n_in, n_out = layer.in_features, layer.out_features
        if self.architecture == "unrolled":
            if self.pe is not None or self.simd is not None:
                raise ConfigError(f"pe and simd apply to the folded architecture only, "
                                  f"not to an unrolled layer (pe={self.pe!r}, simd={self.simd!r})")
            return
        if self.pe is None or self.simd is None:
            raise ConfigError(f"a folded layer needs both pe and simd, "
                              f"not pe={self.pe!r}, simd={self.simd!r}")
        pe = _index(self.pe, "pe")
        simd = _index(self.simd, "simd")
        if not 1 <= pe <= n_out:
            raise ConfigError(f"pe must be in 1..out_features ({n_out}), not {pe}")
        if simd < 1 or n_in % simd:
            raise ConfigError(f"simd must divide in_features ({n_in}), not {simd!r}")
        object.__setattr__(self, "pe", pe)
        object.__setattr__(self, "simd", simd)

    @classmethod
    def unrolled(cls, layer: Dense, pipeline: int = 0) -> LayerConfig:
        """Return the fully unrolled configuration of ``layer``."""
        return cls(layer, "unrolled", pipeline=pipeline)

    @classmethod
    def folded(cls, layer: Dense, pe: int, simd: int, pipeline: int = 0,
               weights: str = "bram") -> LayerConfig:
        """Return the folded configuration of ``layer`` with ``pe`` x ``simd`` per clock."""
        return cls(layer, "folded", pe, simd, pipeline, weights)

    def replace(self, **changes) -> LayerConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- derived facts ----------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The datapath: ``xnor_popcount``, ``ternary``, ``shift_add``, ``lut`` or ``int``
        (the encoding's :meth:`~bitfab.encodings.Binary.datapath` on the layer's input)."""
        return self.layer.datapath

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    @property
    def in_bits(self) -> int:
        """Width of one input element in the payload (1 for bipolar)."""
        return self.layer.input.bits

    @property
    def out_bits(self) -> int:
        """Width of one output element in the payload (:attr:`Dense.out_bits`)."""
        return self.layer.out_bits

    @property
    def synapse_folds(self) -> int:
        """``SF = in_features / simd`` clocks per output channel group (1 when unrolled)."""
        return 1 if self.architecture == "unrolled" else self.in_features // self.simd

    @property
    def neuron_folds(self) -> int:
        """``NF = ceil(out_features / pe)`` channel groups (1 when unrolled)."""
        return 1 if self.architecture == "unrolled" else -(-self.out_features // self.pe)

    @property
    def initiation_interval(self) -> int:
        """Clocks between accepted input vectors at full throughput:
        ``ceil(in/SIMD) * ceil(out/PE)`` when folded, 1 when unrolled."""
        return self.synapse_folds * self.neuron_folds

    @property
    def weight_code_bits(self) -> int:
        """Bits of one weight in the folded weight memory (the encoding's ``code_bits``: binary 1,
        ternary 2, pow2 ``2 + bit_length(e_max - e_min)``, lut the index width, int the weight
        width)."""
        return self.layer.encoding.code_bits

    def weight_codes(self) -> np.ndarray:
        """Return the ``(out, in)`` memory codes of the weights (the encoding's ``codes``)."""
        return self.layer.encoding.codes(self.layer.weights)

    @property
    def weight_word_bits(self) -> int:
        """Bits of one folded weight-memory word: ``pe * simd * weight_code_bits``."""
        return self.pe * self.simd * self.weight_code_bits

    @property
    def weight_depth(self) -> int:
        """Words of the folded weight memory: ``NF * SF``."""
        return self.neuron_folds * self.synapse_folds

    @property
    def weight_bits(self) -> int:
        """Bits of the folded weight memory: ``weight_depth * weight_word_bits``."""
        return self.weight_depth * self.weight_word_bits

    @property
    def spram_columns(self) -> int:
        """SB_SPRAM256KA side by side that hold one word: ``ceil(word bits / 16)``."""
        return -(-self.weight_word_bits // SPRAM_WIDTH)

    @property
    def spram_blocks(self) -> int:
        """SB_SPRAM256KA the weight memory takes in SPRAM: columns x ``ceil(depth / 16384)``."""
        return self.spram_columns * -(-self.weight_depth // SPRAM_DEPTH)

    def weight_words(self) -> list[int]:
        """Return the folded weight memory's words: word ``nf * SF + sf`` holds channels
        ``nf*pe .. nf*pe+pe-1`` (padding channels repeat the last one), inputs
        ``sf*simd .. sf*simd+simd-1``, code ``(p, j)`` at bits ``[(p*simd+j)*cb, ...)``."""
        pe, simd, cb = self.pe, self.simd, self.weight_code_bits
        codes = self.weight_codes()
        words = []
        for nf in range(self.neuron_folds):
            for sf in range(self.synapse_folds):
                word = 0
                for p in range(pe):
                    o = min(nf * pe + p, self.out_features - 1)
                    for j in range(simd):
                        word |= int(codes[o, sf * simd + j]) << ((p * simd + j) * cb)
                words.append(word)
        return words

    def load_image(self) -> np.ndarray:
        """Return the 16-bit words that load an ``spram`` layer's weight memory, in load order:
        for each memory word (address 0 up), its 16-bit columns, low bits first
        (:attr:`spram_columns` per word; the last column zero-padded)."""
        cols = self.spram_columns
        mask = (1 << SPRAM_WIDTH) - 1
        return np.array([(w >> (SPRAM_WIDTH * c)) & mask for w in self.weight_words()
                         for c in range(cols)], dtype=np.uint16)

    def to_json(self) -> dict:
        """Return the configuration facts as a JSON object (the layer by its description)."""
        layer = self.layer
        out = {
            "architecture": self.architecture,
            "pe": self.pe,
            "simd": self.simd,
            "pipeline": self.pipeline,
            "weights": self.weights if self.architecture == "folded" else None,
            "datapath": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "encoding": layer.encoding.to_json(),
            "input": layer.input.to_json(),
            "output": layer.output.kind,
            "acc_bits": layer.acc_bits,
            "name": layer.name,
            "kind": layer.kind,
        }
        stage = layer.output
        if stage.kind == "threshold":
            out["thresholds"] = stage.count
        if stage.kind == "requant":
            out["requant"] = {"shift": stage.shift, "bits": stage.bits, "signed": stage.signed,
                              "rounding": stage.rounding, "offset": stage.offset}
        return out
