"""``bitfab import`` / ``bitfab export``: QONNX (Brevitas ``export_qonnx``, FINN graphs) in and
out, through :mod:`bitfab.quant.qonnx_import` and :mod:`bitfab.quant.qonnx_export`."""

from __future__ import annotations

from pathlib import Path

import click

from bitfab.errors import BitfabError
from bitfab.toolchain import check_output_file

from .info import model_info
from .ui import console, emit_json, label, load_model

__all__ = ["import_", "export"]


@click.command("import")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .bfm file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def import_(model, out, as_json):
    """Import a QONNX model (Brevitas export_qonnx, FINN) as an integer model."""
    from bitfab.quant.qonnx_import import import_qonnx
    check_output_file(out)
    imported = import_qonnx(model)
    try:
        imported.save(out)
    except OSError as exc:
        raise BitfabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    facts = model_info(imported)
    if as_json:
        emit_json({"out": str(out), "layers": facts["layers"],
                   "input_scale": facts["input_scale"], "fingerprint": facts["fingerprint"],
                   "output": imported.metadata.get("qonnx_output")})
        return
    con = console()
    for i, layer in enumerate(imported.layers):
        parts = [layer.describe(), f"{layer.input.describe()} in"]
        if getattr(layer, "encoding", None) is not None:
            parts += [f"{layer.encoding.describe()} weights", layer.output.describe()]
        con.print(f"layer {i}: {label(', '.join(parts))}")
    con.print(f"wrote {label(out)}")


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--qonnx", "target", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="The QONNX (.onnx) file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export(model, target, as_json):
    """Export an integer model as a QONNX graph that qonnx's execute_onnx runs."""
    from bitfab.quant.qonnx_export import to_qonnx
    m = load_model(model)
    check_output_file(target, "--qonnx")
    data = to_qonnx(m).SerializeToString()
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise BitfabError(f"--qonnx {target}: cannot write ({exc.strerror or exc})") from None
    if as_json:
        emit_json({"out": str(target), "bytes": len(data), "fingerprint": m.fingerprint()})
        return
    console().print(f"wrote {label(target)}")
