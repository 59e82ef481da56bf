"""The hardware hook of every layer kind: how a layer becomes a stream component.

Each kind registers one :class:`HwKind` (``dense`` in :mod:`bitfab.hw.layer`, ``lstm`` in
:mod:`bitfab.hw.lstm`): ``configure(layer, fold, pipeline, exact)`` returns the kind's frozen
configuration (its ``architecture``, ``pe``, ``simd``, ``pipeline`` and ``to_json()`` for the
sidecar), ``build(config)`` the ``wiring.Component``. Every component has

- ``i``: ``In(stream.Signature(...))`` whose payload is ``layer.in_stream.payload_bits`` wide
  (element ``k`` at ``[k*bits, (k+1)*bits)``, a framed stream's ``last`` bit above them);
- ``o``: ``Out(stream.Signature(...))`` likewise for ``layer.out_stream``;
- ``latency`` (clock edges from the input transfer that completes an output to ``o.valid``,
  nothing stalling) and ``initiation_interval`` (clocks between input transfers at full rate);
- ``config`` (what ``configure`` returned).

:class:`bitfab.hw.layer.Network`, the Verilog writer, the simulators and the board top-level use
only this, so a new kind needs nothing else in hw/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import ConfigError, check_pipeline

__all__ = ["HwKind", "register", "hw_kind", "configure", "build"]


@dataclass(frozen=True)
class HwKind:
    """The hardware hooks of one layer kind.

    Members
    -------
    configure : callable ``(layer, fold, pipeline, exact) -> config``
        ``fold`` is ``(pe, simd)`` or None (unrolled); a kind that cannot fold is never given one
        (:func:`configure` refuses it by name). ``exact`` False lets the kind fit a network-wide
        fold to the layer (e.g. cap ``pe`` at its outputs); True takes it as given.
    build : callable ``(config) -> wiring.Component``
    foldable : bool
        Whether ``configure`` takes a fold.
    weightless : bool
        A kind without weights (pools, flatten, add): it takes any fold and ignores it, so a
        network-wide fold passes through it; it is not listed among the kinds that fold.
    spram : bool
        Whether a folded configuration of the kind can keep its weights in iCE40 UP SPRAM
        (``config.replace(weights="spram")``, a ``load`` port on its component; hw/spram.py).
    """

    configure: Callable
    build: Callable
    foldable: bool = False
    weightless: bool = False
    spram: bool = False


_KINDS: dict[str, HwKind] = {}


def register(kind: str, hooks: HwKind) -> None:
    """Register the hardware hooks of layer kind ``kind``."""
    _KINDS[kind] = hooks


def hw_kind(layer) -> HwKind:
    """Return the hooks of ``layer``'s kind; raise :class:`ConfigError` naming what hw builds."""
    _load()
    try:
        return _KINDS[layer.kind]
    except (KeyError, AttributeError):
        raise ConfigError(f"no hardware for {getattr(layer, 'kind', type(layer).__name__)!r} "
                          f"layers (hw builds {sorted(_KINDS)})") from None


def configure(layer, fold: tuple[int, int] | None = None, pipeline: int = 1,
              where: str = "layer", exact: bool = True):
    """Return the hardware configuration of ``layer`` (``fold`` None: unrolled; ``exact`` False
    fits a network-wide fold to the layer)."""
    hooks = hw_kind(layer)
    pipeline = check_pipeline(pipeline)
    if fold is not None and not hooks.foldable:
        folding = sorted(k for k, h in _KINDS.items() if h.foldable and not h.weightless)
        raise ConfigError(f"{where} is an {layer.kind} layer, which cannot be folded yet "
                          f"(folding applies to {', '.join(folding)} layers): build it "
                          f"unrolled (no --fold)")
    try:
        return hooks.configure(layer, fold, pipeline, exact)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if where == "layer" else f"{where}: {msg}") from None


def build(config):
    """Return the component of a configuration made by :func:`configure`."""
    return hw_kind(config.layer).build(config)


def _load() -> None:
    # the kinds register on import of their modules
    from . import conv, layer, lstm, lstm_mps  # noqa: F401
