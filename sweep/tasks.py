"""What a worker runs: one training, or one design point.

These functions are the Dask tasks of a sweep (:mod:`bitfab.sweep.engine`). They take and return
plain JSON-able objects, write their files under the sweep's folder (which every worker must see
at the same path) and never raise for a point that fails in a way a user can cause (a model that
does not fit, a tool that fails, timing not met): they return a record with ``status`` "failed"
and a one-line ``reason``. A bug raises, and Dask retries it once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from bitfab.errors import BitfabError, ToolError

__all__ = ["train_task", "point_task", "one_line"]


def one_line(text, limit: int = 400) -> str:
    """Return ``text`` as one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def train_task(values: dict, options: dict, folder: str) -> dict:
    """Train the network of ``values`` (recipe, dataset, hidden, epochs, seed, act_bits) with
    the spec's ``options``, write ``model.bfm`` and ``train.json`` into ``folder``; return the
    training record (``ok``, ``model``, ``fingerprint``, the figures; or ``ok`` False and
    ``reason``). A finished training in ``folder`` is returned as it is."""
    folder = Path(folder)
    done = folder / "train.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        from bitfab.quant.data import load_dataset
        from bitfab.quant.recipes import TrainConfig
        from bitfab.quant.train import _sparsity, export, fit

        # one thread per task: the workers are one per core already
        torch.set_num_threads(1)
        small = values["dataset"] in ("digits", "mnist1d")
        batch = options["batch_size"] or (64 if small else 128)
        config = TrainConfig(values["recipe"], values["dataset"], tuple(values["hidden"] or ()),
                             values["act_bits"], values["epochs"], batch, options["lr"], 0.0,
                             values["seed"], dict(options["options"]), options["limit"],
                             options["act_stage"])
        result = fit(config, load_dataset(values["dataset"], values["seed"]))
        model = export(result)
        model.save(folder / "model.bfm")
    except BitfabError as exc:
        return {"ok": False, "reason": one_line(exc)}
    record = {
        "ok": True, "model": str(folder / "model.bfm"), "fingerprint": model.fingerprint(),
        "name": model.name, "hidden": list(config.hidden), "act_bits": config.act_bits,
        "accuracy": result.accuracy, "train_seconds": result.seconds,
        "weight_bits": model.weight_bits, "fp32_bits": model.fp32_bits,
        "memory_reduction": model.memory_reduction,
        "sparsity": _sparsity([la.weights for la in model.layers]),
    }
    _write_json(done, record)
    return record


def _fault(fault: str, folder: Path) -> None:
    """Kill this worker process (SIGKILL: no clean-up, like the OOM killer) as ``fault`` asks;
    ``folder/attempts`` counts the attempts across workers."""
    if fault == "none":
        return
    counter = folder / "attempts"
    attempt = int(counter.read_text()) + 1 if counter.is_file() else 1
    counter.write_text(str(attempt))
    if fault == "kill-worker" or attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def _fold(text: str):
    """The fold of a point for the build: ``auto`` (the build chooses), ``unrolled``, or a
    ``(pe, simd)`` pair."""
    if text in ("auto", "unrolled"):
        return text
    pe, simd = text.split(",")
    return int(pe), int(simd)


def _fixed_fold(fold, model, board):
    """A concrete fold for the steps that need one (verilog, sim): ``auto`` is the fold choice's
    estimate (:func:`bitfab.boards.build.choose_fold`), ``unrolled`` None."""
    if fold == "auto":
        from bitfab.boards.build import choose_fold
        return choose_fold(model, board)
    return None if fold == "unrolled" else fold


def _evaluate(model) -> dict:
    """Golden model against the torch reference on the test split the model was trained on."""
    import numpy as np

    from bitfab.quant.evaluate import reference
    from bitfab.sim.golden import execute

    ref = reference(model)
    golden = execute(model, ref.x, ref.lengths).output
    gp, tp = np.argmax(golden, axis=-1), np.argmax(ref.outputs, axis=-1)
    return {"n": int(len(gp)), "golden_accuracy": float(np.mean(gp == ref.labels)),
            "torch_accuracy": float(np.mean(tp == ref.labels)),
            "mismatches": int(np.count_nonzero(gp != tp)),
            "output_mismatches": int(np.count_nonzero(np.any(golden != ref.outputs, axis=-1)))}


