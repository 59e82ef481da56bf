"""The IntegerModel: the one contract between quant/, sim/, hw/ and boards/.

A network is a tuple of layers of registered kinds (:mod:`bitfab.layers`: :mod:`bitfab.dense`,
:mod:`bitfab.lstm`). Every number in it is an integer except the input scale (and an optional
output scale): quant/ writes it, everything else only reads it. The semantics of every layer are
defined by :mod:`bitfab.sim.golden`; the layer modules define the data and check that it is well
formed, so that a model that constructs is a model that the golden model and the hardware
generators can execute without overflow. The file is :mod:`bitfab.fileformat`'s container.

This module also re-exports the names of the contract (formats, encodings, the dense kind), so
``from bitfab.model import Dense, Ternary, InputFormat`` keeps working.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dense import STAGES, Dense, NoOutput, OutputStage, Requant, Threshold
from .encodings import ENCODINGS, Binary, IntWeights, Lut, Pow2, Ternary, WeightEncoding
from .errors import ModelFormatError
from .fileformat import FORMAT_NAME, Reader, Writer, read_archive, write_archive
from .fileformat import field as get_field
from .formats import (
    MAX_ELEMENTS,
    MAX_MODEL_ELEMENTS,
    InputFormat,
    StreamFormat,
    frozen,
    signed_bits,
    unsigned_bits,
)
from .layers import is_layer, layer_kind, register_layer_kind

__all__ = [
    "InputFormat", "StreamFormat",
    "Binary", "Ternary", "Pow2", "Lut", "IntWeights", "WeightEncoding", "ENCODINGS",
    "Threshold", "Requant", "NoOutput", "OutputStage", "STAGES",
    "Dense", "IntegerModel", "register_layer_kind",
    "signed_bits", "unsigned_bits", "MAX_ELEMENTS", "MAX_MODEL_ELEMENTS", "array_elements",
]


# --- the network ----------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _finite(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None if it is no such number (a bool, a string,
    NaN, an integer too large for a float: JSON integers have no bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def array_elements(obj: Any) -> int:
    """Return the number of array elements a layer (or an output stage) holds: its array fields,
    and those of the dataclasses among its fields (what the model budget counts)."""
    total = 0
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            total += value.size
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            total += array_elements(value)
    return total


def _check_json(value: Any, what: str, depth: int = 0) -> None:
    if depth > 32:
        raise ModelFormatError(f"{what} is nested too deeply")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelFormatError(f"{what} keys must be strings, not {k!r}")
            _check_json(v, f"{what}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{what}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ModelFormatError(f"{what} must be JSON data, not {type(value).__name__}")


def _shape_of(layer, side: str) -> tuple:
    return tuple(getattr(layer, f"{side}_shape", None)
                 or ((layer.in_features,) if side == "in" else (layer.out_features,)))


def _check_edge(layers, src: int, dst: int, fmt_in: InputFormat, shape_in: tuple,
                what: str) -> None:
    """Check that what layer ``src`` emits (``-1``: the model input, checked by the caller)
    is what ``fmt_in`` / ``shape_in`` of layer ``dst`` reads (``what`` names the field)."""
    prev = layers[src]
    shape = _shape_of(prev, "out")
    if shape != shape_in:
        if len(shape) == 1 and len(shape_in) == 1:
            raise ModelFormatError(f"layers[{dst}].{what}: takes {shape_in[0]} inputs but "
                                   f"layers[{src}] gives {shape[0]}")
        hint = " (a flatten layer turns an image into a vector)" \
            if len(shape) > 1 and len(shape_in) == 1 else ""
        raise ModelFormatError(f"layers[{dst}].{what}: reads shape {shape_in} but layers[{src}] "
                               f"gives {shape}{hint}")
    fmt = prev.out_format
    field_name = "input" if what in ("weights", "in_shape", "shape") else "skip_input"
    if fmt_in.kind == "bipolar":
        if not (fmt.kind == "int" and fmt.bits == 1 and not fmt.signed):
            raise ModelFormatError(
                f"layers[{dst}].{field_name}: bipolar input needs a 1-bit unsigned output from "
                f"layers[{src}], which gives {fmt.describe()}")
    elif fmt.min_value < fmt_in.min_value or fmt.max_value > fmt_in.max_value:
        raise ModelFormatError(
            f"layers[{dst}].{field_name}: {fmt_in.describe()} cannot hold the "
            f"{fmt.describe()} output of layers[{src}]")


def _edges(layers: tuple) -> tuple[tuple[int, ...], ...]:
    """Resolve every layer's ``sources`` (names; ``""`` the previous layer, ``"input"`` the
    model's input) to layer indices (``-1`` the input), checking shapes, formats, order and
    that every tensor but the last is read."""
    index: dict[str, int] = {}
    edges = []
    read = [False] * len(layers)
    first = layers[0]
    for i, layer in enumerate(layers):
        names = getattr(layer, "sources", ("",))
        srcs = []
        for k, name in enumerate(names):
            where = "source" if k == 0 else "skip"
            if name == "":
                src = i - 1
            elif name == "input":
                src = -1
            elif name in index:
                src = index[name]
                if src < 0:
                    raise ModelFormatError(f"layers[{i}].{where}: more than one layer is named "
                                           f"{name!r}")
            else:
                raise ModelFormatError(f"layers[{i}].{where}: no earlier layer is named "
                                       f"{name!r}"[:300])
            if src >= 0:
                read[src] = True
                what = ("weights" if hasattr(layer, "weights") else
                        "shape" if layer.kind == "add" else "in_shape") if k == 0 else "skip"
                fmt = layer.input if k == 0 else layer.skip_input
                shape = _shape_of(layer, "in")
                _check_edge(layers, src, i, fmt, shape, what)
            elif i > 0:  # the model's input, read again: the same format and shape
                fmt = layer.input if k == 0 else layer.skip_input
                if fmt != first.input or _shape_of(layer, "in") != _shape_of(first, "in"):
                    raise ModelFormatError(f"layers[{i}].{where}: reads the model input "
                                           f"({first.input.describe()}, shape "
                                           f"{_shape_of(first, 'in')}) as "
                                           f"{fmt.describe()}, shape {_shape_of(layer, 'in')}")
            srcs.append(src)
        edges.append(tuple(srcs))
        if layer.name:
            index[layer.name] = -2 if layer.name in index else i
    unread = [i for i in range(len(layers) - 1) if not read[i]]
    if unread:
        raise ModelFormatError(f"layers[{unread[0]}]: its output is read by no layer (a "
                               f"dangling tensor); only the last layer's output leaves the model")
    return tuple(edges)


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """A quantized network as integers: what quant/ exports and sim/, hw/, boards/ read.

    Members
    -------
    layers : tuple of layers
        Each layer's input format holds every value the previous layer can emit (a one-threshold
        output feeds a bipolar input as its code).
    input_scale : float
        Real input ``x`` maps to the integer ``round(x / input_scale)``.
    output_scale : float or None
        Real value of one unit of the last layer's output, where it has one.
    metadata : JSON object
        Free-form facts (recipe, dataset split, training results, label names).
    extras : mapping of name -> numeric array
        Data that is not part of the integer semantics (e.g. the float state quant/ needs to
        rebuild the torch reference). Never read by sim/, hw/ or boards/.
    """

    layers: tuple
    input_scale: float = 1.0
    output_scale: float | None = None
    metadata: Mapping = field(default_factory=dict)
    extras: Mapping = field(default_factory=dict)
    name: str = "model"

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise ModelFormatError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not is_layer(layer):
                raise ModelFormatError(f"layers[{i}] must be a layer, not {type(layer).__name__}")
        object.__setattr__(self, "edges", _edges(layers))
        scale = _finite(self.input_scale)
        if scale is None or scale <= 0:
            raise ModelFormatError(f"input_scale must be a positive finite number, "
                                   f"not {self.input_scale!r}"[:300])
        if self.output_scale is not None and _finite(self.output_scale) is None:
            raise ModelFormatError(f"output_scale must be a finite number or None, "
                                   f"not {self.output_scale!r}"[:300])
        if not isinstance(self.metadata, Mapping):
            raise ModelFormatError(f"metadata must be a mapping, "
                                   f"not {type(self.metadata).__name__}")
        _check_json(self.metadata, "metadata")
        extras = {}
        for key, value in dict(self.extras).items():
            if not isinstance(key, str) or not _NAME_RE.match(key):
                raise ModelFormatError(f"extras: name {key!r} must match {_NAME_RE.pattern}")
            arr = value if frozen(value) else np.array(value)  # a private copy, unless frozen
            if arr.dtype.kind not in "biuf" or arr.size > MAX_ELEMENTS:
                raise ModelFormatError(f"extras.{key} must be a numeric array of at most "
                                       f"{MAX_ELEMENTS} elements, not {arr.dtype} x {arr.size}")
            arr.flags.writeable = False
            extras[key] = arr
        total = sum(array_elements(layer) for layer in layers) \
            + sum(arr.size for arr in extras.values())
        if total > MAX_MODEL_ELEMENTS:
            raise ModelFormatError(f"the model holds {total} array elements (layers and "
                                   f"extras), more than the limit {MAX_MODEL_ELEMENTS} of one "
                                   f"model (docs/limits.md)")
        if not isinstance(self.name, str):
            raise ModelFormatError(f"name must be a string, not {self.name!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_scale", scale)
        object.__setattr__(self, "metadata", json.loads(json.dumps(dict(self.metadata))))
        object.__setattr__(self, "extras", extras)

    @property
    def input(self) -> InputFormat:
        """Format of the network's input vector (the first layer's)."""
        return self.layers[0].input

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(in_features,)`` for vectors (and per time step of sequences),
        ``(L, C)`` or ``(H, W, C)`` for images."""
        return _shape_of(self.layers[0], "in")

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of one output (the last layer's)."""
        return _shape_of(self.layers[-1], "out")

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def weight_bits(self) -> int:
        """Total weight memory in bits (sum of the layers' ``weight_bits``)."""
        return sum(layer.weight_bits for layer in self.layers)

    @property
    def fp32_bits(self) -> int:
        """Memory the same weights take as float32: ``32 * number of weights``."""
        return 32 * sum(layer.weight_count for layer in self.layers)

    @property
    def memory_reduction(self) -> float:
        """``1 - weight_bits / fp32_bits``: 0.9375 for 2-bit weights."""
        return 1.0 - self.weight_bits / self.fp32_bits if self.fp32_bits else 0.0

    def replace(self, **changes) -> IntegerModel:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def in_stream(self) -> StreamFormat:
        """The hardware input stream (the first layer's): vectors, or framed time steps."""
        return self.layers[0].in_stream

    @property
    def out_stream(self) -> StreamFormat:
        """The hardware output stream (the last layer's, as it travels here: :attr:`streams`)."""
        return self.streams[-1][1]

    @property
    def holds_sequences(self) -> bool:
        """Whether the hardware gives no output of a sequence before its last step is in and
        takes no step while it answers (a layer with ``holds_sequence``: a bidirectional lstm).
        A host then sends a whole sequence and waits for its answers."""
        return any(getattr(layer, "holds_sequence", False) for layer in self.layers)

    @property
    def streams(self) -> tuple[tuple[StreamFormat, StreamFormat], ...]:
        """Per layer, its ``(input, output)`` streams in this model.

        A layer's own ``in_stream`` / ``out_stream``, except that a layer which reads and gives
        one vector per transfer (a dense layer) and reads a framed stream (the time steps of an
        lstm with ``returns="sequence"``) runs once per step: both its streams are framed too,
        the ``last`` bit of each step passing through (a tagger's per-step head).
        """
        out = []
        for k, layer in enumerate(self.layers):
            src = self.edges[k][0]
            reads = out[src][1] if src >= 0 else self.layers[0].in_stream
            own_in, own_out = layer.in_stream, layer.out_stream
            if reads.framed and not own_in.framed and not own_out.framed:
                own_in = dataclasses.replace(own_in, framed=True)
                own_out = dataclasses.replace(own_out, framed=True)
            out.append((own_in, own_out))
        return tuple(out)

    @property
    def sequential(self) -> bool:
        """Whether the model reads sequences ``(batch, steps, features)`` (its first layer takes
        one time step per transfer) rather than vectors ``(batch, features)``."""
        return self.in_stream.framed

    def single(self, index: int) -> IntegerModel:
        """Return the model of layer ``index`` alone (its input is its own input format)."""
        if isinstance(index, bool) or not isinstance(index, int) \
                or not 0 <= index < len(self.layers):
            raise ModelFormatError(f"layer must be in 0..{len(self.layers) - 1}, not {index!r}")
        layer = self.layers[index]
        sources = getattr(layer, "sources", ("",))
        if len(sources) > 1:
            raise ModelFormatError(f"layers[{index}] ({layer.kind}) joins {len(sources)} tensors: "
                                   f"it has no single-input model of its own")
        if sources != ("",):
            layer = layer.replace(source="")  # alone, it reads the model input
        return IntegerModel((layer,), self.input_scale, None, {}, {}, f"{self.name}_layer{index}")

    # --- the file ---------------------------------------------------------------------------------

    def manifest(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return the manifest (a JSON object) and the arrays (by entry name) of the model."""
        out = Writer()
        layers = [layer.to_manifest(f"layers/{i}", out) for i, layer in enumerate(self.layers)]
        extras = {key: out.add(f"extras/{key}.npy", arr) for key, arr in self.extras.items()}
        manifest = {
            "format": FORMAT_NAME,
            # the oldest version that holds every kind used: a dense or lstm model stays version 1
            "version": max(getattr(layer, "version", 1) for layer in self.layers),
            "name": self.name,
            "input_scale": self.input_scale,
            "output_scale": self.output_scale,
            "metadata": self.metadata,
            "layers": layers,
            "extras": extras,
            "arrays": {name: {"dtype": arr.dtype.str, "shape": list(arr.shape)}
                       for name, arr in out.arrays.items()},
        }
        return manifest, out.arrays

    def fingerprint(self) -> str:
        """Return a SHA-256 of the integer semantics (layers and scales; not metadata/extras)."""
        manifest, arrays = self.replace(metadata={}, extras={}, name="").manifest()
        h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
        for key in sorted(arrays):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arrays[key]).tobytes())
        return h.hexdigest()

    def save(self, path) -> None:
        """Write the model to a ``.bfm`` file (a zip of ``manifest.json`` and ``.npy`` arrays)."""
        write_archive(*self.manifest(), path)

    @classmethod
    def load(cls, path) -> IntegerModel:
        """Read a ``.bfm`` file; raise :class:`ModelFormatError` naming the field if it is bad."""
        return read_archive(path, _from_manifest)


def _from_manifest(manifest: dict, reader: Reader) -> IntegerModel:
    entries = get_field(manifest, "layers", list, "manifest")
    if not entries:
        raise ModelFormatError("manifest.layers must not be empty")
    layers = []
    for i, entry in enumerate(entries):
        where = f"layers[{i}]"
        try:
            kind = layer_kind(get_field(entry, "kind", str, where))
            layers.append(kind.from_manifest(entry, reader, where))
        except ModelFormatError as exc:
            msg = str(exc)
            raise ModelFormatError(msg if msg.startswith(where) else f"{where}.{msg}") from None
    extras = {}
    for key, name in get_field(manifest, "extras", dict, "manifest").items():
        extras[key] = reader.array(name, f"extras.{key}", kinds="biuf", widen=False)
    scale = get_field(manifest, "input_scale", (int, float), "manifest")
    out_scale = get_field(manifest, "output_scale", (int, float, type(None)), "manifest", None)
    return IntegerModel(tuple(layers), scale, out_scale,
                        get_field(manifest, "metadata", dict, "manifest", {}), extras,
                        get_field(manifest, "name", str, "manifest", "model"))
