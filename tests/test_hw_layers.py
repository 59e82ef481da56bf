"""Every datapath x architecture x output stage in the Amaranth simulator, against the golden model.

Random layers come from hypothesis (derandomized: a fixed seed) through
:func:`bitfab.examples.random_dense`; inputs include the format's extremes. Producers idle and
consumers stall at random, and the outputs must equal :mod:`bitfab.sim.golden` bit for bit, in
order, with none lost or duplicated.
"""

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfab.errors import VerificationError
from bitfab.examples import random_dense
from bitfab.formats import StreamFormat
from bitfab.hw.config import LayerConfig
from bitfab.hw.layer import build_layer
from bitfab.model import (
    Binary,
    Dense,
    InputFormat,
    IntWeights,
    Lut,
    NoOutput,
    Pow2,
    Requant,
    Ternary,
    Threshold,
)
from bitfab.sim import golden
from bitfab.sim.amaranth_sim import run_stream, simulate

#: encoding name -> weight encoding (lut_pow2: a multiplierless dictionary)
ENCODINGS = {
    "binary": Binary(),
    "ternary": Ternary(),
    "pow2": Pow2(0, 3, zero=True),
    "denseshift": Pow2(1, 2, zero=False),
    "lut": Lut((-3, -1, 0, 2, 5)),
    "lut_pow2": Lut((-4, 0, 1, 2)),
    "int": IntWeights(4),
}
OUTPUTS = ("none", "threshold", "requant")
ARCHS = ("unrolled", "folded")

def pack(values, fmt):
    """The payloads of ``values`` (rows of ``fmt`` values): :class:`StreamFormat` packing."""
    return StreamFormat(fmt, np.asarray(values).shape[-1]).pack(values)


def unpack(payloads, fmt, n):
    return StreamFormat(fmt, n).unpack(payloads)



def reference(layer: Dense, x: np.ndarray) -> np.ndarray:
    return golden.dense_forward(layer, golden.dense_accumulate(layer, x))


def random_inputs(rng, fmt: InputFormat, batch: int, n: int) -> np.ndarray:
    """Random values of ``fmt`` whose first rows are the extremes (all min, all max)."""
    if fmt.kind == "bipolar":
        x = 2 * rng.integers(0, 2, size=(batch, n)) - 1
    else:
        x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(batch, n))
    x[0] = fmt.min_value
    if batch > 1:
        x[1] = fmt.max_value
    return x


def make_config(layer: Dense, arch: str, pipeline: int, rng) -> LayerConfig:
    if arch == "unrolled":
        return LayerConfig.unrolled(layer, pipeline)
    divisors = [d for d in range(1, layer.in_features + 1) if layer.in_features % d == 0]
    simd = int(rng.choice(divisors))
    pe = int(rng.integers(1, layer.out_features + 1))
    return LayerConfig.folded(layer, pe, simd, pipeline)


def check(cfg: LayerConfig, x: np.ndarray, stall=0.0, bubble=0.0, seed=0):
    y = simulate(cfg, x, stall=stall, bubble=bubble, seed=seed)
    np.testing.assert_array_equal(y, reference(cfg.layer, x))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("encoding", list(ENCODINGS))
@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), n_in=st.integers(1, 7), n_out=st.integers(1, 4),
       fmt=st.sampled_from(["bipolar", "uint", "int"]), bits=st.integers(1, 5),
       pipeline=st.integers(0, 2), thresholds=st.integers(1, 3))
