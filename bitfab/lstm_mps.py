"""The ``lstm_mps`` layer kind: an :class:`~bitfab.lstm.Lstm` whose gate matrices are MPS chains.

Per direction ``d`` the stacked gate matrix ``W_d`` (``4 hidden x (in_features + hidden)``: rows
gate-major ``i, f, g, o``, columns ``x`` then ``h``, exactly the ``lstm`` kind's
``weights[d].reshape(4 hidden, -1)``) is stored as a matrix product state: ``in_modes``
``n_1 .. n_p`` multiplying to ``in_features + hidden``, ``out_modes`` ``m_1 .. m_q`` multiplying
to ``4 hidden`` (C order, the first mode most significant), and integer cores ``cores[d][k]`` of
shape ``(r_{k-1}, s_k, r_k)`` over the modes ``(n_1 .. n_p, m_1 .. m_q)`` with
``r_0 = r_{p+q} = 1``, each allowed by ``encoding``:

``W_d[m, n] = sum_a G_1[0, n_1, a_1] .. G_p[a_{p-1}, n_p, a_p] G_{p+1}[a_p, m_1, a_{p+1}] ..
G_{p+q}[a_{p+q-1}, m_q, 0]``.

The gate accumulators of one step are computed as a chain of small exact integer contractions
(no rounding anywhere in the chain; :func:`chain_stages` lists them):

1. ``t_0 = z = concat(x_t, h_{t-1})`` viewed as ``(1, n_1, .., n_p)``;
2. for ``k = 1 .. p``: ``t_k[b, rest] = sum_{a, n_k} t_{k-1}[a, n_k, rest] G_k[a, n_k, b]``
   (shape ``(r_k, n_{k+1} .. n_p)``); ``t_p`` is one bond vector ``v`` of length ``r_p``;
3. for ``k = 1 .. q``: ``u_k[m_1 .. m_k, b] = sum_a u_{k-1}[m_1 .. m_{k-1}, a] G_{p+k}[a, m_k, b]``
   with ``u_0 = v``; ``u_q`` is ``W_d z`` as ``(m_1 .. m_q)``;
4. ``acc = u_q + bias[d]``, then steps 2-6 of :mod:`bitfab.lstm` (gate thresholds, tables, cell
   and hidden state) unchanged.

Every stage's values are bounded by contracting the absolute values (:attr:`LstmMps.stage_bits`:
the signed width each stage's intermediates need, at most 62); the final stage's exact range is
the dense equivalent's accumulator range (:attr:`LstmMps.dense`, an ``lstm`` layer with the
contracted weights, which also checks every other field). Hence ``acc`` equals
``W_d @ z + bias`` of the dense equivalent bit for bit; only the storage (``sum r s r`` instead
of ``4 hidden (in_features + hidden)`` per direction) and the order of the sums differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .encodings import IntWeights, check_encoding, encoding_from_json
from .errors import ModelFormatError
from .fileformat import Reader, Writer, field, input_format
from .formats import (
    MAX_ACC_BITS,
    MAX_ELEMENTS,
    InputFormat,
    StreamFormat,
    as_index,
    int_array,
    signed_bits,
)
from .layers import register_layer_kind
from .lstm import Lstm

__all__ = ["LstmMps", "contract_cores", "chain_stages", "random_lstm_mps"]

#: The most cores one chain may have, and the largest bond dimension.
MAX_CORES = 16
MAX_RANK = 1024


def contract_cores(cores, in_size: int, out_size: int) -> np.ndarray:
    """Return the exact integer matrix ``(out_size, in_size)`` of MPS ``cores`` (int64; the
    caller bounds the values: :attr:`LstmMps.stage_bits`)."""
    out = np.asarray(cores[0], dtype=np.int64).reshape(-1, cores[0].shape[-1])
    for g in cores[1:]:
        g = np.asarray(g, dtype=np.int64)
        out = (out @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    return out.reshape(in_size, out_size).T


def chain_stages(cores, p: int, z: np.ndarray) -> list[np.ndarray]:
    """Run the contraction order of the module docstring on ``z`` (``(batch, n)`` int64) and
    return every stage ``t_1 .. t_p, u_1 .. u_q`` as ``(batch, values)`` (the last is ``W z``).

    Exact: int64 products and sums of integers whose bounds :attr:`LstmMps.stage_bits` checks.
    """
    batch = z.shape[0]
    t = np.asarray(z, dtype=np.int64).reshape(batch, 1, -1)
    stages = []
    for g in cores[:p]:
        r, s, _ = g.shape
        t = np.einsum("barc,ars->bsc", t.reshape(batch, r, s, -1), g)
        stages.append(t.reshape(batch, -1))
    u = t.reshape(batch, 1, -1)
    for g in cores[p:]:
        u = np.einsum("bdr,rms->bdms", u, g).reshape(batch, -1, g.shape[2])
        stages.append(u.reshape(batch, -1))
    return stages


@dataclass(frozen=True, eq=False)
class LstmMps:
    """An integer LSTM layer with MPS gate matrices (module docstring).

    Members
    -------
    cores : per direction a sequence of int arrays ``(r_{k-1}, s_k, r_k)``
    in_modes, out_modes : tuples of int
        ``n_1 .. n_p`` (product ``in_features + hidden``), ``m_1 .. m_q`` (product
        ``4 hidden``).
    encoding : the cores' weight encoding
    hidden, in_features : int
        The gate matrix is ``4 hidden x (in_features + hidden)``.
    input, hidden_bits, cell_bits, gate_thresholds, cand_table, cand_shift, cell_table,
    cell_shift, bias, max_length, returns, name
        As in :class:`~bitfab.lstm.Lstm`.
    """

    cores: tuple
    in_modes: tuple
    out_modes: tuple
    encoding: Any
    hidden: int
    in_features: int
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
    name: str = ""
    kind: ClassVar[str] = "lstm_mps"
    version: ClassVar[int] = 2

    def __post_init__(self):
        check_encoding(self.encoding)
        hidden = as_index(self.hidden, "hidden")
        if not 1 <= hidden <= MAX_ELEMENTS:
            raise ModelFormatError(f"hidden must be a positive integer, not {hidden}")
        object.__setattr__(self, "hidden", hidden)
        n_in = as_index(self.in_features, "in_features")
        if not 1 <= n_in <= MAX_ELEMENTS:
            raise ModelFormatError(f"in_features must be a positive integer, not {n_in}")
        object.__setattr__(self, "in_features", n_in)
        if not isinstance(self.input, InputFormat) or self.input.kind != "int":
            raise ModelFormatError(f"input must be an int InputFormat, not {self.input!r}")
        modes = []
        for what, value, size, name in (
                ("in_modes", self.in_modes, n_in + hidden, "in_features + hidden"),
                ("out_modes", self.out_modes, 4 * hidden, "4 * hidden")):
            try:
                m = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise ModelFormatError(f"{what} must be a list of positive integers, "
                                       f"not {value!r}"[:300]) from None
            if not m or min(m) < 1 or len(m) > MAX_CORES:
                raise ModelFormatError(f"{what} must be 1..{MAX_CORES} positive integers, "
                                       f"not {list(m)}")
            if int(np.prod(m)) != size:
                raise ModelFormatError(f"{what} {list(m)} multiply to {int(np.prod(m))}, not "
                                       f"{name} = {size}")
            modes.append(m)
        sizes = modes[0] + modes[1]
        if not isinstance(self.cores, list | tuple) or len(self.cores) not in (1, 2):
            raise ModelFormatError("cores must be a list of 1 or 2 chains (one per direction)")
        chains = []
        for d, chain in enumerate(self.cores):
            if not isinstance(chain, list | tuple) or len(chain) != len(sizes):
                raise ModelFormatError(f"cores[{d}] must be a list of {len(sizes)} cores (one "
                                       f"per mode of in_modes + out_modes)")
            out, left = [], 1
            for k, s in enumerate(sizes):
                g = int_array(chain[k], f"cores[{d}][{k}]", 3)
                right = 1 if k == len(sizes) - 1 else g.shape[2]
                if g.shape[0] != left or g.shape[1] != s or g.shape[2] != right \
                        or not 1 <= right <= MAX_RANK:
                    raise ModelFormatError(f"cores[{d}][{k}] must have shape ({left}, {s}, "
                                           f"r) (r in 1..{MAX_RANK}, 1 for the last), "
                                           f"not {g.shape}")
                self.encoding.check(g, f"cores[{d}][{k}]")
                out.append(g)
                left = right
            chains.append(tuple(out))
        if len(chains) == 2 and [g.shape for g in chains[0]] != [g.shape for g in chains[1]]:
            raise ModelFormatError("cores of both directions must have the same bond dimensions")
        object.__setattr__(self, "cores", tuple(chains))
        object.__setattr__(self, "in_modes", modes[0])
        object.__setattr__(self, "out_modes", modes[1])
        for d, bits in enumerate(self.stage_bits):
            if max(bits) > MAX_ACC_BITS:
                raise ModelFormatError(f"cores[{d}]: the chain's intermediates need "
                                       f"{max(bits)} bits (more than {MAX_ACC_BITS})")
        dense = self.dense  # validates the remaining fields (as an lstm layer)
        for key in ("bias", "gate_thresholds", "cand_table", "cand_shift", "cell_table",
                    "cell_shift", "hidden_bits", "cell_bits", "max_length"):
            object.__setattr__(self, key, getattr(dense, key))

    # --- the chain --------------------------------------------------------------------------------

    @property
    def p(self) -> int:
        """Number of input cores."""
        return len(self.in_modes)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Bond dimensions ``(1, r_1, .., 1)``."""
        return (1,) + tuple(int(g.shape[2]) for g in self.cores[0])

    @cached_property
    def stage_bits(self) -> list[list[int]]:
        """Per direction, the signed width that each stage ``t_1 .. t_p, u_1 .. u_q`` of the
        chain needs (a bound: the absolute cores contracted with ``max |z|``)."""
        zmax = max(abs(self.input.min_value), abs(self.input.max_value),
                   1 << (self.hidden_bits - 1))
        n = int(np.prod(self.in_modes))
        out = []
        for chain in self.cores:
            stages = chain_stages([np.abs(g) for g in chain], self.p,
                                  np.full((1, n), zmax, dtype=object))
            out.append([signed_bits(-int(s.max()), int(s.max())) for s in stages])
        return out

    @cached_property
    def dense(self) -> Lstm:
        """The equivalent ``lstm`` layer: weights the exact contraction of the cores."""
        ws = []
        n, m = int(np.prod(self.in_modes)), 4 * self.hidden
        for chain in self.cores:
            ws.append(contract_cores(chain, n, m).reshape(4, self.hidden, n))
        w = np.stack(ws)
        bits = max(2, signed_bits(int(w.min()), int(w.max())))
        if bits > 32:
            raise ModelFormatError(f"cores: the contracted weights need {bits} bits (more "
                                   f"than 32)")
        return Lstm(w, IntWeights(bits), self.input, self.hidden_bits, self.cell_bits,
                    self.gate_thresholds, self.cand_table, self.cand_shift, self.cell_table,
                    self.cell_shift, self.bias, self.max_length, self.returns, None, self.name)

    # --- what the lstm step reads (the dense equivalent's validated fields) ----------------------

    def __getattr__(self, key):
        if key in _DELEGATED:
            return getattr(self.dense, key)
        raise AttributeError(key)

    @property
    def out_features(self) -> int:
        return self.dense.out_features

    @property
    def out_format(self) -> InputFormat:
        return self.dense.out_format

    @property
    def in_stream(self) -> StreamFormat:
        """As the ``lstm`` kind's: one time step per transfer."""
        return self.dense.in_stream

    @property
    def out_stream(self) -> StreamFormat:
        return self.dense.out_stream

    @property
    def acc_bits(self) -> int:
        """The gate accumulator width (the last stage of the chain plus the bias)."""
        return self.dense.acc_bits

    @property
    def weight_count(self) -> int:
        """Stored core entries (all directions)."""
        return sum(g.size for chain in self.cores for g in chain)

    @property
    def weight_bits(self) -> int:
        """Core memory in bits (plus the lut dictionary and both tanh tables)."""
        cand, cell = self.dense.table_sizes
        return (self.weight_count * self.encoding.bits_per_weight + self.encoding.table_bits
                + self.directions * (cand * self.cell_bits + cell * self.hidden_bits))

    @property
    def macs(self) -> int:
        """Multiplications of the chain per time step (all directions)."""
        total, rest = 0, int(np.prod(self.in_modes))
        for g in self.cores[0][:self.p]:
            rest //= g.shape[1]
            total += g.size * rest
        done = 1
        for g in self.cores[0][self.p:]:
            total += done * g.size
            done *= g.shape[1]
        return total * self.directions

    @property
    def sparsity(self) -> float:
        """Fraction of core entries that are exactly zero."""
        zeros = sum(int(np.count_nonzero(g == 0)) for chain in self.cores for g in chain)
        return zeros / self.weight_count

    @property
    def datapath(self) -> str:
        """The cores' datapath (each stage is a small matrix-vector product)."""
        return self.encoding.datapath(self.dense.concat_format)

    def replace(self, **changes) -> LstmMps:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        bi = "bi-" if self.directions == 2 else ""
        ranks = ",".join(str(r) for r in self.ranks[1:-1])
        return (f"{bi}lstm_mps {self.in_features}->{self.hidden} ({self.returns}), ranks "
                f"{ranks}")

    # --- the file format --------------------------------------------------------------------------

    def to_manifest(self, prefix: str, out: Writer) -> dict:
        """Return the manifest entry; arrays go to ``out``."""
        def add(key, arr):
            return out.add_int(f"{prefix}/{key}.npy", arr)

        return {
            "kind": self.kind, "name": self.name, "hidden": self.hidden,
            "in_features": self.in_features,
            "in_modes": list(self.in_modes), "out_modes": list(self.out_modes),
            "ranks": list(self.ranks), "input": self.input.to_json(),
            "encoding": self.encoding.to_json(),
            "cores": [[add(f"core{d}_{k}", g) for k, g in enumerate(chain)]
                      for d, chain in enumerate(self.cores)],
            "bias": add("bias", self.bias), "hidden_bits": self.hidden_bits,
            "cell_bits": self.cell_bits, "gate_thresholds": add("thresholds", self.gate_thresholds),
            "cand_table": add("cand_table", self.cand_table),
            "cell_table": add("cell_table", self.cell_table),
            "cand_shift": add("cand_shift", self.cand_shift),
            "cell_shift": add("cell_shift", self.cell_shift),
            "max_length": self.max_length, "returns": self.returns,
        }

    @classmethod
    def from_manifest(cls, d: dict, reader: Reader, where: str) -> LstmMps:
        """Read a manifest entry written by :meth:`to_manifest`."""
        hidden = field(d, "hidden", int, where)
        modes = []
        for key in ("in_modes", "out_modes", "ranks"):
            value = field(d, key, list, where)
            if not value or len(value) > MAX_CORES + 1 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_RANK
                    for v in value):
                raise ModelFormatError(f"{where}.{key} must be a list of up to {MAX_CORES} "
                                       f"integers in 1..{MAX_RANK}, not {value!r}"[:300])
            modes.append(tuple(value))
        in_modes, out_modes, ranks = modes
        sizes = in_modes + out_modes
        if len(ranks) != len(sizes) + 1:
            raise ModelFormatError(f"{where}.ranks must have {len(sizes) + 1} entries (one per "
                                   f"bond), not {len(ranks)}")
        if not 1 <= hidden <= MAX_ELEMENTS or sum(
                ranks[k] * s * ranks[k + 1] for k, s in enumerate(sizes)) > MAX_ELEMENTS:
            raise ModelFormatError(f"{where}: hidden {hidden} or the cores are out of range")
        enc = encoding_from_json(field(d, "encoding", dict, where), f"{where}.encoding")
        names = field(d, "cores", list, where)
        if len(names) not in (1, 2) or not all(isinstance(c, list) and len(c) == len(sizes)
                                               for c in names):
            raise ModelFormatError(f"{where}.cores must be 1 or 2 lists of {len(sizes)} array "
                                   f"names")
        dirs = len(names)
        cores = [[reader.array(name, f"{where}.cores[{i}][{k}]",
                               (ranks[k], sizes[k], ranks[k + 1]))
                  for k, name in enumerate(chain)] for i, chain in enumerate(names)]

        def arr(key, shape=None):
            return reader.array(field(d, key, str, where), f"{where}.{key}", shape)

        return cls(
            cores, in_modes, out_modes, enc, hidden, field(d, "in_features", int, where),
            input_format(field(d, "input", dict, where), f"{where}.input"),
            field(d, "hidden_bits", int, where), field(d, "cell_bits", int, where),
            arr("gate_thresholds", (dirs, 3, hidden, 2)), arr("cand_table"),
            arr("cand_shift", (dirs,)), arr("cell_table"), arr("cell_shift", (dirs,)),
            arr("bias", (dirs, 4, hidden)), field(d, "max_length", int, where),
            field(d, "returns", str, where), field(d, "name", str, where, ""))


