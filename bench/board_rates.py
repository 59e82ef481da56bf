"""Benchmark the rates of a board build: datapath, UART link and on-board self-test, per board.

For the digits network's shape (64 uint5 inputs, binary 64-64-32-10, raw accumulators out: the
network of ``bitfab demo``, here with random weights) on each board, at the fold ``bitfab synth``
chooses:

- ``datapath_vectors_per_s_at_clock`` / ``_at_fmax``: clock / II and Fmax / II, the clock being
  the one :func:`bitfab.boards.pll.choose_clock` picks from Fmax (15 % margin, carrying the link
  rate);
- ``link_vectors_per_s``: what the UART carries at the board's baud (frames of 46 and 15 bytes,
  10 bits a byte, the slower direction), and ``link_vectors_per_s_simulated``: the same measured
  on the simulated board (``board run --simulate``: clocks between answers with the host's
  window, converted at the link's divisor);
- ``selftest_vectors_per_s_simulated``: the on-board self-test run on the simulated board
  (clocks between its first and last result, at the chosen clock), with its ratio to clock / II.

The folds are those of ``docs/results/boards.md`` (:data:`PUBLISHED`), or with ``--full`` the
one a real build chooses; Fmax comes from that build (``bitfab synth --selftest 64``, the fold
chosen, two passes for the clock; minutes per board), else from the ``report.json`` of an
earlier full run (``build/bench/board_rates/BOARD``), else from the measured table of
``docs/results/boards.md`` (``fmax_source`` says which). Prints
one JSON object; ``run(quick)`` returns it (for a ``make bench`` aggregator). Usage:
``python bench/board_rates.py [--full] [--boards a,b]``.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bitfab.boards.build import choose_fold, initiation_interval
from bitfab.boards.host import BoardClient
from bitfab.boards.pll import MARGIN, choose_clock
from bitfab.boards.protocol import vector_bytes
from bitfab.boards.report import link_rates
from bitfab.boards.selftest import SelfTestData
from bitfab.boards.simboard import SIM_DIVISOR, simulated_board
from bitfab.boards.targets import BOARDS, get_board
from bitfab.boards.uart import link_baud
from bitfab.examples import digits_like
from bitfab.sim.run import random_inputs, selftest_vectors

ROOT = Path(__file__).resolve().parent.parent
#: the fold the simulated runs fall back to where Amaranth's simulator cannot compile the chosen
#: one (PE 1 with SIMD >= 32 on this network: "too many levels of indentation" in pysim) and no
#: fold of PE >= 2 has the same initiation interval
FALLBACK_FOLD = (2, 32)
#: the digits builds of docs/results/boards.md (``bitfab demo``'s network, --pipeline 2): fold and
#: Fmax (MHz) on the oscillator; a quick run reads the clock choice from these when no build of
#: its own is cached
PUBLISHED = {"icebreaker": ((1, 32), 33.4), "ice40-hx8k": ((1, 64), 72.2),
             "ulx3s": ((1, 64), 93.8), "orangecrab": ((1, 64), 127.8)}


def _simulate(fn, model, fold):
    """Run ``fn(fold)``; on pysim's nesting limit, at a fold of PE >= 2 with the same initiation
    interval (else :data:`FALLBACK_FOLD`)."""
    from bitfab.boards.build import candidate_folds
    try:
        return fn(fold), fold
    except IndentationError:
        ii = initiation_interval(model, fold)
        same = [f for f in candidate_folds(model)[1:]
                if f[0] >= 2 and initiation_interval(model, f) == ii]
        other = same[0] if same else FALLBACK_FOLD
        return fn(other), other


def _link_simulated(model, vectors: int) -> dict:
    x, _ = random_inputs(model, vectors, 0)
    stamps = []

    def go(fold):
        stamps.clear()
        with simulated_board(model, fold) as board:
            client = BoardClient(board, model)
            client.run(x, progress=lambda k: stamps.append(board.cycles))
            return client.window
    window, fold = _simulate(go, model, FALLBACK_FOLD)
    per = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"fold": list(fold), "vectors": vectors, "window": window, "divisor": SIM_DIVISOR,
            "clocks_per_answer": per}


def _selftest_simulated(model, fold, vectors: int, clock_hz: float) -> dict:
    inputs, expected = selftest_vectors(model, vectors, 0)
    data = SelfTestData(inputs, expected, 0)

    def go(f):
        ii = initiation_interval(model, f)
        with simulated_board(model, f, selftest=data, clock_hz=clock_hz,
                             timeout_bits=max(4000, 4 * vectors * ii // SIM_DIVISOR)) as board:
            return BoardClient(board, model).selftest()
    report, used = _simulate(go, model, fold)
    ii = initiation_interval(model, used)
    return report.to_json() | {"fold": list(used), "initiation_interval": ii,
                               "ratio_to_clock_over_ii": report.vectors_per_s / (clock_hz / ii)}


def _fmax(model, board, fold, quick: bool, folder: Path):
    """Fmax (MHz) of the board build: a real build unless ``quick``, else an earlier one's."""
    report_path = folder / "report.json"
    if not quick:  # the fold bitfab synth chooses with the self-test in (it refolds to fit)
        from bitfab.boards.build import synthesize
        from bitfab.cli.board import selftest_data
        synthesize(model, board, out=folder, clock_hz="auto",
                   selftest=selftest_data(model, 64, 0))
    if not report_path.is_file():
        return PUBLISHED[board.name][1], None
    report = json.loads(report_path.read_text())
    passes = report.get("clock_choice", {}).get("passes") or [{"fmax_mhz": report["fmax_mhz"]}]
    return passes[0]["fmax_mhz"], report


