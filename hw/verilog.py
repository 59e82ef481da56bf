"""Verilog and its JSON sidecar: everything a test bench needs to drive a generated design.

:func:`write_component` converts a layer or network component with
:func:`amaranth.back.verilog.convert` and writes ``<name>.v`` beside ``<name>.json``, the sidecar
that names the top module, its ports and widths, the stream packing of the input and output
vectors, latency, initiation interval, architecture, the layer configuration(s) and the model
fingerprint. docs/hardware-interface.md documents the format; the cocotb bench reads
it to drive any generated design.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth.back import verilog

from bitfab.model import IntegerModel
from bitfab.toolchain import safe_name

from . import kinds
from .config import DEFAULT_PIPELINE, ConfigError
from .layer import Network, build_layer
from .layer import network_configs as build_configs

__all__ = ["SIDECAR_FORMAT", "generator_digest", "module_name", "verilog_ports", "sidecar",
           "write_component", "configs", "generate"]

#: ``format`` field of every sidecar; ``version`` changes when a field changes meaning
SIDECAR_FORMAT = "bitfab-hw"
SIDECAR_VERSION = 1

_PORT_RE = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?"
                      r"(?:\[(\d+):(\d+)\]\s+)?(\\?[A-Za-z_][\w$.]*)\s*;", re.M)


def module_name(text: str) -> str:
    """Return a Verilog identifier made of ``text`` (other characters become ``_``; a long name
    keeps its start and a hash, so that ``<name>_layer0.v`` is a legal file name)."""
    name = safe_name(text, "bitfab", limit=64, keep="A-Za-z0-9_")
    return name if name[0].isalpha() else f"m_{name}"


def verilog_ports(source: str, top: str) -> list[dict]:
    """Return the ports of module ``top`` in Verilog ``source``: name, direction, width."""
    start = re.search(rf"^module\s+\\?{re.escape(top)}\s*\(", source, re.M)
    if start is None:
        raise ConfigError(f"module {top} not found in the generated Verilog")
    end = source.index("endmodule", start.end())
    ports = []
    for direction, msb, lsb, name in _PORT_RE.findall(source[start.end():end]):
        width = int(msb) - int(lsb) + 1 if msb else 1
        ports.append({"name": name.lstrip("\\"), "direction": direction, "width": width})
    return ports


def _layer_json(index: int, component, streams=None) -> dict:
    cfg = component.config
    layer = cfg.layer
    into, out = streams or (layer.in_stream, layer.out_stream)
    facts = cfg.to_json()
    return {
        "index": index,
        "kind": facts["kind"],  # the model's kind (an lstm_mps layer's config holds an lstm)
        "config": facts,
        "latency": component.latency,
        "initiation_interval": component.initiation_interval,
        "input": into.to_json(),
        "output": out.to_json(),
    }


def sidecar(component, model: IntegerModel, top: str, ports: list[dict],
            layer_index: int | None = None) -> dict:
    """Return the sidecar object of ``component`` (a layer component or a :class:`Network`)."""
    if isinstance(component, Network):
        streams = IntegerModel(tuple(c.layer for c in component.configs)).streams
        layers = [_layer_json(k, c, streams[k]) for k, c in enumerate(component.layers)]
        configs = component.configs
    else:
        layers = [_layer_json(layer_index or 0, component)]
        configs = (component.config,)
    first, last = configs[0].layer, configs[-1].layer
    archs = {c.architecture for c in configs}
    pipelines = {c.pipeline for c in configs}
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "top": top,
        "verilog": f"{top}.v",
        "component": "network" if isinstance(component, Network) else "layer",
        "layer_index": layer_index,
        "model": model.name,
        "fingerprint": model.fingerprint(),
        # a purely combinational design (unrolled, pipeline 0) has no clock
        "clock": {"clk": "clk", "rst": "rst", "edge": "rising", "reset": "synchronous, high"}
        if any(p["name"] == "clk" for p in ports) else None,
        "ports": ports,
        "stream": {
            "protocol": "amaranth.lib.stream: a transfer happens on a rising clk edge where "
                        "valid and ready are both 1; payload holds while valid is 1",
            "packing": "element k at payload bits [k*bits, (k+1)*bits), as its code: "
                       "bipolar 1 = +1 and 0 = -1, signed values in two's complement; a framed "
                       "stream (last_bit not null) carries one time step per transfer with "
                       "last = 1 on each sequence's final step",
        },
        "input": first.in_stream.to_json(),
        "output": (streams[-1][1] if isinstance(component, Network)
                   else last.out_stream).to_json(),
        "latency": component.latency,
        "initiation_interval": component.initiation_interval,
        "architecture": archs.pop() if len(archs) == 1 else "mixed",
        "pipeline": pipelines.pop() if len(pipelines) == 1 else None,
        "layers": layers,
    }


def write_component(component, model: IntegerModel, out_dir, top: str,
                    layer_index: int | None = None) -> dict:
    """Write ``<top>.v`` and ``<top>.json`` into ``out_dir``; return the sidecar object."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = verilog.convert(component, name=top, emit_src=False)
    ports = verilog_ports(source, top)
    facts = sidecar(component, model, top, ports, layer_index)
    (out / f"{top}.v").write_text(source)
    (out / f"{top}.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return facts


def generator_digest() -> str:
    """A hash of the code that generates Verilog (every module of :mod:`bitfab.hw` and the
    Amaranth version): a cache of generated designs keyed by it never serves Verilog of an
    older generator."""
    import hashlib
    from importlib.metadata import version
    h = hashlib.sha256(version("amaranth").encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def configs(model: IntegerModel, *, layer: int | None = None,
            fold: tuple[int, int] | None = None, pipeline: int = DEFAULT_PIPELINE) -> tuple:
    """Return the hardware configurations :func:`generate` would build, without building them.

    Raises :class:`ConfigError` for a bad layer index, a fold that a layer cannot take or a
    layer kind without hardware, so a caller can refuse bad input before it writes anything.
    """
    if layer is None:
        return build_configs(model, fold, pipeline)
    if isinstance(layer, bool) or not isinstance(layer, int) \
            or not 0 <= layer < len(model.layers):
        raise ConfigError(f"layer must be in 0..{len(model.layers) - 1}, not {layer!r}")
    return (kinds.configure(model.layers[layer], fold, pipeline, f"layers[{layer}]"),)


def generate(model: IntegerModel, out_dir, *, layer: int | None = None,
             fold: tuple[int, int] | None = None, pipeline: int = DEFAULT_PIPELINE) -> dict:
    """Generate the Verilog of ``model`` (the whole network, or layer ``layer``) into ``out_dir``.

    Returns the sidecar object. Raises :class:`ConfigError` as :func:`configs` does.
    """
    base = module_name(model.name)
    cfgs = configs(model, layer=layer, fold=fold, pipeline=pipeline)
    if layer is None:
        return write_component(Network(cfgs), model, out_dir, base)
    return write_component(build_layer(cfgs[0]), model, out_dir, f"{base}_layer{layer}", layer)
