"""Layer kinds: the registry, and the protocol every kind implements.

A layer kind is a frozen dataclass in the core floor (:mod:`bitfab.dense`, :mod:`bitfab.lstm`)
registered once with :func:`register_layer_kind`. The other floors key their own hooks by the
kind's name: :mod:`bitfab.sim.golden` (golden execution), :mod:`bitfab.hw.kinds` (the hardware
builder) and :mod:`bitfab.quant` (the torch module that trains and exports it). A new kind is one
module per floor plus these registrations; nothing else changes.

What the core floor of a kind provides (:class:`LayerKind`):

=====================  ==========================================================================
``kind``               the manifest's name of the kind (``"dense"``, ``"lstm"``)
``to_manifest``        ``(prefix, writer) -> dict``: the manifest entry, arrays into the writer
``from_manifest``      ``(entry, reader, where) -> layer`` (a classmethod), validated
``input``              :class:`~bitfab.formats.InputFormat` of the values it reads
``out_format``         :class:`~bitfab.formats.InputFormat` of the values it emits
``in_stream``          :class:`~bitfab.formats.StreamFormat` of its hardware input
``out_stream``         :class:`~bitfab.formats.StreamFormat` of its hardware output
``in_features``        elements per input vector (or time step)
``out_features``       elements per output vector (or time step)
``encoding``           its weight encoding (:mod:`bitfab.encodings`)
``datapath``           the datapath its weights need (``encoding.datapath(...)``)
``acc_bits``           accumulator width (exact bounds; declared widths only wider)
``weight_count``       number of weights; ``sparsity``, ``weight_bits``, ``macs``
``output``             its output stage (with ``kind`` and ``describe()``)
``describe()``         one line for ``bitfab info``
``replace(**kw)``      a validated copy
=====================  ==========================================================================
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from .errors import ModelFormatError
from .formats import InputFormat, StreamFormat

__all__ = ["LayerKind", "register_layer_kind", "layer_kind", "layer_kinds", "is_layer"]

_KINDS: dict[str, type] = {}
_HOOKS = ("to_manifest", "from_manifest", "in_stream", "out_stream", "describe", "replace",
          "out_format", "datapath", "weight_count", "weight_bits")


class LayerKind(Protocol):
    """The core-floor protocol of a layer kind (see the module docstring)."""

    kind: ClassVar[str]
    name: str
    input: InputFormat
    encoding: Any
    acc_bits: int

    @property
    def in_features(self) -> int: ...
    @property
    def out_features(self) -> int: ...
    @property
    def out_format(self) -> InputFormat: ...
    @property
    def in_stream(self) -> StreamFormat: ...
    @property
    def out_stream(self) -> StreamFormat: ...
    @property
    def datapath(self) -> str: ...
    @property
    def weight_count(self) -> int: ...
    @property
    def weight_bits(self) -> int: ...
    @property
    def sparsity(self) -> float: ...
    def describe(self) -> str: ...
    def to_manifest(self, prefix: str, out) -> dict: ...


def register_layer_kind(cls: type) -> type:
    """Register a layer class under its ``kind`` (usable as a class decorator)."""
    missing = [h for h in _HOOKS if not hasattr(cls, h)]
    if missing:
        raise TypeError(f"layer kind {cls.__name__} lacks {missing}")
    if _KINDS.get(cls.kind, cls) is not cls:
        raise TypeError(f"layer kind {cls.kind!r} is registered already")
    _KINDS[cls.kind] = cls
    return cls


def layer_kind(name: str) -> type:
    """Return the class of layer kind ``name``; raise :class:`ModelFormatError` if unknown."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ModelFormatError(f"kind must be one of {sorted(_KINDS)}, not {name!r}"[:300]) \
            from None


def layer_kinds() -> tuple[str, ...]:
    """Names of the registered layer kinds, sorted."""
    return tuple(sorted(_KINDS))


def is_layer(value: Any) -> bool:
    """Return whether ``value`` is an instance of a registered layer kind."""
    return _KINDS.get(getattr(type(value), "kind", None)) is type(value)
