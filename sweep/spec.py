"""A sweep specification: the axes of a design space and what each point runs.

A spec is a TOML file (read with :mod:`tomllib`)::

    steps = ["train", "eval", "synth"]

    [axes]
    recipe = ["binary", "ternary"]
    hidden = [[16], [32, 16]]
    board = ["icebreaker"]
    fold = ["unrolled", "2,16", "auto"]
    pipeline = [1, 2]

    [train]
    limit = 500

    [synth]
    seed = 0

The points are the cartesian product of the axes (an axis left out has its one default value).
Everything is checked here, before any work: an unknown axis, an unknown value, an empty axis, an
unknown step or option is one :class:`SpecError` line naming it.
"""

from __future__ import annotations

import itertools
import math
import operator
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bitfab.errors import BitfabError

__all__ = ["SpecError", "Spec", "Point", "AXES", "STEPS", "RECIPES", "FAULTS", "load_spec",
           "parse_spec"]

#: exportable MLP recipes of :mod:`bitfab.quant.recipes` (named here so that reading a spec needs
#: no torch; a test checks the two lists agree). The convolutional recipes are not axes yet: a
#: point's eval and synth steps were built and tested for vector models.
RECIPES = ("binary", "denseshift", "int8", "lutq", "pow2", "sparse-binary", "ternary", "twobit")

#: what a point can run, in this order; ``train`` runs for every point that has no ``model``
STEPS = ("train", "eval", "verilog", "sim", "yosys", "synth")

#: fault injection, to check a cluster's failure handling (tests, a new cluster): the point's
#: task kills its own worker process with SIGKILL on every attempt, or on the first only
FAULTS = ("none", "kill-worker", "kill-worker-once")

#: axis -> its one value when the spec leaves it out
AXES = {
    "model": None,         # a .bfm file instead of training (then no training axes)
    "recipe": "binary",
    "dataset": "digits",
    "hidden": None,        # None: the recipe's default sizes
    "epochs": 30,
    "seed": 0,
    "act_bits": None,      # None: the recipe's default
    "board": "icebreaker",
    "fold": "auto",
    "pipeline": 1,
    "clock": None,         # MHz; None: the board's oscillator
    "fault": "none",
}
_TRAINING = ("recipe", "dataset", "hidden", "epochs", "seed", "act_bits")

#: fixed options of every point (the [train] and [synth] tables) and their defaults
TRAIN_OPTIONS = {"limit": None, "batch_size": None, "lr": 0.01, "act_stage": "threshold",
                 "options": {}}
SYNTH_OPTIONS = {"seed": 0, "baud": 115200, "precheck": 4.0, "vectors": 200}


class SpecError(BitfabError, ValueError):
    """A sweep specification (or the place it should run) is wrong; the message names what."""


@dataclass(frozen=True)
class Point:
    """One design point: a value per axis (see :data:`AXES`).

    Members
    -------
    values : dict
        Axis name -> value, every axis present (defaults filled in); folds are ``"auto"``,
        ``"unrolled"`` or ``"PE,SIMD"``, hidden sizes lists.
    """

    values: dict

    def __getitem__(self, name):
        return self.values[name]

    def train_values(self) -> dict | None:
        """The axes that decide the trained model (None for a point with a ``model`` file)."""
        if self.values["model"] is not None:
            return None
        return {k: self.values[k] for k in _TRAINING}

    def label(self) -> str:
        """A short human name: the axes that vary are named by the spec, this is all of them."""
        v = self.values
        what = Path(v["model"]).stem if v["model"] else \
            f"{v['recipe']}-{'-'.join(map(str, v['hidden'] or ['default']))}"
        return f"{what} {v['board']} fold {v['fold']} p{v['pipeline']}"


