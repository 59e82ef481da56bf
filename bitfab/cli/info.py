"""``bitfab info``: a model's layers, encodings, sparsity and weight memory against fp32."""

from __future__ import annotations

from pathlib import Path

import click

from .ui import console, emit_json, label, load_model

__all__ = ["info", "model_info"]


def model_info(model) -> dict:
    """Return the facts ``bitfab info`` reports, as a JSON object."""
    layers = []
    for i, layer in enumerate(model.layers):
        layers.append({
            "index": i, "name": layer.name, "kind": layer.kind,
            "in_features": layer.in_features, "out_features": layer.out_features,
            "in_shape": list(getattr(layer, "in_shape", (layer.in_features,))),
            "out_shape": list(getattr(layer, "out_shape", (layer.out_features,))),
            "sources": list(model.edges[i]),
            "input": layer.input.describe(),
            "encoding": None if layer.encoding is None else layer.encoding.to_json(),
            "datapath": layer.datapath,
            "output": layer.output.describe(), "acc_bits": layer.acc_bits,
            "out_bits": layer.out_bits, "sparsity": layer.sparsity,
            "weight_bits": layer.weight_bits, "fp32_bits": 32 * layer.weight_count,
        })
    weights = sum(la.weight_count for la in model.layers)
    return {
        "name": model.name, "layers": layers, "input": model.input.describe(),
        "in_shape": list(model.in_shape), "out_shape": list(model.out_shape),
        "input_scale": model.input_scale, "weights": weights,
        "weight_bits": model.weight_bits, "fp32_bits": model.fp32_bits,
        "memory_reduction": model.memory_reduction,
        "sparsity": float(sum(la.sparsity * la.weight_count for la in model.layers)
                          / max(weights, 1)),
        "fingerprint": model.fingerprint(), "metadata": model.metadata,
    }


def _bits(n: int) -> str:
    return f"{n} b" if n < 8192 else f"{n / 8192:.1f} KiB"


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(model, as_json):
    """Show a model's layers, encodings, sparsity and weight memory against fp32."""
    m = load_model(model)
    facts = model_info(m)
    if as_json:
        emit_json(facts)
        return
    from rich.table import Table
    table = Table(title=f"{label(model)} — {label(m.name)}")
    for col in ("#", "layer", "input", "weights", "output", "acc", "sparsity", "memory"):
        table.add_column(col, justify="right" if col in ("#", "acc", "sparsity", "memory")
                         else "left")
    for layer, f in zip(m.layers, facts["layers"]):
        table.add_row(str(f["index"]), label(layer.describe()), f["input"],
                      "—" if layer.encoding is None else label(layer.encoding.describe()),
                      f["output"], f"{f['acc_bits']} b", f"{100 * f['sparsity']:.2f} %",
                      _bits(f["weight_bits"]))
    con = console()
    con.print(table)
    con.print(f"weights: {facts['weights']}   memory: {_bits(facts['weight_bits'])} "
              f"(fp32: {_bits(facts['fp32_bits'])}, "
              f"reduction {100 * facts['memory_reduction']:.2f} %)"
              f"   zero weights: {100 * facts['sparsity']:.2f} %")


