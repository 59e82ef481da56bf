"""``bitfab verilog``: a model file to synthesizable Verilog plus a JSON sidecar."""

from __future__ import annotations

from pathlib import Path

import click

from bitfab.errors import BitfabError

from .ui import (
    check_output_folder,
    console,
    emit_json,
    hardware_options,
    label,
    load_model,
    parse_fold,
)

__all__ = ["verilog"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <name>.v and <name>.json: a new or empty one, or one bitfab "
                   "wrote before.")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Generate only this layer (0-based) instead of the whole network.")
@hardware_options
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as one JSON object.")
def verilog(model, out, layer, fold, pipeline, as_json):
    """Write Verilog of a model (or one layer) and a JSON sidecar describing its ports."""
    from bitfab.hw.verilog import configs, generate
    from bitfab.toolchain import output_folder

    check_output_folder(out)
    m = load_model(model)
    if layer is not None and layer >= len(m.layers):
        raise BitfabError(f"--layer must be in 0..{len(m.layers) - 1}, not {layer}")
    fold_pair = parse_fold(fold, m, pipeline, layer)
    configs(m, layer=layer, fold=fold_pair, pipeline=pipeline)  # refuse before --out exists
    from rich.console import Console
    what = f"layer {layer}" if layer is not None else f"{len(m.layers)} layer(s)"
    try:
        with Console(stderr=True).status(f"converting {label(m.name)} ({what}) to Verilog"):
            facts = generate(m, output_folder(out), layer=layer, fold=fold_pair,
                             pipeline=pipeline)
    except OSError as exc:
        raise BitfabError(f"cannot write into {out}: {exc.strerror or exc}") from None
    if as_json:
        emit_json(facts)
        return
    from rich.table import Table
    con = console()
    table = Table(title=f"{label(out / facts['verilog'])}: module {facts['top']}")
    for col in ("#", "kind", "datapath", "architecture", "in", "out", "latency", "II"):
        table.add_column(col, justify="left" if col in ("kind", "datapath", "architecture")
                         else "right")
    for f in facts["layers"]:
        c = f["config"]
        arch = c["architecture"] + (f" {c['pe']}x{c['simd']}" if c["pe"] else "")
        step = " + last" if f["input"]["last_bit"] is not None else ""
        table.add_row(str(f["index"]), f["kind"], c["datapath"], arch,
                      f"{c['in_features']} x {f['input']['bits']} b{step}",
                      f"{c['out_features']} x {f['output']['bits']} b",
                      str(f["latency"]), str(f["initiation_interval"]))
    con.print(table)
    con.print(f"latency {facts['latency']} cycles, initiation interval "
              f"{facts['initiation_interval']}; sidecar {label(out / (facts['top'] + '.json'))}")
