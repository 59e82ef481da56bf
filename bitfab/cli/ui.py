"""What every command shares: output (rich console, JSON), reading a model and arrays, the
hardware options, and progress displays. A leaf of the shell: it imports only the core floor at
module level (``bitfab info`` stays free of torch and amaranth)."""

from __future__ import annotations

import json
import math
import unicodedata

import click
import numpy as np
from rich.markup import escape

from bitfab.errors import BitfabError
from bitfab.toolchain import check_output_file, check_output_folder

__all__ = ["emit_json", "console", "load_model", "load_array", "load_lengths", "escape",
           "hardware_options", "parse_fold", "training_progress", "label", "plain",
           "FiniteFloat", "SEED", "check_output_file", "check_output_folder", "Stages"]


def plain(text) -> str:
    """Return ``text`` with every control or format character (ANSI escapes, newlines,
    bidirectional overrides) written as a Python escape such as ``\\x1b``: a name or path read
    from a file or typed by a user can neither restyle the terminal nor break a line."""
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
                   else ch for ch in str(text))


def label(text) -> str:
    """Return a name or path as rich markup shows it verbatim (markup and control characters
    escaped)."""
    return escape(plain(text))


class FiniteFloat(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses ``nan`` and ``inf``."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


#: the range of every ``--seed`` (what numpy and torch both take)
SEED = click.IntRange(0, 2**32 - 1)


def emit_json(obj) -> None:
    """Print one JSON object on stdout (the ``--json`` output of a command)."""
    click.echo(json.dumps(obj, sort_keys=True))


def console(stderr: bool = False):
    """Return a rich console (on stderr when stdout carries JSON), bound to the stream it starts
    on: a live display keeps drawing while a tool's output is redirected (the cocotb runner's)."""
    import sys

    from rich.console import Console
    return Console(highlight=False, file=sys.stderr if stderr else sys.stdout)


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


def parse_fold(text: str | None, model, pipeline: int, layer: int | None = None):
    """``--fold`` -> None (unrolled), ``(pe, simd)`` or per-layer folds (``balanced``,
    ``LAYER=PE,SIMD,...``: :func:`bitfab.hw.layer.resolve_fold`, every layer's fold checked
    against ``model`` before any work); with ``layer`` (``--layer N``) that layer's own fold
    of per-layer folds."""
    if text is None:
        return None
    from bitfab.hw.config import LayerFolds
    from bitfab.hw.layer import resolve_fold
    fold = resolve_fold(model, text, pipeline)
    if layer is not None and isinstance(fold, LayerFolds):
        if not 0 <= layer < len(fold):
            raise BitfabError(f"--layer must be in 0..{len(fold) - 1}, not {layer}")
        return fold[layer]
    return fold


def hardware_options(fn):
    """The options that decide the hardware, the same on ``verilog``, ``sim``, ``synth`` and
    ``board run`` (defaults from :mod:`bitfab.hw.config`): what a user simulates is what they
    synthesize."""
    import functools

    from bitfab.hw.config import DEFAULT_PIPELINE

    command = fn

    @functools.wraps(command)
    def with_structure(*args, chains, **kwargs):
        from bitfab.hw.adder_tree import structure
        with structure(chain_cells=chains):  # every sum the command builds
            return command(*args, **kwargs)

    fn = click.option("--chains", type=click.IntRange(0, 512), default=0, show_default=True,
                      metavar="CELLS",
                      help="Let the adders of each tree level share carry chains of up to CELLS "
                           "cells (0: off): fewer logic cells on iCE40 (a binary 256x16 layer "
                           "19 % fewer), lower Fmax (a longer carry path; nextpnr router2, "
                           "which the build picks). Give the same value to sim and synth.")(
        with_structure)
    fn = click.option("--pipeline", type=click.IntRange(0, 64), default=DEFAULT_PIPELINE,
                      show_default=True,
                      help="K: a register stage after every K adder levels (0: combinational "
                           "sums).")(fn)
    fn = click.option("--fold", default=None, metavar="PE,SIMD|balanced|LAYER=PE,SIMD,...",
                      help="Fold the dense layers: PE channels x SIMD inputs per clock (capped "
                           "at each layer's outputs, SIMD lowered to a divisor of its inputs; "
                           "default unrolled, or for synth the fastest fold that fits; synth "
                           "--fold auto builds candidate folds in parallel). balanced: each "
                           "conv and dense layer its own fold, the intervals balanced; "
                           "LAYER=PE,SIMD,...: the named layers (name or index) folded exactly "
                           "so, the others unrolled.")(fn)
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


class Stages:
    """The progress display of a long command: one line per stage (a spinner, then a tick), what
    it works on, and the time that stage took. Call it as ``stages(stage, detail)``: a new stage
    name ends the previous stage's line, the same name updates its detail (a count, an estimate).
    A context manager; ``transient`` clears the lines at the end (``--json`` runs)."""

    def __init__(self, con, transient: bool = False):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        self.progress = Progress(SpinnerColumn(finished_text="[green]✓"),
                                 TextColumn("[bold]{task.description:>9}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                                 console=con, transient=transient)
        self.console = con
        self._task = None
        self._stage = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._finish()
        return self.progress.__exit__(*exc)

    def _finish(self):
        if self._task is not None:
            self.progress.update(self._task, total=1, completed=1)
            self.progress.stop_task(self._task)
            self._task = None

    def __call__(self, stage: str, detail: str = "") -> None:
        detail = label(detail)
        if stage == self._stage and self._task is not None:
            self.progress.update(self._task, detail=detail)
            return
        self._finish()
        self._stage = stage
        self._task = self.progress.add_task(stage, detail=detail, total=None)
