"""``bitfab synth --fold auto``: build several candidate folds in parallel, keep the fastest.

The sequential fold choice of :func:`bitfab.boards.build.synthesize` trusts the LUT estimate and
refolds when synthesis disagrees, one build after the other. Here the candidates (the fold the
estimate picks, ``faster`` folds faster than it that the estimate refused, and the next slower
ones) are Dask tasks on the sweep's cluster (:func:`bitfab.sweep.engine.connect`); the fastest
that fits and meets timing wins (lowest initiation interval, then fewest LUT4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bitfab.errors import BitfabError

from .tasks import one_line

__all__ = ["FoldSearch", "fold_candidates", "search_folds", "fold_task"]


def _text(fold) -> str:
    return "unrolled" if fold is None else f"{fold[0]},{fold[1]}"


def fold_candidates(model, board, count: int = 3, faster: int = 1) -> list:
    """Return up to ``count`` folds to build, fastest first: ``faster`` folds of
    :func:`~bitfab.boards.build.candidate_folds` before the one
    :func:`~bitfab.boards.build.choose_fold` picks (the estimate is rough and may refuse a fold
    that fits; fewer where ``count`` leaves no room: the pick is always among them), that one,
    then the next ones it would pick. Raises
    :class:`~bitfab.boards.build.FitError` when no fold is estimated to fit."""
    from bitfab.boards.build import FitError, candidate_folds, choose_fold
    folds = candidate_folds(model)
    first = choose_fold(model, board)
    start = max(folds.index(first) - min(faster, count - 1), 0)  # the pick is always built
    picks = folds[start:folds.index(first) + 1]
    while len(picks) < count:
        try:
            nxt = choose_fold(model, board, after=picks[-1])
        except FitError:
            break
        picks.append(nxt)
    return picks[:count]


def fold_task(model_path: str, board: str, fold, folder: str, seed: int, clock_hz, baud: int,
              pipeline: int, chain_cells: int = 0) -> dict:
    """Build ``fold`` (None: unrolled) into ``folder``; return ``{"fold", "status", "reason",
    "report"}`` (a bitfab error is a failed record, never raised). ``chain_cells``: the
    worker's :func:`bitfab.hw.adder_tree.structure` (a worker process does not share the
    caller's)."""
    from bitfab.boards.build import synthesize
    from bitfab.hw.adder_tree import structure
    from bitfab.model import IntegerModel
    fold = None if fold is None else tuple(fold)
    try:
        with structure(chain_cells=chain_cells):
            outcome = synthesize(IntegerModel.load(model_path), board,
                                 fold="unrolled" if fold is None else fold, seed=seed,
                                 out=Path(folder), clock_hz=clock_hz, baud=baud,
                                 pipeline=pipeline)
    except BitfabError as exc:
        return {"fold": _text(fold), "status": "failed", "reason": one_line(exc), "report": None}
    report = outcome.report
    ok = report["timing_met"]
    return {"fold": _text(fold), "status": "ok" if ok else "failed",
            "reason": None if ok else f"timing {report['timing']}", "report": report}


@dataclass
class FoldSearch:
    """The outcome of :func:`search_folds`: every candidate's record (``tried``, fastest
    first), the winner's (``best``, None when none fits and meets timing) and the wall time."""

    tried: list
    best: dict | None
    seconds: float


def search_folds(model_path, board, out: Path, *, count: int = 3, faster: int = 1,
                 workers: int | None = None, scheduler: str | None = None, seed: int = 0,
                 clock_hz: float | str | None = None, baud: int | None = None, pipeline: int = 1,
                 progress=None, chain_cells: int | None = None) -> FoldSearch:
    """Build the :func:`fold_candidates` of the model at ``model_path`` for ``board`` in
    parallel into ``out/fold-PE-SIMD`` (``out/unrolled``); return the :class:`FoldSearch`.
    ``progress(record)`` is called as each build ends. ``chain_cells``: every candidate's
    :data:`bitfab.hw.adder_tree.CHAIN_CELLS` (None: the caller's)."""
    from distributed import as_completed

    from bitfab.boards.targets import get_board
    from bitfab.hw import adder_tree
    from bitfab.model import IntegerModel

    from .engine import CLUSTER_CONFIG, connect, dask_config

    start = time.perf_counter()
    target = get_board(board) if isinstance(board, str) else board
    model = IntegerModel.load(model_path)
    folds = fold_candidates(model, target, count, faster)
    chain_cells = adder_tree.CHAIN_CELLS if chain_cells is None else chain_cells
    with dask_config(CLUSTER_CONFIG):
        client, cluster = connect(scheduler, workers or min(len(folds), 8))
        try:
            futures = [client.submit(
                fold_task, str(Path(model_path).resolve()), target.name,
                None if f is None else list(f),
                str(Path(out) / ("unrolled" if f is None else f"fold-{f[0]}-{f[1]}")), seed,
                clock_hz, baud, pipeline, chain_cells,
                key=f"fold-{_text(f)}-{time.time_ns()}", pure=False)
                for f in folds]
            records = {}
            for fut in as_completed(futures):
                rec = fut.result()
                records[rec["fold"]] = rec
                if progress:
                    progress(rec)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    tried = [records[_text(f)] for f in folds]
    good = [r for r in tried if r["status"] == "ok"]
    best = min(good, key=lambda r: (r["report"]["initiation_interval"],
                                    r["report"]["resources"]["lut4"]["used"])) if good else None
    return FoldSearch(tried, best, time.perf_counter() - start)
