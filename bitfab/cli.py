"""The ``bitfab`` command line.

Subcommands live beside the code they drive and are imported only when invoked (``bitfab info``
never imports torch or amaranth). A later part of bitfab plugs in a command by adding one line to
:data:`COMMANDS`. Every :class:`~bitfab.errors.BitfabError` becomes one line on stderr and exit
status 1; every command that reports something takes ``--json`` and then prints one JSON object.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from .errors import BitfabError

#: name -> "module:attribute" of a click command, imported on first use.
COMMANDS = {
    "info": "bitfab.cli:info",
    "eval": "bitfab.cli:eval_",
    "demo": "bitfab.demo:demo",
    "verilog": "bitfab.hw.cli:verilog",
    "train": "bitfab.quant.train:train",
    "sim": "bitfab.sim.cli:sim",
    "synth": "bitfab.boards.cli:synth",
    "board": "bitfab.boards.cli:board",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bitfab")
def main():
    """bitfab: quantized neural networks to bit-exact FPGA hardware."""


def emit_json(obj) -> None:
    """Print one JSON object on stdout (the ``--json`` output of a command)."""
    click.echo(json.dumps(obj, sort_keys=True))


def console():
    """Return a rich console on stderr when stdout carries JSON, else on stdout."""
    from rich.console import Console
    return Console(highlight=False)


def load_model(path):
    from .model import IntegerModel
    return IntegerModel.load(path)


def load_array(path: str, what: str) -> np.ndarray:
    """Load a ``.npy`` file without pickle; any problem is a one-line :class:`BitfabError`."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BitfabError(f"{what} {path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise BitfabError(f"{what} {path}: not a readable .npy array ({str(exc)[:120]})") from None
    if not isinstance(arr, np.ndarray):  # np.load opens any zip as a lazy .npz archive
        arr.close()
        raise BitfabError(f"{what} {path}: not a readable .npy array (a zip archive)")
    return arr


# --- bitfab info ----------------------------------------------------------------------------------


def model_info(model) -> dict:
    """Return the facts ``bitfab info`` reports, as a JSON object."""
    from .sim.golden import datapath_kind

    layers = []
    for i, layer in enumerate(model.layers):
        layers.append({
            "index": i, "name": layer.name, "kind": layer.kind,
            "in_features": layer.in_features, "out_features": layer.out_features,
            "input": layer.input.describe(), "encoding": layer.encoding.to_json(),
            "datapath": datapath_kind(layer),
            "output": layer.output.describe(), "acc_bits": layer.acc_bits,
            "out_bits": layer.out_bits, "sparsity": layer.sparsity,
            "weight_bits": layer.weight_bits, "fp32_bits": 32 * layer.weights.size,
        })
    return {
        "name": model.name, "layers": layers, "input": model.input.describe(),
        "input_scale": model.input_scale, "weights": sum(la.weights.size for la in model.layers),
        "weight_bits": model.weight_bits, "fp32_bits": model.fp32_bits,
        "memory_reduction": model.memory_reduction,
        "sparsity": float(sum(np.count_nonzero(la.weights == 0) for la in model.layers)
                          / sum(la.weights.size for la in model.layers)),
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
    table = Table(title=f"{model} — {m.name}")
    for col in ("#", "layer", "input", "weights", "output", "acc", "sparsity", "memory"):
        table.add_column(col, justify="right" if col in ("#", "acc", "sparsity", "memory")
                         else "left")
    for layer, f in zip(m.layers, facts["layers"]):
        table.add_row(str(f["index"]), layer.describe(), f["input"], layer.encoding.describe(),
                      f["output"], f"{f['acc_bits']} b", f"{100 * f['sparsity']:.2f} %",
                      _bits(f["weight_bits"]))
    con = console()
    con.print(table)
    con.print(f"weights: {facts['weights']}   memory: {_bits(facts['weight_bits'])} "
              f"(fp32: {_bits(facts['fp32_bits'])}, "
              f"reduction {100 * facts['memory_reduction']:.2f} %)"
              f"   zero weights: {100 * facts['sparsity']:.2f} %")


# --- bitfab eval ----------------------------------------------------------------------------------


def evaluate(model, x: np.ndarray, labels: np.ndarray | None) -> dict:
    """Run the golden model on ``x``; return predictions and (with labels) accuracy."""
    if all(layer.kind == "dense" for layer in model.layers):
        from .sim.golden import predict
        pred = predict(model, x)
    else:  # a sequence model: x is (batch, steps, features), one class per sequence or step
        from .sim.lstm import predict_sequences
        pred = predict_sequences(model, x)
    result = {"n": int(len(pred)), "predictions": pred}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != pred.shape or labels.dtype.kind not in "iu":
            raise BitfabError(f"labels must be integers of shape {pred.shape}, one per "
                              f"{'input' if pred.ndim == 1 else 'step'}, not {labels.dtype} of "
                              f"shape {labels.shape}")
        result["correct"] = int(np.count_nonzero(pred == labels))
        result["accuracy"] = result["correct"] / max(pred.size, 1)
    return result


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs", type=click.Path(dir_okay=False),
              help="A .npy array (batch, in_features) of integer input values.")
@click.option("--dataset", default=None,
              help="Compare golden and torch on this dataset's test split (digits, mnist1d, "
                   "idx:DIR; 'auto' = the one the model was trained on). Needs bitfab[train].")
@click.option("--labels", type=click.Path(dir_okay=False), help="A .npy array of class labels.")
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="Write the predictions to this .npy file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(model, inputs, dataset, labels, out, as_json):
    """Run the golden model on inputs; print accuracy when labels are given.

    With ``--dataset``, rebuild the torch reference stored in a trained model and report golden
    accuracy, torch accuracy and the number of disagreeing predictions (which must be 0).
    """
    m = load_model(model)
    if dataset is not None:
        if inputs or labels or out:
            raise BitfabError("--dataset cannot be combined with --inputs, --labels or --out")
        from .quant.evaluate import compare
        result = compare(m, None if dataset == "auto" else dataset)
        if as_json:
            emit_json(result)
        else:
            con = console()
            con.print(f"{result['dataset']}: {result['n']} test vectors")
            con.print(f"golden model accuracy {100 * result['golden_accuracy']:.2f} %   "
                      f"torch accuracy {100 * result['torch_accuracy']:.2f} %   "
                      f"disagreeing predictions {result['mismatches']}   "
                      f"differing accumulators {result['accumulator_mismatches']}")
        if result["mismatches"] or result["accumulator_mismatches"]:
            from .errors import VerificationError
            raise VerificationError("golden model and torch reference disagree")
        return
    if inputs is None:
        raise BitfabError("give --inputs (a .npy array) or --dataset")
    x = load_array(inputs, "inputs")
    y = load_array(labels, "labels") if labels else None
    result = evaluate(m, x, y)
    if out:
        np.save(out, result["predictions"])
    pred = result.pop("predictions")
    if as_json:
        emit_json(result)
        return
    con = console()
    if "accuracy" in result:
        con.print(f"golden model: {result['correct']}/{result['n']} correct, "
                  f"accuracy {100 * result['accuracy']:.2f} %")
    else:
        counts = np.bincount(pred.ravel(), minlength=m.out_features)
        con.print(f"golden model: {result['n']} predictions; per class: {counts.tolist()}")


# --- entry point ----------------------------------------------------------------------------------


def run(argv=None) -> None:
    """Run the CLI: bitfab errors become one line on stderr and a non-zero exit status."""
    try:
        main.main(args=argv, prog_name="bitfab", standalone_mode=False)
    except BitfabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug in bitfab: one line, the traceback on request
        if os.environ.get("BITFAB_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} "
                   f"(set BITFAB_DEBUG=1 for the traceback)", err=True)
        sys.exit(2)
