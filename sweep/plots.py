"""The plots of a sweep: accuracy vs LUT4 and accuracy vs images/s per board, Pareto front marked.

matplotlib with the Agg backend (files only, no display); one PNG per board,
``plot-BOARD.png``, with two panels.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["pareto", "plot_boards"]


def pareto(points: list[tuple[float, float]], minimize_x: bool) -> list[int]:
    """Return the indices of the Pareto-optimal ``(x, y)`` points, y maximized and x minimized
    (``minimize_x``, a cost such as LUT4) or maximized (a speed), sorted by x. A point is on the
    front when no other point is at least as good in both and better in one."""
    sign = 1 if minimize_x else -1
    order = sorted(range(len(points)), key=lambda i: (sign * points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


#: axes named in a point's label when they vary among the plotted points
_LABELLED = ("model", "recipe", "hidden", "act_bits", "epochs", "seed", "fold", "pipeline",
             "clock")


def _label(row: dict, varying: list) -> str:
    parts = []
    for axis in varying:
        value = row.get(axis)
        if axis == "model" and value:
            value = Path(value).stem
        elif axis == "hidden" and value:
            value = "h" + "-".join(map(str, json.loads(value)))
        elif axis == "fold":
            value = row.get("chosen_fold") or value
        elif axis == "pipeline":
            value = f"p{value}"
        elif axis == "clock":
            value = "board clock" if value is None else f"{value:g} MHz"
        elif axis in ("epochs", "seed", "act_bits"):
            value = f"{axis} {value}"
        parts.append(str(value))
    return " ".join(parts)


def plot_boards(folder: Path, rows: list) -> list[Path]:
    """Write ``plot-BOARD.png`` for every board with at least one point that has an accuracy and
    a LUT4 count; return the files."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    files = []
    boards = sorted({r["board"] for r in rows})
    for board in boards:
        good = [r for r in rows if r["board"] == board and r["status"] == "ok" and
                r.get("accuracy") is not None and r.get("lut4") is not None]
        if not good:
            continue
        varying = [a for a in _LABELLED if len({str(r.get(a)) for r in good}) > 1] or \
            ["recipe"]
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        panels = fig.subplots(1, 2)
        for ax, column, title, minimize in (
                (panels[0], "lut4", "LUT4 used", True),
                (panels[1], "images_per_s", "images/s (datapath, design clock)", False)):
            pts = [(float(r[column]), 100 * float(r["accuracy"])) for r in good
                   if r.get(column) is not None]
            rows_here = [r for r in good if r.get(column) is not None]
            if not pts:
                continue
            front = pareto(pts, minimize)
            recipes = sorted({r["recipe"] for r in rows_here})
            for recipe in recipes:
                xs = [p[0] for p, r in zip(pts, rows_here) if r["recipe"] == recipe]
                ys = [p[1] for p, r in zip(pts, rows_here) if r["recipe"] == recipe]
                ax.scatter(xs, ys, label=recipe, alpha=0.7)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1,
                    drawstyle="steps-post" if minimize else "steps-pre",
                    label="Pareto front")
            ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], s=120,
                       facecolors="none", edgecolors="k")
            for i in front:
                ax.annotate(_label(rows_here[i], varying), pts[i], fontsize=7, xytext=(4, -10),
                            textcoords="offset points")
            if not minimize:
                ax.set_xscale("log")
            ax.set_xlabel(title)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        failed = sum(r["board"] == board and r["status"] != "ok" for r in rows)
        fig.suptitle(f"{board}: {len(good)} points ({failed} failed)")
        path = folder / f"plot-{board}.png"
        fig.savefig(path, dpi=110)
        files.append(path)
    return files
