"""What every command shares: output (rich console, JSON), reading a model and arrays, the
hardware options, and progress displays. A leaf of the shell: it imports only the core floor at
module level (``bitfab info`` stays free of torch and amaranth)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.markup import escape

from bitfab.errors import BitfabError

__all__ = ["emit_json", "console", "load_model", "load_array", "load_lengths", "escape",
           "hardware_options", "parse_fold", "training_progress"]


def emit_json(obj) -> None:
    """Print one JSON object on stdout (the ``--json`` output of a command)."""
    click.echo(json.dumps(obj, sort_keys=True))


def console(stderr: bool = False):
    """Return a rich console (on stderr when stdout carries JSON)."""
    from rich.console import Console
    return Console(highlight=False, stderr=stderr)


def load_model(path):
    """Read a ``.bfm`` file (:meth:`bitfab.model.IntegerModel.load`)."""
    from bitfab.model import IntegerModel
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


def load_lengths(path: str | None, model) -> np.ndarray | None:
    """Load ``--lengths`` (sequence models only)."""
    if path is None:
        return None
    if not model.sequential:
        raise BitfabError("--lengths applies to sequence models only; this model reads vectors")
    return load_array(path, "lengths")


def parse_fold(text: str | None):
    """``"PE,SIMD"`` -> ``(pe, simd)``, None -> None (unrolled)."""
    if text is None:
        return None
    from bitfab.hw.config import parse_fold as parse
    return parse(text)


def hardware_options(fn):
    """The options that decide the hardware, the same on ``verilog``, ``sim``, ``synth`` and
    ``board run`` (defaults from :mod:`bitfab.hw.config`): what a user simulates is what they
    synthesize."""
    from bitfab.hw.config import DEFAULT_PIPELINE
    fn = click.option("--pipeline", type=click.IntRange(0, 64), default=DEFAULT_PIPELINE,
                      show_default=True,
                      help="K: a register stage after every K adder levels (0: combinational "
                           "sums).")(fn)
    fn = click.option("--fold", default=None, metavar="PE,SIMD",
                      help="Fold the dense layers: PE channels x SIMD inputs per clock (capped "
                           "at each layer's outputs, SIMD lowered to a divisor of its inputs; "
                           "default unrolled, or for synth the fastest fold that fits).")(fn)
    return fn


def training_progress(con):
    """Return the rich progress display of trainings (one bar per run, epochs, loss)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    return Progress(TextColumn("[bold]{task.description:>13}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=con)


def path_label(path) -> str:
    """A path or name as rich markup shows it verbatim."""
    return escape(str(Path(path)) if not isinstance(path, str) else path)