def run(quick: bool = True, boards=None) -> dict:
    """Measure every board (or ``boards``); return the JSON object."""
    start = time.perf_counter()
    model = digits_like()
    in_bytes = vector_bytes(model.in_stream.payload_bits, 1)
    out_bytes = vector_bytes(model.out_stream.payload_bits, 1)
    vectors = 12 if quick else 48
    link_sim = _link_simulated(model, vectors)
    out = {"benchmark": "board_rates", "quick": quick, "model": "digits-like 64-64-32-10",
           "frame_payload_bytes": [in_bytes, out_bytes], "margin": MARGIN,
           "python": platform.python_version(), "link_simulated": link_sim, "boards": {},
           "old_link_vectors_per_s_115200": link_rates(115200, in_bytes, out_bytes)[
               "vectors_per_s"]}
    selftests = {}
    for name in boards or BOARDS:
        board = get_board(name)
        fold = PUBLISHED[name][0] if name in PUBLISHED else choose_fold(model, board)
        folder = ROOT / "build" / "bench" / "board_rates" / name
        fmax, report = _fmax(model, board, fold, quick, folder)
        if report is not None:
            fold = tuple(report["fold"]) if report["fold"] else None
        ii = initiation_interval(model, fold)
        if fmax is not None:
            clock, why = choose_clock(board, fmax * 1e6, board.baud)
        else:
            clock, why = board.clock_hz, "no Fmax known (quick run without an earlier build)"
        baud = link_baud(board, clock)
        link = link_rates(baud, in_bytes, out_bytes)
        key = (fold, clock)
        if key not in selftests:
            selftests[key] = _selftest_simulated(model, fold, 16 if quick else 64, clock)
        st = selftests[key]
        out["boards"][name] = {
            "fold": list(fold) if fold else None, "initiation_interval": ii,
            "fmax_mhz": fmax, "clock_mhz": clock / 1e6, "clock_reason": why,
            "datapath_vectors_per_s_at_clock": clock / ii,
            "datapath_vectors_per_s_at_fmax": fmax * 1e6 / ii if fmax else None,
            "baud": baud, "link_vectors_per_s": link["vectors_per_s"],
            "link_vectors_per_s_simulated": baud * link_sim["divisor"] /
            link_sim["clocks_per_answer"],
            "end_to_end_vectors_per_s": min(clock / ii, link["vectors_per_s"]),
            "speedup_over_115200": link["vectors_per_s"] / out["old_link_vectors_per_s_115200"],
            "selftest_vectors_per_s_simulated": st["vectors_per_s"],
            "selftest_simulated": st,
            "fmax_source": "build" if report else "docs/results/boards.md",
            "build_timing_met": report.get("timing_met") if report else None,
        }
    out["wall_s"] = round(time.perf_counter() - start, 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="build every board (minutes each) for its Fmax")
    parser.add_argument("--boards", default=None, help="comma-separated board names")
    args = parser.parse_args(argv)
    boards = args.boards.split(",") if args.boards else None
    json.dump(run(quick=not args.full, boards=boards), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
