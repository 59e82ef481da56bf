"""The ``lstm_mps`` kind in hardware: the MPS chain of small contractions feeding the lstm cell.

An :class:`~bitfab.lstm_mps.LstmMps` layer's gate sums ``W_d z + bias`` are computed by
:class:`MpsGates`, in the order of the golden model (:mod:`bitfab.lstm_mps`, ``chain_stages``):
one small dense matrix-vector product per core, each on the existing dense datapaths
(:class:`~bitfab.hw.layer.UnrolledDense` with the core as netlist constants, or
:class:`~bitfab.hw.layer.FoldedDense` with the core in a weight memory), applied to the
stage's vectors one after the other. The nonlinear stage is the folded lstm cell's
(:class:`~bitfab.hw.lstm.FoldedLstmCell`, one unit per clock), and bidirectional layers are
:class:`~bitfab.hw.lstm.BiLstmLayer` with one chain per direction. Hence the hardware stores the
cores (``sum r s r`` weights per direction), not the contracted matrix.

Stages (``k`` counts the cores of the chain; shapes from :attr:`LstmMps.ranks`):

- input core ``k <= p`` (``G_k``: ``(r_{k-1}, n_k, r_k)``): the matrix ``G_k`` as ``r_k`` rows of
  ``r_{k-1} n_k`` columns (column ``a n_k + n``), applied to ``V = n_{k+1} .. n_p`` vectors; the
  input vector ``c`` is ``t_{k-1}[j V + c]`` for ``j < r_{k-1} n_k``, its result goes to
  ``t_k[b V + c]``;
- output core ``p + k`` (``(r_{p+k-1}, m_k, r_{p+k})``): ``m_k r_{p+k}`` rows of ``r_{p+k-1}``
  columns, applied to ``V = m_1 .. m_{k-1}`` vectors; the input vector ``c`` is
  ``u_{k-1}[c r_{p+k-1} + a]``, its result goes to ``u_k[c m_k r_{p+k} + row]``;
- the last stage adds the bias as it stores ``u_q`` into the output register, unit-major (gate
  row ``g H + j`` of ``u_q`` to accumulator ``4 j + g``), ``acc_bits`` wide.

Storage: ``z`` is held in registers; a stage with several vectors stores its results in
registers (``t_k`` / ``u_k``, scattered as above), a stage with one vector (always the last input
core and the first output core) leaves them in its datapath's output register, which is
released once the next stage has taken its last input vector. A folded stage reads its input
vector in place (``FoldedDense(in_place=True)``: the gathered vector stays put until the stage
takes it as its last fold issues), so no datapath keeps a copy of its input.

Widths and rounding: there is no rounding. ``z`` enters at the width of the lstm layer's
``concat_format``; stage ``k``'s results are stored at ``LstmMps.stage_bits[d][k]`` bits (a
bound on their absolute values: the absolute cores contracted with ``max |z|``), which is also
the next stage's input format (signed); each stage's datapath sums at its own exact
accumulator width (the stage's :class:`~bitfab.model.Dense`).
The final stage's value plus the bias is stored at the dense equivalent's accumulator width,
which its exact range fits, so the accumulators equal the dense kind's bit for bit.

Per step the chain takes :attr:`MpsGates.latency` clocks: ``1 + sum_k (V_k II_k + L_k)``
(``II_k``, ``L_k`` the stage datapath's initiation interval and latency; folded stages read their
input in place, and ``L_k`` counts from a vector's last fold; unrolled stages take one vector per
clock, ``II_k = 1``, and ``L_k`` counts from its transfer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring

from bitfab.errors import BitfabError
from bitfab.formats import InputFormat
from bitfab.lstm_mps import LstmMps
from bitfab.model import Dense, NoOutput

from . import kinds
from .config import ConfigError, LayerConfig, check_pipeline
from .layer import FoldedDense, UnrolledDense, layer_signature
from .lstm import LstmConfig, build_lstm, stacked_gates

__all__ = ["ChainStage", "chain_plan", "split_lanes", "stage_configs", "MpsGates", "MpsLstmConfig"]


@dataclass(frozen=True)
class ChainStage:
    """One stage of the chain: a dense product applied to ``vectors`` vectors.

    Members
    -------
    matrix : np.ndarray
        ``(rows, cols)`` integer weights (one core, reshaped).
    vectors : int
        How many input vectors the stage multiplies (``V``).
    gather : np.ndarray
        ``(vectors, cols)``: input vector ``c``'s element ``j`` is the previous stage's value
        ``gather[c, j]``.
    scatter : np.ndarray
        ``(vectors, rows)``: result ``i`` of vector ``c`` is this stage's value
        ``scatter[c, i]``.
    bits : int
        The signed width of this stage's stored values (``LstmMps.stage_bits``).
    """

    matrix: np.ndarray
    vectors: int
    gather: np.ndarray
    scatter: np.ndarray
    bits: int


def chain_plan(layer: LstmMps, direction: int) -> list[ChainStage]:
    """Return the stages of direction ``direction``'s chain in the order of
    :func:`bitfab.lstm_mps.chain_stages` (module docstring)."""
    cores, p = layer.cores[direction], layer.p
    bits = layer.stage_bits[direction]
    out = []
    for k, g in enumerate(cores):
        r0, s, r1 = g.shape
        if k < p:  # input core: r1 rows of r0 s columns, V = n_{k+1} .. n_p vectors
            v = math.prod(layer.in_modes[k + 1:])
            matrix = g.reshape(r0 * s, r1).T
            c = np.arange(v)[:, None]
            gather = np.arange(r0 * s)[None, :] * v + c
            scatter = np.arange(r1)[None, :] * v + c
        else:  # output core: s r1 rows of r0 columns, V = m_1 .. m_{k-1} vectors
            v = math.prod(layer.out_modes[:k - p])
            matrix = g.reshape(r0, s * r1).T
            c = np.arange(v)[:, None]
            gather = c * r0 + np.arange(r0)[None, :]
            scatter = c * (s * r1) + np.arange(s * r1)[None, :]
        out.append(ChainStage(np.asarray(matrix, dtype=np.int64), v, gather, scatter, bits[k]))
    return out


def _stage_clocks(stage: ChainStage, pe: int, simd: int) -> int:
    """Clocks the stage's vectors take on a ``pe`` x ``simd`` folded datapath."""
    rows, cols = stage.matrix.shape
    return stage.vectors * -(-rows // pe) * (cols // simd)


def split_lanes(stages: list[ChainStage], lanes: int) -> list[tuple[int, int]]:
    """Share a budget of ``lanes`` weights per clock (``pe * simd`` of a fold) among the
    stages: each starts at ``(1, 1)``; then, while the budget allows, the stage that takes the
    most clocks grows to the next ``(pe, simd)`` (the smallest ``pe`` that saves a channel
    group, or the next divisor of its columns as ``simd``) that saves the most clocks per added
    lane. Every stage keeps at least one lane, so a budget below the number of stages is
    exceeded."""
    folds = [(1, 1)] * len(stages)
    used = len(stages)
    while True:
        order = sorted(range(len(stages)), key=lambda k: -_stage_clocks(stages[k], *folds[k]))
        for k in order:
            st, (pe, simd) = stages[k], folds[k]
            rows, cols = st.matrix.shape
            now = _stage_clocks(st, pe, simd)
            groups = -(-rows // pe)  # the next pe that saves a channel group
            grown = [(-(-rows // (groups - 1)), simd)] if groups > 1 else []
            grown += [(pe, d) for d in range(simd + 1, cols + 1) if cols % d == 0][:1]
            best = None
            for p2, s2 in grown:
                extra = p2 * s2 - pe * simd
                gain = (now - _stage_clocks(st, p2, s2)) / extra
                if used + extra <= lanes and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, p2, s2, extra)
            if best is not None:
                folds[k] = best[1:3]
                used += best[3]
                break
        else:
            return folds


def stage_configs(layer: LstmMps, stages: list[ChainStage], architecture: str,
                  pe: int | None, simd: int | None, pipeline: int) -> list[LayerConfig]:
    """Each stage's datapath: a :class:`~bitfab.model.Dense` of the stage's matrix (no output
    stage) reading the previous stage's values (``z``: the layer's ``concat_format``; then
    signed ``stage.bits``), unrolled, or folded with the stages sharing ``pe * simd`` lanes
    (:func:`split_lanes`: the chain's stages run one after the other, so the fold's budget of
    weights per clock is the chain's, as it is the one datapath's of the dense equivalent)."""
    fmt, out = layer.dense.concat_format, []
    folds = split_lanes(stages, pe * simd) if architecture == "folded" else None
    for stage in stages:
        d = Dense(stage.matrix, layer.encoding, fmt, NoOutput(), name="core")
        if architecture == "folded":
            out.append(LayerConfig.folded(d, *folds.pop(0), pipeline))
        else:
            out.append(LayerConfig.unrolled(d, pipeline))
        fmt = InputFormat("int", stage.bits, True)
    return out


class MpsGates(wiring.Component):
    """The gate sums of one direction of an :class:`~bitfab.lstm_mps.LstmMps` layer by its MPS
    chain (module docstring), a drop-in for the folded lstm cell's gate mat-vec
    (:class:`~bitfab.hw.lstm.FoldedLstmCell`'s ``gates``).

    ``i`` takes ``z = [x; h]`` (the lstm layer's ``concat_format`` codes); the stages run one
    after the other, each stage's vectors streamed through its datapath and its results stored
    in registers (or left in its datapath's output register: module docstring); ``o`` offers
    the ``4 H`` accumulators (unit-major, bias included) and holds them until read. A new ``z``
    is taken once the previous result has been read.

    Parameters
    ----------
    layer : LstmMps
    direction : int
    architecture : ``"unrolled"`` or ``"folded"``
        Each stage's datapath: the core as netlist constants (one vector per clock) or in a
        weight memory (``pe`` x ``simd`` per clock, fitted to each stage: ``pe`` capped at its
        rows, ``simd`` lowered to the largest divisor of its columns).
    pe, simd : int or None
        Folded only.
    pipeline : int
        A register stage every ``pipeline`` adder levels of every stage's tree.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(z bits), in + H)))
    o : Out(stream.Signature(ArrayLayout(unsigned(acc_bits), 4 H)))
    """

    def __init__(self, layer: LstmMps, direction: int = 0, architecture: str = "unrolled",
                 pe: int | None = None, simd: int | None = None, pipeline: int = 0):
        if not isinstance(layer, LstmMps):
            self._MustUse__silence = True
            raise BitfabError(f"layer must be an LstmMps, not {type(layer).__name__}")
        if direction not in range(len(layer.cores)):
            self._MustUse__silence = True
            raise BitfabError(f"direction must be in 0..{len(layer.cores) - 1}, "
                              f"not {direction!r}")
        dense = layer.dense
        self._layer, self._direction = layer, direction
        self._stages = chain_plan(layer, direction)
        self._z_bits = dense.concat_format.bits
        self._acc_bits = stacked_gates(dense, direction).out_bits
        self._bias = np.asarray(dense.bias[direction], dtype=np.int64)  # (4, H)
        try:
            self._configs = stage_configs(layer, self._stages, architecture, pe, simd, pipeline)
        except ConfigError:
            self._MustUse__silence = True
            raise
        # folded stages read their input vector where it is held (our registers, or the
        # previous datapath's output register): no copy
        self._datapaths = [FoldedDense(c, in_place=True) if c.architecture == "folded"
                           else UnrolledDense(c) for c in self._configs]
        n = dense.in_features + dense.hidden
        super().__init__(layer_signature(self._z_bits, n, self._acc_bits, 4 * dense.hidden))

    @property
    def layer(self) -> LstmMps:
        return self._layer

    @property
    def stages(self) -> list[ChainStage]:
        return self._stages

    @property
    def configs(self) -> list[LayerConfig]:
        """Each stage's datapath configuration."""
        return self._configs

    @property
    def acc_bits(self) -> int:
        """Width of one output accumulator (the dense equivalent's gate accumulators)."""
        return self._acc_bits

    @property
    def latency(self) -> int:
        """Clock edges from the transfer of ``z`` to ``o.valid``: ``1 + sum_k (V_k II_k +
        L_k)`` (folded stages, in place: ``L_k`` counts from a vector's last fold) or ``1 +
        sum_k (V_k + L_k)`` (unrolled)."""
        # a folded stage takes each vector as its last fold issues and answers ``latency``
        # later; an unrolled one takes a vector a clock; the next stage starts a clock after
        # the last answer
        return 1 + sum(s.vectors * c.initiation_interval + dp.latency
                       if c.architecture == "folded" else s.vectors - 1 + dp.latency + 1
                       for s, c, dp in zip(self._stages, self._configs, self._datapaths))

    @property
    def initiation_interval(self) -> int:
        """Clocks between accepted ``z`` when the result is read at once: :attr:`latency` ``+
        1`` (the next ``z`` is taken once the result has been read; the lstm cell sends it
        later still, after its nonlinear stage)."""
        return self.latency + 1

    @property
    def weight_count(self) -> int:
        """Weights the chain stores (its cores)."""
        return sum(s.matrix.size for s in self._stages)

    def elaborate(self, platform):
        m = Module()
        stages, dps = self._stages, self._datapaths
        n_stages = len(stages)
        hidden = self._layer.hidden
        ab = self._acc_bits

        running = Signal(name="running")
        feeding = Signal(name="feeding")
        ovalid = Signal(name="ovalid")
        stage = Signal(range(max(n_stages, 2)), name="stage")
        most = max(s.vectors for s in stages)
        cin = Signal(range(max(most, 2)), name="cin")
        cout = Signal(range(max(most, 2)), name="cout")

        # z, held for stage 0 (the cell's x leaves its stream once taken)
        n_z = len(self.i.payload)
        zbuf = [Signal(signed(self._z_bits), name=f"z{j}") for j in range(n_z)]
        m.d.comb += self.i.ready.eq(~running & ~ovalid)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [z.eq(self.i.payload[j].as_signed()) for j, z in enumerate(zbuf)]
            m.d.sync += [running.eq(1), feeding.eq(1), stage.eq(0), cin.eq(0), cout.eq(0)]

        values = zbuf
        held = None  # the previous stage's datapath when its output register is the storage
        obuf = [Signal(signed(ab), name=f"acc{j}") for j in range(4 * hidden)]
        for k, (st, dp) in enumerate(zip(stages, dps)):
            m.submodules[f"core{k}"] = dp
            last = k == n_stages - 1
            active = running & (stage == k)
            # the input vector cin, gathered from the previous stage's values
            with m.Switch(cin):
                for c in range(st.vectors):
                    with m.Case(c):
                        m.d.comb += [dp.i.payload[j].eq(values[int(src)])
                                     for j, src in enumerate(st.gather[c])]
            m.d.comb += dp.i.valid.eq(active & feeding)
            fed = Signal(name=f"core{k}_fed")  # the stage's last vector goes in
            m.d.comb += fed.eq(dp.i.valid & dp.i.ready & (cin == st.vectors - 1))
            with m.If(dp.i.valid & dp.i.ready):
                with m.If(fed):
                    m.d.sync += [feeding.eq(0), cin.eq(0)]
                with m.Else():
                    m.d.sync += cin.eq(cin + 1)
            if held is not None:  # its values were all read (the datapath keeps its input)
                m.d.comb += held.o.ready.eq(fed)
            results = [dp.o.payload[i].as_signed() for i in range(st.matrix.shape[0])]
            if st.vectors == 1 and not last:
                # one result vector: the datapath's output register holds it until the next
                # stage has taken its last input vector (no copy in registers of our own)
                with m.If(active & dp.o.valid):
                    m.d.sync += [stage.eq(k + 1), feeding.eq(1)]
                values, held = results, dp
                continue
            held = None
            m.d.comb += dp.o.ready.eq(active)
            got = dp.o.valid & dp.o.ready
            if not last:
                regs = [Signal(signed(st.bits), name=f"t{k}_{j}")
                        for j in range(st.vectors * st.matrix.shape[0])]
                targets = [[regs[int(t)] for t in row] for row in st.scatter]
            else:
                # u_q row g H + j, plus its bias, is accumulator 4 j + g
                targets = [[obuf[4 * (int(t) % hidden) + int(t) // hidden] for t in row]
                           for row in st.scatter]
                bias = [Signal(signed(ab), name=f"bias{i}") for i in range(len(results))]
                with m.Switch(cout):
                    for c in range(st.vectors):
                        with m.Case(c):
                            m.d.comb += [b.eq(int(self._bias.reshape(-1)[int(t)]))
                                         for b, t in zip(bias, st.scatter[c])]
                results = [r + b for r, b in zip(results, bias)]
            with m.If(got):
                with m.Switch(cout):
                    for c in range(st.vectors):
                        with m.Case(c):
                            m.d.sync += [t.eq(r) for t, r in zip(targets[c], results)]
                with m.If(cout == st.vectors - 1):
                    m.d.sync += cout.eq(0)
                    if last:
                        m.d.sync += [running.eq(0), ovalid.eq(1)]
                    else:
                        m.d.sync += [stage.eq(k + 1), feeding.eq(1)]
                with m.Else():
                    m.d.sync += cout.eq(cout + 1)
            if not last:
                values = regs

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += ovalid.eq(0)
        m.d.comb += [self.o.valid.eq(ovalid)]
        m.d.comb += [self.o.payload[j].eq(a) for j, a in enumerate(obuf)]
        return m


@dataclass(frozen=True, eq=False)
class MpsLstmConfig(LstmConfig):
    """How an lstm_mps layer becomes hardware: the lstm cells of its dense equivalent
    (:attr:`LstmMps.dense`: ``layer``), whose gate sums come from :class:`MpsGates` (one chain
    per direction), each stage ``unrolled`` (cores as netlist constants) or ``folded`` (``pe``
    x ``simd`` fitted to each stage, cores in weight memories).

    Raises
    ------
    ConfigError
        Naming the field: ``mps`` not an LstmMps, an unknown architecture, ``pe``/``simd``
        given to an unrolled chain or not positive integers for a folded one.
    """

    mps: Any = None
    _what: ClassVar[str] = "lstm_mps layer"

    def __post_init__(self):
        if not isinstance(self.mps, LstmMps):
            raise ConfigError(f"mps must be an LstmMps, not {type(self.mps).__name__}")
        if self.layer is not self.mps.dense:
            raise ConfigError("layer must be the lstm_mps layer's dense equivalent (mps.dense)")
        object.__setattr__(self, "pipeline", check_pipeline(self.pipeline))
        super().__post_init__()

    def _check_fold(self) -> None:
        # the stages share pe * simd lanes (split_lanes): any positive pe and simd will do
        for what, value in (("pe", self.pe), ("simd", self.simd)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"a folded lstm_mps chain needs a positive integer {what}, "
                                  f"not {value!r}")

    def gates(self, direction: int = 0) -> LayerConfig:
        """The dense equivalent's gate mat-vec, unrolled: what estimates read for the widths of
        the accumulators and of ``[x; h]`` (the chain's own datapaths: :attr:`datapaths`)."""
        return LayerConfig.unrolled(stacked_gates(self.layer, direction), self.pipeline)

    @property
    def serial(self) -> bool:
        """Always: the chain feeds a :class:`~bitfab.hw.lstm.FoldedLstmCell`."""
        return True

    @cached_property
    def stages(self) -> list[ChainStage]:
        """Direction 0's chain stages (:func:`chain_plan`; both directions have the same
        shapes)."""
        return chain_plan(self.mps, 0)

    @cached_property
    def datapaths(self) -> list[LayerConfig]:
        """The chain stages' datapaths of direction 0 (:func:`stage_configs`): what estimates of
        the weights' logic and memory read in place of :attr:`dense`."""
        return stage_configs(self.mps, self.stages, self.architecture, self.pe, self.simd,
                             self.pipeline)

    @property
    def chain_registers(self) -> int:
        """Flip-flops of direction 0's chain outside its datapaths: ``z``, the stored results of
        stages with several vectors, and the ``4 H`` accumulators."""
        z = (self.layer.in_features + self.layer.hidden) * self.layer.concat_format.bits
        kept = sum(s.vectors * s.matrix.shape[0] * s.bits for s in self.stages[:-1]
                   if s.vectors > 1)
        return z + kept + 4 * self.layer.hidden * self.gates(0).out_bits

    def gate_engine(self, direction: int) -> MpsGates:
        return MpsGates(self.mps, direction, self.architecture, self.pe, self.simd,
                        self.pipeline)

    def to_json(self) -> dict:
        out = super().to_json()
        stages, configs = self.stages, self.datapaths
        out.update(kind=self.mps.kind, gates="mps chain", datapath=configs[0].kind,
                   encoding=self.mps.encoding.to_json(), ranks=list(self.mps.ranks),
                   in_modes=list(self.mps.in_modes), out_modes=list(self.mps.out_modes),
                   chain_weights=sum(s.matrix.size for s in stages), name=self.mps.name,
                   stages=[{"rows": s.matrix.shape[0], "cols": s.matrix.shape[1],
                            "vectors": s.vectors, "bits": s.bits,
                            "pe": c.pe, "simd": c.simd}
                           for s, c in zip(stages, configs)])
        return out


def _configure(layer: LstmMps, fold, pipeline: int, exact: bool) -> MpsLstmConfig:
    if not isinstance(layer, LstmMps):
        raise ConfigError(f"layer must be an LstmMps, not {type(layer).__name__}")
    if fold is None:
        return MpsLstmConfig(layer.dense, pipeline, mps=layer)
    return MpsLstmConfig(layer.dense, pipeline, "folded", fold[0], fold[1], mps=layer)


kinds.register("lstm_mps", kinds.HwKind(_configure, build_lstm, foldable=True))