def _run_steps(values: dict, steps: tuple, synth: dict, model_path: str, folder: Path,
               record: dict) -> None:
    from bitfab.boards.targets import get_board
    from bitfab.model import IntegerModel

    model = IntegerModel.load(model_path)
    record["fingerprint"] = model.fingerprint()
    board = get_board(values["board"])
    fold = _fold(values["fold"])
    pipeline = values["pipeline"]
    if "eval" in steps:
        t0 = time.perf_counter()
        record["eval"] = _evaluate(model)
        record["eval"]["seconds"] = time.perf_counter() - t0
        if record["eval"]["mismatches"]:
            raise _Failed("verification", f"golden and torch disagree on "
                          f"{record['eval']['mismatches']} of {record['eval']['n']} inputs")
    if "verilog" in steps:
        from bitfab.hw.verilog import generate
        t0 = time.perf_counter()
        facts = generate(model, folder / "verilog", fold=_fixed_fold(fold, model, board),
                         pipeline=pipeline)
        record["verilog"] = {"latency": facts.get("latency"),
                             "initiation_interval": facts.get("initiation_interval"),
                             "seconds": time.perf_counter() - t0}
    if "sim" in steps:
        from bitfab.sim.run import simulate_model
        run = simulate_model(model_path, vectors=synth["vectors"], pipeline=pipeline,
                             fold=_fixed_fold(fold, model, board))
        record["sim"] = run.to_json()
        if run.mismatches:
            raise _Failed("verification", f"{run.mismatches} of {run.vectors} simulated vectors "
                          f"differ from the golden model ({run.simulator})")
    if "yosys" in steps or "synth" in steps:
        from bitfab.boards.build import check_estimate, synthesize
        if fold != "auto" and synth["precheck"]:
            check_estimate(model, board, None if fold == "unrolled" else fold,
                           synth["precheck"])
        clock = values["clock"]
        outcome = synthesize(model, board, fold=fold, seed=synth["seed"], out=folder / "synth",
                             clock_hz=clock * 1e6 if clock else None, baud=synth["baud"],
                             pipeline=pipeline, place="synth" in steps)
        report = outcome.report
        # frames per second of the datapath: one vector every initiation interval at the
        # design clock (the UART, ``uart.vectors_per_s``, is the board's limit, not the design's)
        clock_mhz = report["clock"]["clock_mhz"]
        report["images_per_s"] = clock_mhz * 1e6 / max(report["initiation_interval"], 1)
        record["synth"] = report
        if report["timing_met"] is False:
            raise _Failed("timing", f"timing {report['timing']}")


class _Failed(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def point_task(values: dict, steps: list, synth: dict, trained: dict | None, folder: str
               ) -> dict:
    """Run the ``steps`` of one point (axis ``values``) on the model of ``trained`` (a
    :func:`train_task` record) or of ``values["model"]``; write its files into ``folder``; return
    the point's record: ``status`` ("ok" or "failed"), ``failure`` ("fit", "timing",
    "verification", "tool", "error", "training") and ``reason`` when failed, ``train``, ``eval``,
    ``verilog``, ``sim``, ``synth`` (the figures of each step that ran), ``seconds``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _fault(values["fault"], folder)
    start = time.perf_counter()
    record = {"status": "ok", "failure": None, "reason": None, "attempt_pid": os.getpid()}
    try:
        if trained is not None:
            record["train"] = trained
            if not trained["ok"]:
                raise _Failed("training", f"training failed: {trained['reason']}")
            model_path = trained["model"]
        else:
            model_path = values["model"]
        _run_steps(values, tuple(steps), synth, model_path, folder, record)
    except _Failed as exc:
        record.update(status="failed", failure=exc.kind, reason=one_line(exc))
    except BitfabError as exc:
        from bitfab.boards.build import FitError
        kind = "fit" if isinstance(exc, FitError) else \
            "tool" if isinstance(exc, ToolError) else "error"
        record.update(status="failed", failure=kind, reason=one_line(exc))
    record["seconds"] = time.perf_counter() - start
    return record