@dataclass(frozen=True)
class Spec:
    """A parsed sweep specification.

    Members
    -------
    axes : dict
        Axis name -> list of values, only the axes the spec gave (in the spec's order).
    steps : tuple of str
        The steps every point runs (:data:`STEPS` order).
    train, synth : dict
        The fixed options (:data:`TRAIN_OPTIONS`, :data:`SYNTH_OPTIONS`), defaults filled in.
    source : str
        Where the spec came from (a file name), for messages.
    """

    axes: dict
    steps: tuple
    train: dict = field(default_factory=dict)
    synth: dict = field(default_factory=dict)
    source: str = "spec"

    def points(self) -> list[Point]:
        """Return the points: the cartesian product of the axes, the first axis slowest."""
        names = list(self.axes)
        out = []
        for combo in itertools.product(*(self.axes[n] for n in names)):
            out.append(Point({**AXES, **dict(zip(names, combo))}))
        return out


# --- values ---------------------------------------------------------------------------------------


def _int(name, value, low, high=None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise SpecError(f"{name} must be an integer, not {value!r}") from None
    if value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f"at least {low}"
        raise SpecError(f"{name} must be {span}, not {value!r}")
    return value


def _choice(name, value, choices) -> str:
    if value not in choices:
        raise SpecError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _hidden(name, value):
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("-", ",").split(",")]
        if not all(p.isdigit() for p in parts):
            raise SpecError(f"{name} must be sizes like [64, 32] or '64,32', not {value!r}")
        value = [int(p) for p in parts]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{name} must be sizes like [64, 32] or '64,32', not {value!r}")
    return [_int(name, h, 1, 1 << 16) for h in value]


def _fold(name, value) -> str:
    if value in ("auto", "unrolled"):
        return value
    if isinstance(value, str):
        parts = value.split(",")
        value = [p.strip() for p in parts]
        if len(value) == 2 and all(p.isdigit() for p in value):
            value = [int(p) for p in value]
    if isinstance(value, list) and len(value) == 2 and \
            all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in value):
        return f"{value[0]},{value[1]}"
    raise SpecError(f"{name} must be 'auto', 'unrolled' or 'PE,SIMD' (two positive integers), "
                    f"not {value!r}")


def _dataset(name, value) -> str:
    if value in ("digits", "mnist1d"):
        return value
    if isinstance(value, str) and value.startswith("idx:"):
        if not Path(value[4:]).is_dir():
            raise SpecError(f"{name} {value!r}: no such folder {value[4:]}")
        return value
    raise SpecError(f"{name} must be 'digits', 'mnist1d' or 'idx:DIR', not {value!r}")


def _board(name, value) -> str:
    from bitfab.boards.targets import BOARDS
    return _choice(name, value, tuple(BOARDS))


def _clock(name, value):
    if value is None or value == "board":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise SpecError(f"{name} must be a clock in MHz (a positive number) or 'board', "
                        f"not {value!r}")
    return float(value)


def _model(name, value) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{name} must be the path of a .bfm file, not {value!r}")
    if not Path(value).is_file():
        raise SpecError(f"{name} {value!r}: no such file")
    return str(Path(value).resolve())


_CHECK = {
    "model": _model,
    "recipe": lambda n, v: _choice(n, v, RECIPES),
    "dataset": _dataset,
    "hidden": _hidden,
    "epochs": lambda n, v: _int(n, v, 1, 100_000),
    "seed": lambda n, v: _int(n, v, 0, 2**32 - 1),
    "act_bits": lambda n, v: None if v is None else _int(n, v, 1, 8),
    "board": _board,
    "fold": _fold,
    "pipeline": lambda n, v: _int(n, v, 0, 64),
    "clock": _clock,
    "fault": lambda n, v: _choice(n, v, FAULTS),
}


def _options(table, defaults: dict, where: str) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"[{where}] must be a table, not {table!r}")
    unknown = sorted(set(table) - set(defaults))
    if unknown:
        raise SpecError(f"[{where}] has unknown option {unknown[0]!r} (known: "
                        f"{', '.join(defaults)})")
    return {**defaults, **table}


