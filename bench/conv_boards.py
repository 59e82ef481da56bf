"""The per-network results table of the image networks: accuracy, memory, resources, Fmax and
images/s on a board, from what ``bitfab train --json`` and ``bitfab synth --json`` wrote.

Each ``--net`` is ``TITLE=TRAIN_JSON,REPORT_JSON[,BOARD]``: the training summary (test
accuracy of the exported network and of its float twin, weight bits) and the board report
(logic cells, LUT4, flip-flops, block RAM, Fmax, clocks per image, images/s at Fmax). A report
of a build that did not fit is given as the error file nextpnr/bitfab left (``*.err``): the row
then says so, with the numbers the error names (``BOARD`` names the board there). Usage::

    python bench/conv_boards.py --net "digits CNN=build/r/d.json,build/r/syn.json" \\
        --page docs/results/conv.md --notes docs/results/conv-notes.md

Writes the Markdown table (and the notes, verbatim, below it) to ``--page``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _row(title: str, train: dict, report_path: Path, board: str = "-") -> str:
    acc = f"{100 * train['accuracy']:.2f} %"
    ref = f"{100 * train['float_accuracy']:.2f} %" if train.get("float_accuracy") else "-"
    net = (f"{train['recipe']} on {train['dataset']}, widths "
           f"{'-'.join(map(str, train.get('hidden') or []))}, {train.get('act_bits')}-bit acts")
    bits = f"{train['weight_bits']:,}"
    if report_path.suffix == ".err":
        err = report_path.read_text().strip().splitlines()[-1]
        cells = re.search(r"(\d+) ICESTORM_LCs", err) or re.search(r"(\d+) needed", err)
        why = f"needs {int(cells.group(1)):,} logic cells" if cells else \
            "nextpnr found no legal placement" if "legal placement" in err else err[-80:]
        return (f"| {title} | {net} | {acc} | {ref} | {bits} | {board} | does not fit: {why} "
                f"| - | - | - | - | - |")
    r = json.loads(report_path.read_text())
    res = r["resources"]

    def used(key):
        entry = res.get(key, {})
        u, a = entry.get("used"), entry.get("available")
        return "-" if u is None else (f"{u:,} / {a:,}" if a else f"{u:,}")

    fold = "x".join(map(str, r["fold"])) if r["fold"] else "unrolled"
    fmax = f"{r['fmax_mhz']:.1f}" if r.get("fmax_mhz") else "-"
    ips = f"{r['inputs_per_s_at_fmax']:,.0f}" if r.get("inputs_per_s_at_fmax") else "-"
    return (f"| {title} | {net} | {acc} | {ref} | {bits} | {r['board_title']} ({fold}) | "
            f"{used('logic_cells')} | {used('lut4')} | {used('ff')} | {used('bram')} | {fmax} | "
            f"{ips} ({r['clocks_per_input']:,} clk) |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", action="append", required=True,
                    help="TITLE=TRAIN_JSON,REPORT_JSON[,BOARD] (a report, or the *.err of a "
                         "misfit, on BOARD)")
    ap.add_argument("--page", type=Path, required=True)
    ap.add_argument("--notes", type=Path, help="Markdown appended below the table")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.net:
        title, _, paths = spec.partition("=")
        train_path, report_path, *board = paths.split(",")
        rows.append(_row(title, json.loads(Path(train_path).read_text()), Path(report_path),
                         *board))
    head = ("| network | model | test accuracy | float twin | weight bits | board (fold) | "
            "logic cells | LUT4 | FF | block RAM | Fmax MHz | images/s at Fmax |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    text = "# Image networks on boards\n\n" + head + "\n" + "\n".join(rows) + "\n"
    if args.notes:
        text += "\n" + args.notes.read_text()
    args.page.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
