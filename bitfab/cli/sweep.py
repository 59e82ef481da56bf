"""``bitfab sweep``: a design space on Dask, cached, with a results table and Pareto plots."""

from __future__ import annotations

from pathlib import Path

import click

from .ui import console, emit_json, label

__all__ = ["sweep"]


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Sweep folder: new or empty, or one a sweep wrote before (its points are the "
                   "cache: only new or changed points run).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="A running Dask scheduler (workers started with `dask worker`, bitfab "
                   "installed, --out on a shared path); default an embedded LocalCluster.")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Worker processes of the embedded cluster (default: one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def sweep(spec, out, scheduler, workers, as_json):
    """Train and build every point of SPEC (TOML) as Dask tasks; write results and plots."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from bitfab.sweep.engine import check_out, run_sweep
    from bitfab.sweep.spec import load_spec

    if scheduler is not None and workers is not None:
        raise click.UsageError("--workers sizes the embedded cluster; a --scheduler has its own")
    parsed = load_spec(spec)  # every bad input is one line before any work
    check_out(out)
    con = console(stderr=as_json)
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[running]} running, {task.fields[failed]} failed, "
                             "{task.fields[cached]} cached"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=con, transient=as_json) as bar:
        task = bar.add_task("sweep", total=None, running=0, failed=0, cached=0)

        def progress(state):
            bar.update(task, total=state["total"], completed=state["done"],
                       running=state["running"], failed=state["failed"], cached=state["cached"])
            if state["last"] and not as_json:
                bar.console.print(f"  {label(state['last'])}", highlight=False)
                state["last"] = None

        result = run_sweep(parsed, out, scheduler=scheduler, workers=workers,
                           progress=progress)
    summary = {"points": len(result.rows), "ran": result.ran, "cached": result.cached,
               "failed": result.failed, "seconds": result.seconds, "workers": result.workers,
               "folder": str(result.folder), "plots": [str(p) for p in result.plots],
               "results": str(result.folder / "results.csv")}
    if as_json:
        emit_json({**summary, "rows": result.rows})
        return
    table = Table(title=f"bitfab sweep — {label(spec)} ({result.ran} run, {result.cached} "
                        f"cached, {result.failed} failed, {result.seconds:.1f} s)")
    for col in ("point", "status", "accuracy", "LUT4", "BRAM", "Fmax", "images/s"):
        table.add_column(col, justify="left" if col in ("point", "status") else "right")
    for row in result.rows:
        status = "[green]ok[/]" if row["status"] == "ok" else f"[red]{row['reason']}[/]"
        acc = row.get("accuracy")
        table.add_row(_point(row), status, "-" if acc is None else f"{100 * acc:.1f} %",
                      _num(row.get("lut4")), _num(row.get("bram")),
                      "-" if row.get("fmax_mhz") is None else f"{row['fmax_mhz']:.1f} MHz",
                      "-" if row.get("images_per_s") is None else f"{row['images_per_s']:.3g}")
    con.print(table)
    con.print(f"results: {label(summary['results'])}   plots: "
              f"{', '.join(label(p) for p in summary['plots']) or 'none'}")


def _num(v) -> str:
    return "-" if v is None else str(v)


def _point(row: dict) -> str:
    what = Path(row["model"]).stem if row.get("model") else \
        f"{row['recipe']} {row['hidden'] or ''}".strip()
    return f"{what} {row['board']} fold {row['fold']} p{row['pipeline']}"