def _train_options(table) -> dict:
    opts = _options(table, TRAIN_OPTIONS, "train")
    if opts["limit"] is not None:
        opts["limit"] = _int("[train] limit", opts["limit"], 2)
    if opts["batch_size"] is not None:
        opts["batch_size"] = _int("[train] batch_size", opts["batch_size"], 2)
    lr = opts["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or \
            lr <= 0:
        raise SpecError(f"[train] lr must be a positive number, not {lr!r}")
    _choice("[train] act_stage", opts["act_stage"], ("threshold", "requant"))
    if not isinstance(opts["options"], dict):
        raise SpecError(f"[train] options must be a table, not {opts['options']!r}")
    return opts


def _synth_options(table) -> dict:
    opts = _options(table, SYNTH_OPTIONS, "synth")
    opts["seed"] = _int("[synth] seed", opts["seed"], 0)
    opts["baud"] = _int("[synth] baud", opts["baud"], 1)
    opts["vectors"] = _int("[synth] vectors", opts["vectors"], 1, 10**6)
    pre = opts["precheck"]
    if isinstance(pre, bool) or not isinstance(pre, (int, float)) or not pre >= 0:
        raise SpecError(f"[synth] precheck must be a number >= 0 (0: no check), not {pre!r}")
    return opts


def parse_spec(data: dict, source: str = "spec") -> Spec:
    """Return the :class:`Spec` of a parsed TOML document; raise :class:`SpecError`."""
    unknown = sorted(set(data) - {"steps", "axes", "train", "synth"})
    if unknown:
        raise SpecError(f"{source}: unknown key {unknown[0]!r} (a spec has steps, [axes], "
                        f"[train], [synth])")
    axes_given = data.get("axes") if isinstance(data.get("axes"), dict) else {}
    default = ["synth"] if "model" in axes_given else ["train", "eval", "synth"]
    steps = data.get("steps", default)
    if not isinstance(steps, list) or not steps:
        raise SpecError(f"{source}: steps must be a list of {', '.join(STEPS)}, not {steps!r}")
    for step in steps:
        _choice(f"{source}: step", step, STEPS)
    if "yosys" in steps and "synth" in steps:
        raise SpecError(f"{source}: steps has yosys and synth; give one (synth runs yosys too)")
    axes_in = data.get("axes")
    if not isinstance(axes_in, dict) or not axes_in:
        raise SpecError(f"{source}: [axes] is missing or empty; give at least one axis of "
                        f"{', '.join(AXES)}")
    axes = {}
    for name, values in axes_in.items():
        if name not in AXES:
            raise SpecError(f"{source}: unknown axis {name!r} (axes: {', '.join(AXES)})")
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise SpecError(f"{source}: axis {name!r} is empty; give at least one value")
        checked = [_CHECK[name](f"axis {name}", v) for v in values]
        seen = []
        for v in checked:
            if v in seen:
                raise SpecError(f"{source}: axis {name!r} has {v!r} twice")
            seen.append(v)
        axes[name] = checked
    if "model" in axes:
        clash = [n for n in _TRAINING if n in axes]
        if clash:
            raise SpecError(f"{source}: axis 'model' gives trained models; it cannot be combined "
                            f"with the training axis {clash[0]!r}")
        if "train" in steps:
            raise SpecError(f"{source}: axis 'model' gives trained models; drop the train step")
        if data.get("train"):
            raise SpecError(f"{source}: axis 'model' gives trained models; drop [train]")
    train = _train_options(data.get("train", {}))
    synth = _synth_options(data.get("synth", {}))
    order = tuple(s for s in STEPS if s in steps or (s == "train" and "model" not in axes))
    return Spec(axes, order, train, synth, source)


def load_spec(path) -> Spec:
    """Read and check the TOML spec at ``path``; raise :class:`SpecError` (one line)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    return parse_spec(data, str(path))