def test_random_layer_matches_golden(encoding, output, arch, seed, n_in, n_out, fmt, bits,
                                     pipeline, thresholds):
    rng = np.random.default_rng(seed)
    if fmt == "bipolar":
        input_format = InputFormat.bipolar()
    else:
        input_format = InputFormat.int(max(bits, 2) if fmt == "int" else bits, fmt == "int")
    layer = random_dense(rng, n_in, n_out, ENCODINGS[encoding], input_format, output,
                         thresholds=thresholds, sparsity=0.3)
    cfg = make_config(layer, arch, pipeline, rng)
    check(cfg, random_inputs(rng, input_format, 4, n_in), stall=0.3, bubble=0.3, seed=seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_all_zero_ternary_rows(arch):
    rng = np.random.default_rng(1)
    w = rng.integers(-1, 2, size=(4, 6))
    w[0] = 0
    w[2] = 0
    layer = Dense(w, Ternary(), InputFormat.int(4, signed=True), NoOutput(),
                  np.array([3, 0, -2, 1]))
    cfg = LayerConfig.unrolled(layer, 1) if arch == "unrolled" else LayerConfig.folded(layer, 2, 3)
    check(cfg, random_inputs(rng, layer.input, 5, 6))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output", ["none", "threshold"])
def test_layer_whose_every_weight_is_zero(arch, output):
    layer = Dense(np.zeros((3, 5), dtype=np.int64), Ternary(), InputFormat.int(3), NoOutput(),
                  np.array([-1, 0, 2]))
    if output == "threshold":
        layer = layer.replace(output=Threshold(np.array([[-1], [1], [2]]), np.array([1, -1, 1])))
    cfg = LayerConfig.unrolled(layer, 1) if arch == "unrolled" else LayerConfig.folded(layer, 3, 5)
    check(cfg, random_inputs(np.random.default_rng(2), layer.input, 3, 5))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("encoding", ["binary", "int"])
def test_one_input_one_output(arch, encoding):
    rng = np.random.default_rng(3)
    fmt = InputFormat.bipolar() if encoding == "binary" else InputFormat.int(3, signed=True)
    layer = random_dense(rng, 1, 1, ENCODINGS[encoding], fmt, "threshold", thresholds=2)
    cfg = LayerConfig.unrolled(layer) if arch == "unrolled" else LayerConfig.folded(layer, 1, 1)
    check(cfg, random_inputs(rng, fmt, 4, 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_accumulator_extremes(arch):
    """int8 x int8 at both ends: the accumulator reaches its declared range exactly."""
    w = np.array([[-128, -128, -128, -128], [127, 127, 127, 127], [-128, 127, -128, 127]])
    layer = Dense(w, IntWeights(8), InputFormat.int(8, signed=True), NoOutput(),
                  np.array([-5, 5, 0]))
    x = np.array([[-128] * 4, [127] * 4, [-128, 127, -128, 127], [127, -128, 127, -128]])
    cfg = LayerConfig.unrolled(layer, 2) if arch == "unrolled" else LayerConfig.folded(layer, 2, 2)
    y = simulate(cfg, x)
    ref = reference(layer, x)
    assert ref.min() == layer.acc_range[0].min() and ref.max() == layer.acc_range[1].max()
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["bipolar", "int"])
def test_negative_and_unreachable_thresholds(arch, fmt):
    """Thresholds below zero, below the reachable minimum and above the maximum, both directions."""
    rng = np.random.default_rng(4)
    if fmt == "bipolar":
        layer = random_dense(rng, 6, 4, "binary", InputFormat.bipolar(), bias=False)
    else:
        layer = random_dense(rng, 6, 4, "ternary", InputFormat.int(3, signed=True))
    lo, hi = layer.acc_range
    t = np.array([[-3, -1, 0],                       # negative
                  [int(hi[1]) + 1, int(hi[1]) + 5, 10**9],   # never reached (direction +1)
                  [int(lo[2]) - 1, -(10**9), -(10**10)],     # always passed (direction -1)
                  [int(lo[3]) - 7, int(lo[3]) - 1, int(hi[3]) + 1]])
    d = np.array([1, 1, -1, 1])
    layer = layer.replace(output=Threshold(t, d))
    cfg = LayerConfig.unrolled(layer, 1) if arch == "unrolled" else LayerConfig.folded(layer, 2, 3)
    check(cfg, random_inputs(rng, layer.input, 6, 6))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pipeline", [0, 2])
def test_backpressure_and_bubbles_lose_nothing(arch, pipeline):
    """Heavy random stalls and bubbles: every vector arrives once, in order, correct."""
    rng = np.random.default_rng(5)
    layer = random_dense(rng, 8, 3, "pow2", InputFormat.int(4, signed=True), "requant")
    x = random_inputs(rng, layer.input, 24, 8)
    x[2:] = rng.integers(-8, 8, size=(22, 8))
    x[5] = x[4]  # equal neighbours: a duplicated vector would go unnoticed without the count
    cfg = LayerConfig.unrolled(layer, pipeline) if arch == "unrolled" \
        else LayerConfig.folded(layer, 2, 4, pipeline)
    dut = build_layer(cfg)
    for stall, bubble in ((0.7, 0.0), (0.0, 0.7), (0.5, 0.5)):
        result = run_stream(dut if stall == 0.7 else build_layer(cfg), pack(x, layer.input),
                            stall=stall, bubble=bubble, seed=int(stall * 10))
        assert len(result.outputs) == len(x)
        y = unpack(result.outputs, layer.out_format, layer.out_features)
        np.testing.assert_array_equal(y, reference(layer, x))


@pytest.mark.parametrize("pe,simd", [(2, 4), (1, 8)])
def test_folded_output_register_under_backpressure(pe, simd):
    """A FoldedDense (one output register, no staging copy): the same vectors under stalls and
    bubbles, the latency and interval its properties say when nothing stalls; a wrong reference
    fails."""
    from bitfab.hw.layer import FoldedDense
    rng = np.random.default_rng(7)
    layer = random_dense(rng, 8, 3, "ternary", InputFormat.int(4, signed=True), "none")
    x = random_inputs(rng, layer.input, 24, 8)
    cfg = LayerConfig.folded(layer, pe, simd, 1)
    result = run_stream(FoldedDense(cfg), pack(x, layer.input), stall=0.6,
                        bubble=0.3, seed=3)
    y = unpack(result.outputs, layer.out_format, layer.out_features)
    np.testing.assert_array_equal(y, reference(layer, x))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, reference(layer, x) + (np.arange(24) == 7)[:, None])
    dut, plain = FoldedDense(cfg), build_layer(cfg)
    timed = run_stream(dut, pack(x[:4], layer.input))
    assert (dut.latency, dut.initiation_interval) == (plain.latency, plain.initiation_interval)
    np.testing.assert_array_equal(np.array(timed.out_cycles) - timed.in_cycles, dut.latency)
    np.testing.assert_array_equal(np.diff(timed.in_cycles), dut.initiation_interval)
    Fragment.get(plain, None)  # built for its properties only


@pytest.mark.parametrize("cfg_args", [("unrolled", None, None, 0), ("unrolled", None, None, 1),
                                      ("unrolled", None, None, 3), ("folded", 2, 3, 0),
                                      ("folded", 3, 2, 2), ("folded", 5, 6, 1)])
def test_latency_and_initiation_interval_are_what_the_properties_say(cfg_args):
    arch, pe, simd, pipeline = cfg_args
    rng = np.random.default_rng(6)
    layer = random_dense(rng, 6, 5, "binary", None, "threshold")
    dut = build_layer(LayerConfig(layer, arch, pe, simd, pipeline))
    x = random_inputs(rng, layer.input, 5, 6)
    result = run_stream(dut, pack(x, layer.input))
    latencies = np.array(result.out_cycles) - np.array(result.in_cycles)
    np.testing.assert_array_equal(latencies, dut.latency)
    np.testing.assert_array_equal(np.diff(result.in_cycles), dut.initiation_interval)
    assert dut.initiation_interval == (1 if arch == "unrolled" else
                                       (6 // simd) * -(-5 // pe))


def test_a_wrong_reference_fails_the_comparison():
    """The checker is not vacuous: a reference off by one, or from other weights, is caught."""
    rng = np.random.default_rng(7)
    layer = random_dense(rng, 8, 3, "binary", None, "none")
    x = random_inputs(rng, layer.input, 4, 8)
    y = simulate(layer, x)
    wrong = reference(layer, x).copy()
    wrong[2, 1] += 1
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, wrong)
    w = layer.weights.copy()
    w[0, 0] = -w[0, 0]
    other = layer.replace(weights=w)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(simulate(LayerConfig.folded(other, 3, 4), x),
                                      reference(layer, x))


def test_simulate_refuses_wrong_shapes():
    layer = random_dense(np.random.default_rng(8), 4, 2, "binary")
    with pytest.raises(VerificationError,
                       match=r"inputs must have shape \(batch, 4\), not \(2, 3\)"):
        simulate(layer, np.ones((2, 3), dtype=int))


class _Faulty(wiring.Component):
    """A deliberately broken stream stage: ``mode`` "swallow" never answers, "twice" emits
    every vector two times."""

    def __init__(self, mode):
        self._mode = mode
        super().__init__({"i": In(stream.Signature(unsigned(4))),
                          "o": Out(stream.Signature(unsigned(4)))})

    def elaborate(self, platform):
        m = Module()
        if self._mode == "swallow":
            m.d.comb += self.i.ready.eq(1)
            return m
        data, count = Signal(4), Signal(2)
        m.d.comb += [self.i.ready.eq(count == 0), self.o.valid.eq(count != 0),
                     self.o.payload.eq(data)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [data.eq(self.i.payload), count.eq(2)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += count.eq(count - 1)
        return m


@pytest.mark.parametrize("mode, message", [("swallow", r"gave 0 of 3 vectors"),
                                           ("twice", r"more than the 3 vectors")])
def test_the_stream_checker_catches_lost_and_duplicated_vectors(mode, message):
    with pytest.raises(VerificationError, match=message):
        run_stream(_Faulty(mode), [1, 2, 3], max_cycles=200 if mode == "swallow" else None)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", ["negative_multiplier", "one_entry_lut", "zero_lut",
                                  "int_min_weights_bipolar"])
def test_corner_encodings_and_stages(arch, case):
    rng = np.random.default_rng(9)
    fmt = InputFormat.int(4, signed=True)
    if case == "negative_multiplier":
        layer = random_dense(rng, 6, 3, "ternary", fmt, "none")
        layer = layer.replace(output=Requant(np.array([-3, 5, -1]), 2, 3, signed=False,
                                             rounding="half_up"))
    elif case == "one_entry_lut":
        layer = Dense(np.full((3, 6), 3), Lut((3,)), fmt, NoOutput())
    elif case == "zero_lut":
        layer = Dense(np.zeros((3, 6), dtype=np.int64), Lut((0,)), fmt,
                      Threshold(np.array([[0], [1], [-1]])))
    else:
        w = rng.choice(np.array([-8, 7, -1, 0]), size=(3, 6))
        fmt = InputFormat.bipolar()
        layer = Dense(w, IntWeights(4), fmt, NoOutput(), np.array([1, -2, 0]))
    cfg = LayerConfig.unrolled(layer, 1) if arch == "unrolled" else LayerConfig.folded(layer, 2, 3)
    check(cfg, random_inputs(rng, fmt, 5, 6), stall=0.2)


@pytest.mark.parametrize("count,n_in,n_out,pe,simd", [(3, 6, 5, 2, 2), (7, 8, 4, 1, 1),
                                                      (15, 16, 3, 3, 1), (3, 9, 6, 6, 3)])
def test_serial_threshold_stage_matches_golden_under_stalls(count, n_in, n_out, pe, simd):
    """A folded layer with ``3 <= count <= SF`` thresholds checks them one per clock: the codes
    equal golden's under stalls and bubbles, thresholds out of reach and mixed directions
    included; the latency grows by ``count``, the initiation interval does not."""
    from bitfab.hw import layer as hw_layer
    rng = np.random.default_rng(count)
    layer = random_dense(rng, n_in, n_out, "ternary", InputFormat.int(3, signed=True),
                         "threshold", thresholds=count)
    t = layer.output.thresholds.copy()
    lo, hi = layer.acc_range
    t[0] = np.sort(np.concatenate([[int(lo[0]) - 5], t[0, 1:-1], [int(hi[0]) + 9]]))
    d = layer.output.direction.copy()
    d[: n_out // 2] = -d[: n_out // 2]
    t = np.where(d[:, None] > 0, np.sort(t, axis=1), np.sort(t, axis=1)[:, ::-1])
    layer = layer.replace(output=Threshold(t, d))
    cfg = LayerConfig.folded(layer, pe, simd, 1)
    assert hw_layer.serial_thresholds(cfg)
    x = random_inputs(rng, layer.input, 12, n_in)
    for stall, bubble in ((0.0, 0.0), (0.6, 0.2), (0.2, 0.6)):
        check(cfg, x, stall=stall, bubble=bubble, seed=count)
    serial = build_layer(cfg)
    result = run_stream(serial, pack(x[:4], layer.input))
    np.testing.assert_array_equal(np.array(result.out_cycles) - np.array(result.in_cycles),
                                  serial.latency)
    np.testing.assert_array_equal(np.diff(result.in_cycles), serial.initiation_interval)
    hw_layer.SERIAL_THRESHOLDS = False
    try:
        parallel = build_layer(cfg)
        assert serial.latency == parallel.latency + count
        y = unpack(run_stream(parallel, pack(x, layer.input), stall=0.3, bubble=0.3).outputs,
                   layer.out_format, n_out)
        np.testing.assert_array_equal(y, reference(layer, x))
    finally:
        hw_layer.SERIAL_THRESHOLDS = True


def test_serial_threshold_stage_fails_on_a_wrong_reference():
    rng = np.random.default_rng(3)
    layer = random_dense(rng, 8, 3, "pow2", InputFormat.int(4), "threshold", thresholds=7)
    cfg = LayerConfig.folded(layer, 1, 1)
    x = random_inputs(rng, layer.input, 6, 8)
    y = simulate(cfg, x)
    wrong = reference(layer, x)
    wrong[2, 1] = (wrong[2, 1] + 1) % 8
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, wrong)


@pytest.mark.parametrize("pe,simd,output", [(2, 4, "none"), (1, 2, "threshold")])
def test_folded_in_place_reads_the_held_input(pe, simd, output):
    """A FoldedDense ``in_place`` keeps no input copy: it works on the producer's held payload
    and takes it as its last fold issues. The same vectors as golden under stalls and bubbles
    (the serial threshold stage included); the latency counts from that last fold, the
    interval is the copying layer's; a wrong reference fails."""
    from bitfab.hw.layer import FoldedDense
    rng = np.random.default_rng(pe + simd)
    layer = random_dense(rng, 8, 3, "ternary", InputFormat.int(3, signed=True), output,
                         thresholds=3)
    x = random_inputs(rng, layer.input, 16, 8)
    cfg = LayerConfig.folded(layer, pe, simd, 1)
    for seed, (stall, bubble) in enumerate([(0.6, 0.2), (0.2, 0.6)]):
        result = run_stream(FoldedDense(cfg, in_place=True), pack(x, layer.input),
                            stall=stall, bubble=bubble, seed=seed)
        y = unpack(result.outputs, layer.out_format, layer.out_features)
        np.testing.assert_array_equal(y, reference(layer, x))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(y, reference(layer, x) + (np.arange(16) == 5)[:, None])
    dut, copy = FoldedDense(cfg, in_place=True), FoldedDense(cfg)
    timed = run_stream(dut, pack(x[:4], layer.input))
    assert dut.in_place and not copy.in_place
    assert dut.latency == copy.latency - cfg.initiation_interval
    np.testing.assert_array_equal(np.array(timed.out_cycles) - timed.in_cycles, dut.latency)
    np.testing.assert_array_equal(np.diff(timed.in_cycles), dut.initiation_interval)
    Fragment.get(copy, None)  # built for its latency only


def test_at_least_a_constant_is_the_comparison():
    """``at_least`` (a threshold against a constant as AND/OR logic, no carry chain) equals
    ``s >= t`` for every value of unsigned and signed sums and thresholds in and out of range;
    a deliberately shifted reference fails."""
    from amaranth.hdl import signed
    from amaranth.sim import Simulator

    from bitfab.hw.datapath import at_least
    cases = [(shape, t) for shape in (unsigned(1), unsigned(4), signed(1), signed(3), signed(5))
             for t in range(-20, 21)]
    m = Module()
    sigs = {shape: Signal(shape, name=f"s_{shape.width}_{int(shape.signed)}")
            for shape, _ in cases}
    outs = []
    for shape, t in cases:
        o = Signal(name=f"ge{len(outs)}")
        m.d.comb += o.eq(at_least(sigs[shape], t))
        outs.append(o)
    got, want = [], []

    async def bench(ctx):
        for v in range(32):
            for shape, s in sigs.items():
                lo = -(1 << (shape.width - 1)) if shape.signed else 0
                ctx.set(s, lo + v % (1 << shape.width))
            for (shape, t), o in zip(cases, outs):
                x = ctx.get(sigs[shape])
                got.append(ctx.get(o))
                want.append(int(x >= t))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(got, want)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, np.roll(want, 1))
