"""The ``lstm`` layer kind: an LSTM whose gates i, f, o take the values {0, 0.5, 1}.

Every number is an integer and every rounding is spelled out here, so that the torch integer
eval (:mod:`bitfab.quant.lstm`), the golden model (:mod:`bitfab.sim.lstm`) and the hardware cell
(:mod:`bitfab.hw.lstm`) agree bit for bit over whole sequences.

One time step of direction ``d`` (gate order ``i, f, g, o``; ``g`` is the candidate):

1. ``acc[k, j] = sum_n W[d, k, j, n] * z[n] + bias[d, k, j]`` exactly, where ``z = concat(x_t,
   h_{t-1})`` (``x_t`` in the layer's input format, ``h`` signed ``hidden_bits`` wide);
2. ``q_k[j] = (acc[k, j] >= T[d, k, j, 0]) + (acc[k, j] >= T[d, k, j, 1])`` for the three gates
   ``k in (i, f, o)``: a gate code 0, 1 or 2 standing for 0, 0.5 and 1;
3. ``gate(q, v) = 0, v >> 1, v`` for ``q = 0, 1, 2`` (``>>`` an arithmetic, i.e. floor, shift);
4. ``g[j] = cand_table[d][clamp(acc[g, j] >> cand_shift[d], -S/2, S/2 - 1) + S/2]``;
5. ``c_t = clamp(gate(q_f, c_{t-1}) + gate(q_i, g), -2**(cell_bits-1), 2**(cell_bits-1) - 1)``;
6. ``h_t = gate(q_o, cell_table[d][clamp(c_t >> cell_shift[d], -S/2, S/2 - 1) + S/2])``.

``h`` and ``c`` start at 0 for every sequence. A forward direction reads ``x_0 .. x_{L-1}``, a
backward one ``x_{L-1} .. x_0`` (``L`` the sequence's length); the layer's output at step ``t``
is ``concat(h_fwd[t], h_bwd[t])`` (``returns="sequence"``) or the final states of the
directions (``returns="last"``, a sequence classifier).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .encodings import check_encoding, encoding_from_json
from .errors import ModelFormatError
from .fileformat import Reader, Writer, field, input_format
from .formats import (
    MAX_ELEMENTS,
    InputFormat,
    StreamFormat,
    accumulator_bits,
    accumulator_range,
    as_index,
    int_array,
    signed_bits,
)
from .layers import register_layer_kind

__all__ = ["Lstm", "LstmOutput", "GATES", "MAX_TABLE", "MAX_INPUT_BITS", "random_lstm"]

#: Gate order of the stacked weights; ``g`` is the candidate (tanh) row.
GATES = ("i", "f", "g", "o")
#: The largest tanh table (entries).
MAX_TABLE = 1 << 12
#: The widest input ``x`` (the gate datapaths read ``x`` and ``h`` in one signed format).
MAX_INPUT_BITS = 32
_QGATES = (0, 1, 3)  # rows of W that are quantized gates (i, f, o)


def _table(value: Any, what: str, dirs: int) -> np.ndarray:
    t = int_array(value, what, 2)
    size = t.shape[1]
    if t.shape[0] != dirs:
        raise ModelFormatError(f"{what} must have {dirs} row(s) (one per direction), not "
                               f"shape {t.shape}")
    if size < 2 or size > MAX_TABLE or size & (size - 1):
        raise ModelFormatError(f"{what} size must be a power of two in 2..{MAX_TABLE}, "
                               f"not {size}")
    return t


@dataclass(frozen=True)
class LstmOutput:
    """What an lstm layer emits: ``h`` (signed ``hidden_bits``) per step or per sequence."""

    returns: str
    hidden_bits: int
    kind: ClassVar[str] = "lstm_hidden"

    def describe(self) -> str:
        when = "per step" if self.returns == "sequence" else "last step"
        return f"h int{self.hidden_bits}, {when}"


@dataclass(frozen=True, eq=False)
class Lstm:
    """An integer LSTM layer with gates quantized to {0, 0.5, 1} (see the module docstring).

    Members
    -------
    weights : int array, shape ``(directions, 4, hidden, in_features + hidden)``
        Gate rows ``i, f, g, o``; columns ``x`` then ``h``. Each allowed by ``encoding``.
    encoding : a weight encoding (:mod:`bitfab.model`)
    input : InputFormat
        Format of ``x`` (``int`` only).
    hidden_bits : int
        Width of the signed hidden state ``h`` (what the layer emits).
    cell_bits : int
        Width of the signed, saturating cell state ``c``.
    gate_thresholds : int array, shape ``(directions, 3, hidden, 2)``
        Two ascending thresholds for each of the gates ``i, f, o``.
    cand_table, cell_table : int arrays, shape ``(directions, S)``
        The candidate tanh (values in the cell range) and the output tanh (values in the hidden
        range); ``S`` a power of two.
    cand_shift, cell_shift : int arrays, shape ``(directions,)``
        Floor shifts from the candidate accumulator / the cell state to a table index.
    bias : int array, shape ``(directions, 4, hidden)``, or None (zero)
    max_length : int
        The longest sequence the layer accepts (the hardware's sequence counter width).
    returns : ``"sequence"`` or ``"last"``
        Every step's hidden state, or each direction's final one (:attr:`output` describes it).
    acc_bits : int or None
        Declared gate accumulator width (``None``: the required one).
    name : str
    """

    weights: np.ndarray
    encoding: Any
    input: InputFormat
    hidden_bits: int
    cell_bits: int
    gate_thresholds: np.ndarray
    cand_table: np.ndarray
    cand_shift: np.ndarray
    cell_table: np.ndarray
    cell_shift: np.ndarray
    bias: np.ndarray | None = None
    max_length: int = 256
    returns: str = "sequence"
    acc_bits: int | None = None
    name: str = ""
    kind: ClassVar[str] = "lstm"

    def __post_init__(self):
        w = int_array(self.weights, "weights", 4)
        if w.shape[0] not in (1, 2) or w.shape[1] != 4 or 0 in w.shape:
            raise ModelFormatError(f"weights must have shape (directions 1|2, 4, hidden, "
                                   f"in_features + hidden), not {w.shape}")
        dirs, _, hidden, cols = w.shape
        if cols <= hidden:
            raise ModelFormatError(f"weights must have more than hidden ({hidden}) columns "
                                   f"(x then h), not {cols}")
        check_encoding(self.encoding)
        if not isinstance(self.input, InputFormat) or self.input.kind != "int":
            raise ModelFormatError(f"input must be an int InputFormat, not {self.input!r}")
        if self.input.bits > MAX_INPUT_BITS:
            raise ModelFormatError(f"input.bits must be in 1..{MAX_INPUT_BITS} (an lstm's "
                                   f"input), not {self.input.bits}")
        self.encoding.check(w, "weights")
        hb = as_index(self.hidden_bits, "hidden_bits")
        cb = as_index(self.cell_bits, "cell_bits")
        if not 2 <= hb <= 16:
            raise ModelFormatError(f"hidden_bits must be in 2..16, not {hb}")
        if not 2 <= cb <= 32:
            raise ModelFormatError(f"cell_bits must be in 2..32, not {cb}")
        if self.bias is None:
            b = np.zeros((dirs, 4, hidden), dtype=np.int64)
            b.flags.writeable = False
        else:
            b = int_array(self.bias, "bias", 3)
        if b.shape != (dirs, 4, hidden):
            raise ModelFormatError(f"bias must have shape {(dirs, 4, hidden)}, not {b.shape}")
        t = int_array(self.gate_thresholds, "gate_thresholds", 4)
        if t.shape != (dirs, 3, hidden, 2):
            raise ModelFormatError(f"gate_thresholds must have shape {(dirs, 3, hidden, 2)}, "
                                   f"not {t.shape}")
        if np.any(t[..., 0] > t[..., 1]):
            bad = np.argwhere(t[..., 0] > t[..., 1])[0]
            raise ModelFormatError(f"gate_thresholds of direction {bad[0]}, gate "
                                   f"{'ifo'[bad[1]]}, unit {bad[2]} are not ascending: "
                                   f"{t[tuple(bad)].tolist()}")
        cand = _table(self.cand_table, "cand_table", dirs)
        cell = _table(self.cell_table, "cell_table", dirs)
        cmax, hmax = (1 << (cb - 1)) - 1, (1 << (hb - 1)) - 1
        if cand.max() > cmax or cand.min() < -cmax - 1:
            raise ModelFormatError(f"cand_table values must fit the {cb}-bit cell state")
        if cell.max() > hmax or cell.min() < -hmax - 1:
            raise ModelFormatError(f"cell_table values must fit the {hb}-bit hidden state")
        shifts = []
        for what, value in (("cand_shift", self.cand_shift), ("cell_shift", self.cell_shift)):
            s = int_array(value, what, 1)
            if s.shape != (dirs,) or s.min() < 0 or s.max() > 62:
                raise ModelFormatError(f"{what} must be {dirs} shift(s) in 0..62, "
                                       f"not {s.tolist()}")
            shifts.append(s)
        length = as_index(self.max_length, "max_length")
        if not 1 <= length <= 1 << 20:
            raise ModelFormatError(f"max_length must be in 1..{1 << 20}, not {length}")
        if self.returns not in ("sequence", "last"):
            raise ModelFormatError(f"returns must be 'sequence' or 'last', "
                                   f"not {self.returns!r}")
        if not isinstance(self.name, str):
            raise ModelFormatError(f"name must be a string, not {self.name!r}")
        for key, value in (("weights", w), ("bias", b), ("gate_thresholds", t),
                           ("cand_table", cand), ("cell_table", cell), ("cand_shift", shifts[0]),
                           ("cell_shift", shifts[1]), ("hidden_bits", hb), ("cell_bits", cb),
                           ("max_length", length)):
            object.__setattr__(self, key, value)
        lo, hi = self.acc_range
        object.__setattr__(self, "acc_bits",
                           accumulator_bits(self.acc_bits, int(lo.min()), int(hi.max())))

    # --- shapes and formats -----------------------------------------------------------------------

    @property
    def directions(self) -> int:
        """1 (forward) or 2 (bidirectional)."""
        return int(self.weights.shape[0])

    @property
    def holds_sequence(self) -> bool:
        """Whether its output for a sequence waits for the sequence's last step (a backward
        direction reads it from the end): :attr:`bitfab.model.IntegerModel.holds_sequences`."""
        return self.directions == 2

    @property
    def hidden(self) -> int:
        """Hidden units per direction."""
        return int(self.weights.shape[2])

    @property
    def in_features(self) -> int:
        """Length of one input vector ``x_t``."""
        return int(self.weights.shape[3]) - self.hidden

    @property
    def out_features(self) -> int:
        """``hidden * directions``."""
        return self.hidden * self.directions

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of what it reads per time step: ``(in_features,)``."""
        return (self.in_features,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of what it emits per step (or per sequence): ``(out_features,)``."""
        return (self.out_features,)

    @property
    def hidden_format(self) -> InputFormat:
        """The signed ``hidden_bits`` format of ``h``."""
        return InputFormat.int(self.hidden_bits, signed=True)

    @property
    def out_format(self) -> InputFormat:
        """What the layer emits: the hidden format."""
        return self.hidden_format

    @property
    def out_bits(self) -> int:
        return self.hidden_bits

    @property
    def output(self) -> LstmOutput:
        """The layer's output stage, for reports (:class:`LstmOutput`)."""
        return LstmOutput(self.returns, self.hidden_bits)

    @property
    def cell_range(self) -> tuple[int, int]:
        """Saturation bounds of ``c``: ``(-2**(cell_bits-1), 2**(cell_bits-1) - 1)``."""
        return -(1 << (self.cell_bits - 1)), (1 << (self.cell_bits - 1)) - 1

    @property
    def table_sizes(self) -> tuple[int, int]:
        """Entries of the candidate and the output tanh tables."""
        return int(self.cand_table.shape[1]), int(self.cell_table.shape[1])

    @property
    def concat_format(self) -> InputFormat:
        """A signed format that holds both ``x`` and ``h`` (the gate datapaths' input)."""
        x = self.input
        return InputFormat.int(max(x.bits + (0 if x.signed else 1), self.hidden_bits), True)

    @cached_property
    def acc_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per ``(direction, gate, unit)`` reachable accumulator range ``(lo, hi)`` over ``x`` in
        its format and ``h`` in ``[-2**(hidden_bits-1), 2**(hidden_bits-1) - 1]`` (tight)."""
        n = self.in_features
        zmin = np.array([self.input.min_value] * n + [self.hidden_format.min_value] * self.hidden)
        zmax = np.array([self.input.max_value] * n + [self.hidden_format.max_value] * self.hidden)
        return accumulator_range(self.weights, zmin, zmax, self.bias, "weights (gates)")

    @property
    def required_acc_bits(self) -> int:
        """``signed_bits`` of the widest accumulator range (:attr:`acc_range`)."""
        lo, hi = self.acc_range
        return signed_bits(int(lo.min()), int(hi.max()))

    @property
    def sparsity(self) -> float:
        """Fraction of weights that are exactly zero."""
        return float(np.count_nonzero(self.weights == 0)) / self.weights.size

    @property
    def weight_bits(self) -> int:
        """Weight memory in bits (plus the lut dictionary and both tanh tables)."""
        bits = self.weights.size * self.encoding.bits_per_weight + self.encoding.table_bits
        cand, cell = self.table_sizes
        return bits + self.directions * (cand * self.cell_bits + cell * self.hidden_bits)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per time step, zeros included."""
        return int(self.weights.size)

    @property
    def weight_count(self) -> int:
        """Number of weights (all directions and gates)."""
        return int(self.weights.size)

    @property
    def datapath(self) -> str:
        """The datapath of the gate sums (over ``[x; h]`` in :attr:`concat_format`)."""
        return self.encoding.datapath(self.concat_format)

    @property
    def in_stream(self) -> StreamFormat:
        """One time step per transfer, ``last`` on each sequence's final step."""
        return StreamFormat(self.input, self.in_features, framed=True)

    @property
    def out_stream(self) -> StreamFormat:
        """``h`` per step (``returns="sequence"``, framed like the input) or one vector per
        sequence (``returns="last"``)."""
        return StreamFormat(self.hidden_format, self.out_features,
                            framed=self.returns == "sequence")

    def replace(self, **changes) -> Lstm:
        """Return a copy with ``changes`` applied (validated again)."""
        if "acc_bits" not in changes and ({"weights", "bias", "input", "hidden_bits"}
                                          & set(changes)):
            changes["acc_bits"] = None
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        bi = "bi-" if self.directions == 2 else ""
        return f"{bi}lstm {self.in_features}->{self.hidden} ({self.returns})"

    # --- the file format --------------------------------------------------------------------------

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        """Return the manifest entry; arrays go to ``out`` (see :mod:`bitfab.fileformat`)."""
        w = self.weights
        stored = self.encoding.store(w.reshape(-1, w.shape[-1]))

        def add(key, arr):
            return out.add_int(f"{prefix}/{key}.npy", arr)

        return {
            "kind": self.kind, "name": self.name, "directions": self.directions,
            "hidden": self.hidden, "in_features": self.in_features,
            "input": self.input.to_json(), "encoding": self.encoding.to_json(),
            "weights": out.add(f"{prefix}/weights.npy", stored),
            "bias": add("bias", self.bias), "hidden_bits": self.hidden_bits,
            "cell_bits": self.cell_bits, "gate_thresholds": add("thresholds", self.gate_thresholds),
            "cand_table": add("cand_table", self.cand_table),
            "cell_table": add("cell_table", self.cell_table),
            "cand_shift": add("cand_shift", self.cand_shift),
            "cell_shift": add("cell_shift", self.cell_shift),
            "max_length": self.max_length, "returns": self.returns, "acc_bits": self.acc_bits,
        }

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> Lstm:
        """Read a manifest entry written by :meth:`to_manifest`."""
        dirs = field(d, "directions", int, where)
        hidden = field(d, "hidden", int, where)
        n_in = field(d, "in_features", int, where)
        if dirs not in (1, 2) or hidden < 1 or n_in < 1 \
                or 4 * dirs * hidden * (n_in + hidden) > MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: directions {dirs}, hidden {hidden}, in_features "
                                   f"{n_in} are out of range")
        enc = encoding_from_json(field(d, "encoding", dict, where), f"{where}.encoding")
        shape = (dirs, 4, hidden, n_in + hidden)
        rows, cols = dirs * 4 * hidden, n_in + hidden
        raw = reader.array(field(d, "weights", str, where), f"{where}.weights",
                           enc.stored_shape(rows, cols), widened=rows * cols, widen=False)
        w = enc.restore(raw, cols, f"{where}.weights").reshape(shape)

        def arr(key, shape=None):
            return reader.array(field(d, key, str, where), f"{where}.{key}", shape)

        return cls(
            w, enc, input_format(field(d, "input", dict, where), f"{where}.input"),
            field(d, "hidden_bits", int, where), field(d, "cell_bits", int, where),
            arr("gate_thresholds", (dirs, 3, hidden, 2)), arr("cand_table"),
            arr("cand_shift", (dirs,)), arr("cell_table"), arr("cell_shift", (dirs,)),
            arr("bias", (dirs, 4, hidden)), field(d, "max_length", int, where),
            field(d, "returns", str, where), field(d, "acc_bits", int, where),
            field(d, "name", str, where, ""))


