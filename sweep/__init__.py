"""Design-space sweeps: many trainings and builds as Dask tasks, cached, with Pareto plots.

A part of its own, above the others: a point trains (:mod:`bitfab.quant`), evaluates against the
golden model (:mod:`bitfab.sim`), generates Verilog (:mod:`bitfab.hw`) and builds
(:mod:`bitfab.boards`). The command line (``bitfab sweep``) renders its progress through a
callback; nothing here imports the shell or click. See docs/sweep.md.

- :mod:`.spec`: the TOML specification, checked before any work (:class:`SpecError`).
- :mod:`.tasks`: what a worker runs (one training, one point).
- :mod:`.engine`: planning, the content-hash cache, the Dask client, the results table.
- :mod:`.plots`: accuracy vs LUT4 and vs images/s, Pareto front.
"""

from .spec import SpecError, load_spec, parse_spec

__all__ = ["SpecError", "load_spec", "parse_spec"]
