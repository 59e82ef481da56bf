"""``bitfab verilog``: a model file to synthesizable Verilog plus a JSON sidecar."""

from __future__ import annotations

from pathlib import Path

import click

from bitfab.cli import console, emit_json, load_model
from bitfab.errors import BitfabError

from .config import ConfigError, parse_fold

__all__ = ["verilog"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for <name>.v and <name>.json.")
@click.option("--layer", type=int, default=None,
              help="Generate only this layer (0-based) instead of the whole network.")
@click.option("--fold", default=None, metavar="PE,SIMD",
              help="Fold every generated layer: PE channels x SIMD inputs per clock (in a "
                   "network PE is capped at each layer's outputs and SIMD lowered to a divisor "
                   "of its inputs).")
@click.option("--pipeline", type=int, default=0, show_default=True,
              help="K: a register stage after every K adder levels (0: combinational sums).")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as one JSON object.")
def verilog(model, out, layer, fold, pipeline, as_json):
    """Write Verilog of a model (or one layer) and a JSON sidecar describing its ports."""
    from .verilog import generate

    m = load_model(model)
    fold_pair = parse_fold(fold) if fold is not None else None
    if pipeline < 0:
        raise ConfigError(f"pipeline must be a non-negative integer, not {pipeline}")
    from rich.console import Console
    what = f"layer {layer}" if layer is not None else f"{len(m.layers)} layer(s)"
    try:
        with Console(stderr=True).status(f"converting {m.name} ({what}) to Verilog"):
            facts = generate(m, out, layer=layer, fold=fold_pair, pipeline=pipeline)
    except OSError as exc:
        raise BitfabError(f"cannot write into {out}: {exc.strerror or exc}") from None
    if as_json:
        emit_json(facts)
        return
    from rich.table import Table
    con = console()
    table = Table(title=f"{out / facts['verilog']}: module {facts['top']}")
    for col in ("#", "datapath", "architecture", "in", "out", "latency", "II"):
        table.add_column(col, justify="left" if col in ("datapath", "architecture") else "right")
    for f in facts["layers"]:
        c = f["config"]
        arch = c["architecture"] + (f" {c['pe']}x{c['simd']}" if c["pe"] else "")
        table.add_row(str(f["index"]), c["datapath"], arch,
                      f"{c['in_features']} x {f['input']['bits']} b",
                      f"{c['out_features']} x {f['output']['bits']} b",
                      str(f["latency"]), str(f["initiation_interval"]))
    con.print(table)
    con.print(f"latency {facts['latency']} cycles, initiation interval "
              f"{facts['initiation_interval']}; sidecar {out / (facts['top'] + '.json')}")