register_layer_kind(Lstm)


def random_lstm(rng: np.random.Generator, n_in: int, hidden: int, encoding: Any = None, *,
                directions: int = 1, input: InputFormat | None = None, hidden_bits: int = 6,
                cell_bits: int = 10, table_bits: tuple[int, int] = (5, 5),
                returns: str = "sequence", max_length: int = 64, sparsity: float = 0.3) -> Lstm:
    """Return a random, well-formed :class:`Lstm` (tests and benchmarks).

    The thresholds straddle the middle of each gate's reachable accumulator range and the tables
    are tanh curves, so all three gate codes, both table ends and cell saturation all occur.
    """
    from .encodings import Ternary
    encoding = Ternary() if encoding is None else encoding
    fmt = InputFormat.int(4, signed=False) if input is None else input
    shape = (directions, 4, hidden, n_in + hidden)
    w = encoding.random(rng, shape, sparsity)
    scale = float(np.abs(w).sum(axis=-1).mean()) * max(fmt.max_value, 1 << (hidden_bits - 1))
    bias = rng.integers(-int(scale) // 8 - 1, int(scale) // 8 + 2, (directions, 4, hidden))
    t = np.sort(rng.normal(0, scale / 6, (directions, 3, hidden, 2)).round(), axis=-1)
    ca, ce = (1 << table_bits[0]), (1 << table_bits[1])
    cmax, hmax = (1 << (cell_bits - 1)) - 1, (1 << (hidden_bits - 1)) - 1
    # the candidate spans +-cmax/2 so that i*g + f*c saturates now and then
    cand = np.round(np.tanh(np.linspace(-3, 3, ca)) * (cmax // 2))[None].repeat(directions, 0)
    cell = np.round(np.tanh(np.linspace(-3, 3, ce)) * hmax)[None].repeat(directions, 0)
    cand_shift = np.full(directions, max(0, int(np.log2(max(scale / ca, 1)))))
    cell_shift = np.full(directions, max(0, cell_bits - 1 - table_bits[1] + 1))
    return Lstm(w, encoding, fmt, hidden_bits, cell_bits, t.astype(np.int64),
                cand.astype(np.int64), cand_shift, cell.astype(np.int64), cell_shift,
                bias, max_length, returns)
