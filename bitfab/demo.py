"""``bitfab demo``: the whole pipeline on the bundled default.

Each stage runs when its part of bitfab is present; the stages that have not landed yet are listed
as such, never faked.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click
import numpy as np


def build_dir() -> Path:
    """Return bitfab's build folder (``$BITFAB_BUILD_DIR``, default ``./build``)."""
    return Path(os.environ.get("BITFAB_BUILD_DIR", "build"))


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the demo's files (default: build/demo).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def demo(out, seed):
    """Run the pipeline on the bundled default network."""
    from rich.console import Console
    from rich.table import Table

    from .cli import evaluate, model_info
    from .examples import mlp
    from .model import IntegerModel

    con = Console(highlight=False)
    out = out or build_dir() / "demo"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Until quant/ lands, the default network is hand-built: a random binary 64-64-32-10 MLP
    # (the shape of the digits recipe) run on random bipolar inputs.
    model = mlp(rng, (64, 64, 32, 10), "binary", name="demo")
    path = out / "demo.bfm"
    model.save(path)
    loaded = IntegerModel.load(path)
    x = rng.choice(np.array([-1, 1]), size=(1000, 64))
    result = evaluate(loaded, x, None)
    facts = model_info(loaded)
    table = Table(title="bitfab demo")
    table.add_column("stage")
    table.add_column("result")
    table.add_row("model", f"{path} ({len(loaded.layers)} layers, {facts['weights']} weights, "
                           f"memory reduction {100 * facts['memory_reduction']:.2f} %)")
    table.add_row("golden model", f"{result['n']} vectors executed")
    for stage, module in (("train (quant/)", "bitfab.quant.train"),
                          ("verilog (hw/)", "bitfab.hw.network"),
                          ("simulate (sim/)", "bitfab.sim.runner"),
                          ("synthesize (boards/)", "bitfab.boards.build")):
        present = importlib.util.find_spec(module) is not None
        table.add_row(stage, "available" if present else "not built yet")
    con.print(table)
