"""``bitfab eval``: the golden model on inputs, or golden against the torch reference."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from bitfab.errors import BitfabError, VerificationError

from .ui import (
    check_output_file,
    console,
    emit_json,
    label,
    load_array,
    load_lengths,
    load_model,
)

__all__ = ["eval_", "evaluate", "compare"]


def evaluate(model, x: np.ndarray, labels: np.ndarray | None, lengths=None) -> dict:
    """Run the golden model on ``x`` (vectors, or sequences with ``lengths``); return the
    predictions and, with labels, the accuracy (per vector, per sequence or per valid step)."""
    from bitfab.sim.golden import predict
    pred = predict(model, x, lengths)
    result = {"n": int(len(pred)), "predictions": pred}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != pred.shape or labels.dtype.kind not in "iu":
            raise BitfabError(f"labels must be integers of shape {pred.shape}, one per "
                              f"{'input' if pred.ndim == 1 else 'step'}, not {labels.dtype} of "
                              f"shape {labels.shape}")
        valid = pred >= 0  # padding steps of a per-step model have no class
        result["correct"] = int(np.count_nonzero((pred == labels) & valid))
        result["accuracy"] = result["correct"] / max(int(valid.sum()), 1)
    return result


def compare(model, dataset: str | None = None) -> dict:
    """Run the golden model and the torch reference a trained model carries on the test split of
    ``dataset`` (None: the one it was trained on); count disagreeing predictions and outputs."""
    from bitfab.quant.evaluate import reference
    from bitfab.sim.golden import execute

    ref = reference(model, dataset)
    trace = execute(model, ref.x, ref.lengths)
    golden = trace.output
    valid = np.ones(golden.shape[:-1], dtype=bool) if golden.ndim == 2 else \
        np.arange(golden.shape[1])[None, :] < trace.out_lengths[:, None]
    gp, tp = np.argmax(golden, axis=-1), np.argmax(ref.outputs, axis=-1)
    return {
        "n": int(valid.sum()), "dataset": ref.dataset, "metric": ref.metric,
        "golden_accuracy": float(np.mean((gp == ref.labels)[valid])),
        "torch_accuracy": float(np.mean((tp == ref.labels)[valid])),
        "mismatches": int(np.count_nonzero((gp != tp)[valid])),
        "accumulator_mismatches": int(np.count_nonzero(
            np.any(golden != ref.outputs, axis=-1)[valid])),
    }


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs", type=click.Path(dir_okay=False),
              help="A .npy array of integer input values: (batch, in_features), or "
                   "(batch, steps, in_features) for a sequence model.")
@click.option("--lengths", type=click.Path(dir_okay=False),
              help="A .npy array of sequence lengths (sequence models; default all steps).")
@click.option("--dataset", default=None,
              help="Compare golden and torch on this dataset's test split (digits, mnist1d, "
                   "idx:DIR, ner; 'auto' = the one the model was trained on). Needs "
                   "bitfab[train].")
@click.option("--labels", type=click.Path(dir_okay=False), help="A .npy array of class labels.")
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="Write the predictions to this .npy file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(model, inputs, lengths, dataset, labels, out, as_json):
    """Run the golden model on inputs; print accuracy when labels are given.

    With ``--dataset``, rebuild the torch reference stored in a trained model and report golden
    accuracy, torch accuracy and the number of disagreeing predictions (which must be 0).
    """
    if dataset is not None and (inputs or labels or out or lengths):
        raise BitfabError("--dataset cannot be combined with --inputs, --lengths, --labels "
                          "or --out")
    if out:
        out = check_output_file(out)
    m = load_model(model)
    if dataset is not None:
        result = compare(m, None if dataset == "auto" else dataset)
        if as_json:
            emit_json(result)
        else:
            con = console()
            con.print(f"{label(result['dataset'])}: {result['n']} test "
                      f"{'vectors' if result['metric'] == 'accuracy' else 'predictions'}")
            con.print(f"golden model accuracy {100 * result['golden_accuracy']:.2f} %   "
                      f"torch accuracy {100 * result['torch_accuracy']:.2f} %   "
                      f"disagreeing predictions {result['mismatches']}   "
                      f"differing accumulators {result['accumulator_mismatches']}")
        if result["mismatches"] or result["accumulator_mismatches"]:
            raise VerificationError("golden model and torch reference disagree")
        return
    if inputs is None:
        raise BitfabError("give --inputs (a .npy array) or --dataset")
    x = load_array(inputs, "inputs")
    y = load_array(labels, "labels") if labels else None
    result = evaluate(m, x, y, load_lengths(lengths, m))
    if out:
        try:  # to the very name given (np.save would add .npy to a name without it)
            with open(out, "wb") as f:
                np.save(f, result["predictions"])
        except OSError as exc:
            raise BitfabError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    pred = result.pop("predictions")
    if as_json:
        emit_json(result)
        return
    con = console()
    if "accuracy" in result:
        con.print(f"golden model: {result['correct']}/{result['n']} correct, "
                  f"accuracy {100 * result['accuracy']:.2f} %")
    else:
        counts = np.bincount(pred[pred >= 0].ravel(), minlength=m.out_features)
        con.print(f"golden model: {result['n']} predictions; per class: {counts.tolist()}")
