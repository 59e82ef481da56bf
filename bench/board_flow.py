"""Fmax, flow time and vectors per second of one network on every board, in one run (JSON).

Builds the tiny random binary MLP of ``docs/results/boards.md`` (``mlp(rng(0), (16, 8, 4))``,
unrolled) for each board with :func:`bitfab.boards.build.synthesize` (yosys, nextpnr, bitstream)
and reports per board: LUT4, logic cells, Fmax against the clock constraint, the flow's wall time
and its stages, and vectors per second: of the datapath at Fmax (``inputs_per_s_at_fmax``) and of
the UART link at the build's baud rate. Self-test throughput on hardware is not measured here.

    python bench/board_flow.py [--quick] [--boards icebreaker,ulx3s]

``run(quick)`` is the entry point of ``bench/all.py`` (``quick``: a 4-2 network on the iCEBreaker
only, a smoke test). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bitfab.boards.build import synthesize
from bitfab.boards.targets import BOARDS
from bitfab.examples import mlp


def _row(report: dict, wall_s: float) -> dict:
    res = report["resources"]
    return {
        "device": report["device"], "fold": report["fold"], "pipeline": report["pipeline"],
        "lut4": res["lut4"]["used"], "logic_cells": res["logic_cells"]["used"],
        "logic_cells_available": res["logic_cells"]["available"],
        "fmax_mhz": report["fmax_mhz"],
        "constraint_mhz": min((c["constraint_mhz"] for c in report["clocks"]), default=None),
        "timing_met": report["timing_met"],
        "clocks_per_input": report["clocks_per_input"],
        "datapath_vectors_per_s": report["inputs_per_s_at_fmax"],
        "link_vectors_per_s": report["uart"]["vectors_per_s"], "baud": report["uart"]["baud"],
        "flow_s": round(wall_s, 2), "stage_s": report["stage_s"],
    }


def run(quick: bool = False, boards=None) -> dict:
    """Build on every board (``quick``: a 4-2 network on the iCEBreaker only)."""
    sizes = (4, 2) if quick else (16, 8, 4)
    boards = boards or (["icebreaker"] if quick else sorted(BOARDS))
    model = mlp(np.random.default_rng(0), sizes, "binary", name="tiny")
    out = {"benchmark": "board_flow", "network": "-".join(map(str, sizes)),
           "model": "bitfab.examples.mlp(np.random.default_rng(0), sizes, 'binary')",
           "fold": "unrolled", "boards": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in boards:
            start = time.perf_counter()
            outcome = synthesize(model, name, fold="unrolled", out=Path(tmp) / name)
            out["boards"][name] = _row(outcome.report, time.perf_counter() - start)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--boards", default="", help="comma-separated board names (default all)")
    args = parser.parse_args()
    boards = [b for b in args.boards.split(",") if b] or None
    print(json.dumps(run(args.quick, boards), indent=1))


if __name__ == "__main__":
    main()