#: What an lstm_mps layer shares with its dense equivalent (read from :attr:`LstmMps.dense`).
_DELEGATED = frozenset({
    "weights", "directions", "in_shape", "out_shape", "hidden_format", "out_bits", "output",
    "cell_range", "table_sizes", "concat_format", "acc_range", "required_acc_bits"})

register_layer_kind(LstmMps)


def random_lstm_mps(rng: np.random.Generator, n_in: int, hidden: int, in_modes, out_modes,
                    rank: int, encoding: Any = None, **lstm_kw) -> LstmMps:
    """Return a random, well-formed :class:`LstmMps` (tests): random cores, the remaining fields
    from :func:`bitfab.lstm.random_lstm` sized to the contracted weights."""
    from .encodings import Ternary
    from .lstm import random_lstm
    encoding = Ternary() if encoding is None else encoding
    sizes = tuple(in_modes) + tuple(out_modes)
    dirs = lstm_kw.get("directions", 1)
    ranks = [1] + [rank] * (len(sizes) - 1) + [1]
    cores = [[encoding.random(rng, (ranks[k], s, ranks[k + 1]), 0.3)
              for k, s in enumerate(sizes)] for _ in range(dirs)]
    base = random_lstm(rng, n_in, hidden, encoding, **lstm_kw)
    w = np.stack([contract_cores(c, n_in + hidden, 4 * hidden) for c in cores])
    # thresholds on the contracted weights' scale
    scale = max(1.0, float(np.abs(w).sum(axis=-1).mean()) * (1 << (base.hidden_bits - 1)))
    t = np.sort(rng.normal(0, scale / 6, (dirs, 3, hidden, 2)).round(), axis=-1)
    shift = np.full(dirs, max(0, int(np.log2(max(scale / base.table_sizes[0], 1)))))
    return LstmMps(cores, tuple(in_modes), tuple(out_modes), encoding, hidden, n_in, base.input,
                   base.hidden_bits, base.cell_bits, t.astype(np.int64), base.cand_table, shift,
                   base.cell_table, base.cell_shift, None, base.max_length, base.returns)
