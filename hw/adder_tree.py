"""Adder trees and popcounts: ``sum(terms) - sum(negated) + const`` as pipelined hardware.

Every datapath in :mod:`bitfab.hw` ends in a multi-operand sum (a popcount of XNOR bits, an
add/subtract/skip of inputs, a shift-add of shifted inputs). :func:`sum_terms` builds it so that
synthesis keeps its structure and maps it near the iCE40 bound (one LUT4 + carry cell removes one
bit), where yosys would merge a plain ``sum()`` into one ``$macc`` at ~1.9 LUT4 per input bit:

- 1-bit terms are packed three at a time into full adders (LUT logic, where inverting an input
  is free, so XNOR bits with constant weights cost nothing extra);
- the rest is a tree of carry-chain adders, pairing nodes of similar range level by level; each
  adder takes one more 1-bit term as its carry-in, so a level of ``k``-bit adders consumes
  ``2k + 1`` bits with ``k`` LUT4s;
- optionally (:data:`CHAIN_CELLS`, off by default) the unsigned adders of a level share carry
  chains: one logic cell between two adders ends the lower one and starts the upper one with
  its carry-in bit, where separate chains need a feed-out and a feed-in cell on iCE40;
- every intermediate sum carries a ``keep`` attribute, which stops yosys's ``alumacc`` from
  merging the adders back into one ``$macc``;
- a register stage after every ``pipeline`` levels (registers load only where ``en`` is 1);
- sums over the same input bits in one module (the channels of a binary layer: ``x_i`` or
  ``~x_i`` of one input vector) share the total ``T = sum(x_i)``: a channel then counts only the
  smaller of its plain and inverted bits ``P``/``N`` and returns ``2 sum(P) - T + |N|`` or
  ``T - 2 sum(N) + |N|``, about half the adders.

Measured by ``bench/hw_area.py``; the numbers are in docs/results/adder-trees.md.

The public interface (shared with the datapath generators, which only call it):

- :func:`sum_terms` ``(m, terms, negated, *, const, pipeline, en, domain, name)``
  ``-> (value, latency)``
- :func:`popcount` ``(m, bits, **same) -> (value, latency)``
- :func:`tree_latency` ``(n_terms, pipeline) -> latency`` (callers must still use the returned one)
"""

from __future__ import annotations

import contextlib
import operator
import weakref
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Shape, Signal, Value

# Only to recognise ``x`` and ``~x`` bits of the same input across calls (shared totals);
# amaranth is pinned to 0.5.x, where these are the classes of ``~a`` and ``a[i]``.
from amaranth.hdl._ast import Operator as _Operator
from amaranth.hdl._ast import Slice as _Slice

__all__ = ["sum_terms", "popcount", "tree_latency", "value_range", "structure"]


def value_range(value: Value) -> tuple[int, int]:
    """Return ``(lo, hi)``, the range of values that ``value``'s shape can hold."""
    shape = value.shape()
    if shape.signed:
        return -(1 << (shape.width - 1)) if shape.width else 0, \
               (1 << (shape.width - 1)) - 1 if shape.width else 0
    return 0, (1 << shape.width) - 1


def _range_shape(lo: int, hi: int) -> Shape:
    """The smallest shape that holds every integer in ``[lo, hi]`` (signed when ``lo < 0``)."""
    return Shape.cast(range(lo, hi + 1))


@dataclass(frozen=True)
class _Node:
    """One operand of the tree: a value and the exact range of integers it can carry."""
    value: Value
    lo: int
    hi: int


def tree_latency(n_terms: int, pipeline: int) -> int:
    """Return the latency of :func:`popcount` over ``n_terms`` bits.

    ``ceil(levels / pipeline)`` (0 when ``pipeline == 0``), where ``levels`` is the depth of
    the tree: one level of full adders, then ``ceil(log2(n_fa))`` levels of carry-chain adders
    (about ``ceil(log2(n_terms))`` in all). A planning aid; callers of :func:`sum_terms` use
    the latency it returns.
    """
    n_terms = operator.index(n_terms)
    pipeline = operator.index(pipeline)
    if n_terms < 0 or pipeline < 0:
        raise ValueError(f"n_terms and pipeline must be non-negative, not {n_terms}, {pipeline}")
    if n_terms == 0:
        return 0
    _, latency = _tree(_Builder(None), [None] * n_terms, [], 0, pipeline)
    return latency


def _check_args(terms, negated, const, pipeline, en, domain, name):
    try:
        const = operator.index(const)
    except TypeError:
        raise TypeError(f"const must be an integer, not {const!r}") from None
    try:
        pipeline = operator.index(pipeline)
    except TypeError:
        raise TypeError(f"pipeline must be a non-negative integer, not {pipeline!r}") from None
    if pipeline < 0:
        raise ValueError(f"pipeline must be a non-negative integer, not {pipeline!r}")
    if not isinstance(domain, str) or not domain:
        raise TypeError(f"domain must be a non-empty string, not {domain!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, not {name!r}")
    if en is not None:
        try:
            en = Value.cast(en)
        except TypeError:
            raise TypeError(f"en must be a 1-bit Amaranth value or None, not {en!r}") from None
        if len(en) != 1:
            raise ValueError(f"en must be a 1-bit value, not {len(en)} bits wide")

    def values(seq, what):
        if isinstance(seq, Value) or hasattr(seq, "as_value"):
            raise TypeError(f"{what} must be a sequence of Amaranth values, not a single "
                            f"value {seq!r} (use popcount() to sum the bits of one value)")
        out = []
        for i, term in enumerate(seq):
            if isinstance(term, bool) or isinstance(term, int):
                raise TypeError(f"{what}[{i}] must be an Amaranth value, not the integer "
                                f"{term!r} (fold constants into const=)")
            try:
                out.append(Value.cast(term))
            except TypeError:
                raise TypeError(f"{what}[{i}] must be an Amaranth value, not {term!r}") from None
        return out

    return values(terms, "terms"), values(negated, "negated"), const, pipeline, en


def sum_terms(m: Module, terms=(), negated=(), *, const: int = 0, pipeline: int = 0,
              en: Value | None = None, domain: str = "sync", name: str = "sum",
              ) -> tuple[Value, int]:
    """Build hardware for ``sum(terms) - sum(negated) + const``; return ``(result, latency)``.

    Parameters
    ----------
    m : Module
        The module that receives the adder tree (as an anonymous submodule, so that a caller's
        ``m.If`` context does not gate it).
    terms, negated : sequence of Value
        Amaranth values of any width and signedness (1-bit allowed, e.g. XNOR bits or shifted
        inputs). Zero-width values contribute nothing.
    const : int
        A constant added to the sum.
    pipeline : int
        ``K``: a register stage after every ``K`` adder levels (and after the last level when the
        depth is not a multiple of ``K``). ``0`` builds a purely combinational tree.
    en : Value or None
        Clock enable of the register stages: they load only where ``en`` is 1, so a stalled
        stream pipeline holds its data. ``None`` means always enabled.
    domain : str
        Clock domain of the register stages.
    name : str
        Prefix of the signal names.

    Returns
    -------
    result : Value
        A signal whose shape holds every reachable value exactly (signed if any reachable value is
        negative); ``Const(const)`` for an empty sum.
    latency : int
        The number of register stages between the terms and ``result``: ``0`` when ``K == 0``,
        else ``ceil(levels / K)`` with ``levels`` the depth of the tree (about
        ``ceil(log2(n))`` for ``n`` terms; :func:`tree_latency` for a popcount), plus one for
        a sum built over a shared total (the combining adder). Sums in one module may differ
        by a stage: callers use the value returned here.

    Notes
    -----
    A sum over at least 8 distinct bits (1-bit signals or signal slices, plain or inverted)
    whose bit set was already summed in ``m`` (same ``pipeline``, ``en`` and ``domain``) is
    built over a total shared with the earlier sums; the first such sum is built as a plain
    tree. The result is the same function either way.

    Raises
    ------
    TypeError
        A term that is not an Amaranth value, a non-integer ``const`` or ``pipeline``, an ``en``
        that is not a value.
    ValueError
        A negative ``pipeline`` or an ``en`` wider than 1 bit.
    """
    terms, negated, const, pipeline, en = _check_args(
        terms, negated, const, pipeline, en, domain, name)

    if BIT_HEAP and sum(len(_strip_shift(t)) > 1 and _decomposable(t)
                        for t in (*terms, *negated)) >= _HEAP_MIN_TERMS:
        return _heap_sum(m, terms, negated, const, pipeline, en, domain, name)

    # 1-bit terms are counted (full adders, carry-ins); wider ones are operands of the adders.
    # A negated bit is an inverted bit minus one (-b = ~b - 1), so it is counted too.
    inverted, plain, wide = [], [], []
    terms = [_strip_shift(t) for t in terms]
    negated = [_strip_shift(t) for t in negated]
    for term in terms:
        if len(term) == 0:
            continue
        if len(term) == 1:
            if term.shape().signed:  # a signed bit s is -u with u its bit pattern
                u = term.as_unsigned()
                inverted.append(~u)
                const -= 1
            else:
                plain.append(term)
        else:
            lo, hi = value_range(term)
            wide.append(_Node(term, lo, hi))
    for term in negated:
        if len(term) == 0:
            continue
        if len(term) == 1:
            if term.shape().signed:
                plain.append(term.as_unsigned())
            else:
                inverted.append(~term)
                const -= 1
        else:
            lo, hi = value_range(term)
            wide.append(_Node(-term, -hi, -lo))
    if not (inverted or plain or wide):
        return Const(const), 0

    sub = Module()
    m.submodules += sub
    builder = _Builder(sub, en, domain, name)
    bits = inverted + plain
    # Full adders are LUT logic, where an inversion is free; a carry-in enters a carry chain,
    # where it is not: inverted bits go to the full adders first.
    parsed = [_bit_base(b) for b in bits]
    order = sorted(range(len(bits)), key=lambda i: not (parsed[i] and parsed[i][2]))
    bits = [bits[i] for i in order]
    shared = None
    if not wide:
        shared = _shared_sum(m, builder, [parsed[i] for i in order], const, pipeline, en, domain)
    if shared is not None:
        root, latency = shared
    else:
        root, latency = _tree(builder, bits, wide, const, pipeline)
    result = Signal(_range_shape(root.lo, root.hi), name=name)
    sub.d.comb += result.eq(root.value)
    return result, latency


#: Build sums with wide terms as bit heaps (:func:`_heap_sum`); ``False`` (the default) builds
#: them as trees of wide adders. Off by default: the heap cuts LUT4 and carries (ternary 64 x 8:
#: -24 %, -42 %) but at pipeline 2 it registers more bits per stage and placed about 9 % more
#: logic cells (docs/results/datapaths.md, bench/hw_placed.py)
BIT_HEAP = False
#: The fewest wide terms worth a heap (two or so are one adder either way).
_HEAP_MIN_TERMS = 4


def _decomposable(term: Value) -> bool:
    """A term whose bits go to the bit heap: anything but a product (``x * w``, the int
    multiply baseline, which stays one operand of the adders)."""
    while isinstance(term, _Operator) and term.operator == "<<" \
            and isinstance(term.operands[1], Const):
        term = term.operands[0]
    return not (isinstance(term, _Operator) and term.operator == "*")


def _heap_bits(sub: Module, term: Value, negate: bool, name: str) -> tuple[list, int]:
    """Return ``(bits, const)``: ``term`` (or ``-term``) as ``sum(2**col * bit) + const``.

    ``bits`` holds ``(col, bit)`` with ``bit`` a 1-bit value, inverted where its weight is
    negative (``-2**c b = 2**c ~b - 2**c``: the sign bit of a signed term, every bit of a
    negated one), so every heap bit has a positive weight. Shifts by constants are columns.
    """
    shift = 0
    while isinstance(term, _Operator) and term.operator == "<<" \
            and isinstance(term.operands[1], Const):
        shift += term.operands[1].value
        term = term.operands[0]
    shape = term.shape()
    if not isinstance(term, Signal):
        sig = Signal(shape, name=name)
        sub.d.comb += sig.eq(term)
        term = sig
    bits, const = [], 0
    for j in range(shape.width):
        weight = 1 << (j + shift)
        neg = (shape.signed and j == shape.width - 1) != negate
        if neg:
            bits.append((j + shift, ~term[j]))
            const -= weight
        else:
            bits.append((j + shift, term[j]))
    return bits, const


def _heap_sum(m: Module, terms, negated, const: int, pipeline: int, en, domain: str,
              name: str) -> tuple[Value, int]:
    """Build ``sum(terms) - sum(negated) + const`` as one weighted bit heap.

    Every term is split into its bits, each at the column of its weight (a constant shift moves
    the column, a negative weight is an inverted bit and a constant), so the bits of all inputs
    and weights of a channel form one heap. Each column is a popcount (:func:`_tree`: full adders
    in LUTs, where the inversions are free, then carry-chain adders); the column counts, shifted
    to their columns, and the constant are added by one more tree of carry-chain adders. Products
    (``x * w``) stay whole operands of that last tree.
    """
    sub = Module()
    m.submodules += sub
    builder = _Builder(sub, en, domain, name)
    columns: dict[int, list] = {}
    wide = []
    for k, (term, negate) in enumerate([(t, False) for t in terms] +
                                       [(t, True) for t in negated]):
        if len(term) == 0:
            continue
        if not _decomposable(term):
            term = _strip_shift(term)
            lo, hi = value_range(term)
            wide.append(_Node(-term, -hi, -lo) if negate else _Node(term, lo, hi))
            continue
        bits, c = _heap_bits(sub, term, negate, f"{name}_t{k}")
        const += c
        for col, bit in bits:
            columns.setdefault(col, []).append(bit)
    counts = []
    for col in sorted(columns):
        bits = columns[col]
        # inverted bits first: they go to the full adders, where an inversion is free
        bits = sorted(bits, key=lambda b: not (isinstance(b, _Operator) and b.operator == "~"))
        node, lat = _tree(builder, bits, [], 0, pipeline)
        counts.append((col, node, lat))
    lat_c = max((lat for _, _, lat in counts), default=0)
    leaves = []
    for col, node, lat in counts:
        for _ in range(lat, lat_c):
            node = builder.register(node)
        value = Cat(Const(0, col), node.value) if col else node.value
        leaves.append(_Node(value, node.lo << col, node.hi << col))
    for _ in range(lat_c):  # products wait for the column counts
        wide = [builder.register(n) for n in wide]
    root, lat_f = _tree(builder, [], leaves + wide, const, pipeline)
    result = Signal(_range_shape(root.lo, root.hi), name=name)
    sub.d.comb += result.eq(root.value)
    return result, lat_c + lat_f


def _zext(value: Value, width: int) -> Value:
    """``value``'s bits (unsigned), zero-extended to ``width``."""
    value = value.as_unsigned()
    return Cat(value, Const(0, width - len(value))) if width > len(value) else value


#: The longest shared carry chain of one tree level, in cells; ``0`` (the default) builds every
#: adder as its own chain. Off by default, for two reasons measured on iCE40
#: (docs/results/datapaths.md): a junction routes one net to both carry inputs of a logic cell,
#: on which nextpnr-ice40's default router (router1) does not converge (``--router router2``
#: routes it, at about 10 % lower Fmax than router1 on the designs without junctions), and
#: the carry path runs through every adder of a chain (a false path through each junction,
#: which timing analysis still counts: 0.13 ns per cell on HX8K). With chains of 24 cells a
#: binary 256 x 16 layer places 19 % fewer logic cells (1.23 -> 1.00 per synapse at pipeline 2).
CHAIN_CELLS = 0


@contextlib.contextmanager
def structure(*, bit_heap: bool | None = None, chain_cells: int | None = None):
    """Build the sums made inside the ``with`` block with these structure options (``None``:
    unchanged): :data:`BIT_HEAP` and :data:`CHAIN_CELLS`. Restored on exit."""
    global BIT_HEAP, CHAIN_CELLS
    saved = BIT_HEAP, CHAIN_CELLS
    if chain_cells is not None:
        chain_cells = operator.index(chain_cells)
        if chain_cells < 0:
            raise ValueError(f"chain_cells must be a non-negative integer, not {chain_cells}")
    try:
        if bit_heap is not None:
            BIT_HEAP = bool(bit_heap)
        if chain_cells is not None:
            CHAIN_CELLS = chain_cells
        yield
    finally:
        BIT_HEAP, CHAIN_CELLS = saved


def _strip_shift(value: Value) -> Value:
    """Return ``value`` with shifts by constant amounts turned into exact-width ``shift_left``.

    ``x << Const(k)`` is ``2**len(k) - 1`` bits wider than ``x`` in Amaranth; the range of the
    tree's nodes comes from shapes, so a term ``~x << 0`` (a weight of 1) would otherwise count
    as a 2-bit operand and miss the full-adder and carry-in paths of a 1-bit term.
    """
    shift = 0
    while isinstance(value, _Operator) and value.operator == "<<" \
            and isinstance(value.operands[1], Const):
        shift += value.operands[1].value
        value = value.operands[0]
    return value.shift_left(shift) if shift else value


#: The smallest bit count worth sharing a total over (below it the combining adder costs more).
_SHARE_MIN_BITS = 8
#: Per module: the bit sets summed so far, and the shared totals built for repeated ones.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bit_base(value: Value):
    """Return ``(key, base, inverted)`` for a bit that is a 1-bit signal or signal slice, maybe
    inverted (``~x``); ``None`` for any other value (which is then never shared)."""
    inverted = False
    while isinstance(value, _Operator) and value.operator == "~" and len(value.operands) == 1:
        value = value.operands[0]
        inverted = not inverted
    if isinstance(value, Signal) and len(value) == 1 and not value.shape().signed:
        return ("signal", id(value)), value, inverted
    if isinstance(value, _Slice) and isinstance(value.value, Signal) \
            and value.stop - value.start == 1:
        return ("slice", id(value.value), value.start), value, inverted
    return None


def _shared_sum(m: Module, builder: _Builder, parsed: list, const: int, pipeline: int,
                en, domain: str):
    """Build a sum of bits over a shared total, or return ``None`` where it does not apply.

    The channels of a binary layer count XNOR bits ``x_i`` or ``~x_i`` of the same inputs. With
    ``T = sum(x_i)`` built once per layer, a channel whose plain bits are ``P`` and inverted bits
    ``N`` is ``2 sum(P) - T + |N|`` or ``T - 2 sum(N) + |N|``: it counts only the smaller of
    ``P`` and ``N``, about half of its bits. The first sum over a set of bits is built as a
    plain tree (nothing to share with yet); the second builds ``T`` and every later one reuses it.
    Latency: ``T``'s register stages plus one (the combining adder) when pipelined.
    """
    if len(parsed) < _SHARE_MIN_BITS or any(p is None for p in parsed):
        return None
    keys = frozenset(p[0] for p in parsed)
    if len(keys) != len(parsed):
        return None  # a repeated input: not a set of distinct bits
    registry = _SHARED.setdefault(m, {})
    key = (keys, pipeline, id(en), domain)
    entry = registry.get(key)
    if entry is None:
        registry[key] = {"en": en, "total": None}
        return None
    if entry["total"] is None:
        sub = Module()
        m.submodules += sub
        entry["builder"] = _Builder(sub, en, domain, f"shared_total{len(registry)}")
        entry["total"] = _tree(entry["builder"], [p[1] for p in parsed], [], 0, pipeline)
    total, lat_t = entry["total"]
    plain = [p[1] for p in parsed if not p[2]]
    inverted = [p[1] for p in parsed if p[2]]
    side = plain if len(plain) <= len(inverted) else inverted
    offset = len(inverted) + const
    # One subtractor combines the part and the total: the offset goes into the part's tree
    # (``2 P + offset = 2 (P + offset // 2) + offset % 2``, the low bit is wiring), so the
    # combining stage is one carry chain, not a negation, an add and a constant add in series.
    if side is plain:
        half, low = offset // 2, offset % 2  # result = (2 (P + half) + low) - T
    else:
        half, low = (-offset) // 2, (-offset) % 2  # result = T - (2 (N + half) + low)
    if side:
        part, lat_p = _tree(builder, side, [], half, pipeline)
    else:
        part, lat_p = _Node(Const(half), half, half), 0
    for _ in range(lat_p, lat_t):
        part = builder.register(part)
    # a total that must wait for a deeper part waits once for every channel (shared registers)
    delayed = entry.setdefault("delayed", [total])
    while len(delayed) <= lat_p - lat_t:
        delayed.append(entry["builder"].register(delayed[-1]))
    total = delayed[max(0, lat_p - lat_t)]
    twice = Cat(Const(low, 1), part.value)
    if part.lo < 0:
        twice = twice.as_signed()
    twice = _Node(twice, 2 * part.lo + low, 2 * part.hi + low)
    # The operands are correlated (the part is inside the total): the sum stays in the range of
    # the bits it counts, which the interval sum of the operands would overstate.
    if side is plain:
        root = builder.sub(twice, total, bounds=(const, const + len(parsed)))
    else:
        root = builder.sub(total, twice, bounds=(const, const + len(parsed)))
    latency = max(lat_t, lat_p)
    if pipeline:
        root = builder.register(root)
        latency += 1
    return root, latency


class _Builder:
    """Makes the adders and registers of a tree; with ``m=None`` it only tracks ranges."""

    def __init__(self, m: Module | None, en=None, domain="sync", name="sum"):
        self._m, self._en, self._domain, self._name = m, en, domain, name
        self._count = 0

    def _signal(self, lo, hi, what):
        self._count += 1
        # keep: yosys would otherwise merge the whole tree into one $macc (alumacc) and map it
        # to ~1.9 LUT4 per input bit; kept, every adder is one carry chain.
        return Signal(_range_shape(lo, hi), name=f"{self._name}_{what}{self._count}",
                      attrs={"keep": 1})

    def add(self, operands, cin=None, bounds=None) -> _Node:
        """Add ``operands`` (and the bit ``cin``); ``bounds``: the known ``(lo, hi)`` of the
        sum where it is tighter than the operands' ranges say (correlated operands)."""
        lo = sum(op.lo for op in operands)
        hi = sum(op.hi for op in operands)
        if cin is not None:
            hi += 1
        if bounds is not None:
            lo, hi = bounds
        if self._m is None:
            return _Node(None, lo, hi)
        value = operands[0].value
        for op in operands[1:]:
            value = value + op.value
        if cin is not None:
            value = value + cin.value
        s = self._signal(lo, hi, "fa" if all(op.hi - op.lo == 1 for op in operands) else "add")
        self._m.d.comb += s.eq(value)
        return _Node(s, lo, hi)

    def add_level(self, pairs) -> list[_Node]:
        """Add each ``(operands, cin)`` of one tree level; return the sums in order.

        Unsigned pairs are built as shared carry chains (:data:`CHAIN_CELLS`): the adders sit
        one above the other in one ``$add`` of concatenated operands, and between two adders a
        *junction* bit that is the next adder's carry-in in both operands: the junction's sum
        is the lower adder's carry-out (``c ^ c ^ co = co``) and its carry is the bit itself
        (``maj(c, c, co) = c``). On iCE40 one logic cell then ends one adder and starts the
        next, where separate chains spend a feed-out and a feed-in cell (nextpnr's chain
        legalisation: a third of a binary layer's cells).
        """
        out: list = [None] * len(pairs)
        group: list = []
        cells = 0

        def flush():
            nonlocal group, cells
            if len(group) == 1:
                k, ops, cin = group[0]
                out[k] = self.add(ops, cin)
            elif group:
                for k, node in zip([g[0] for g in group], self._chain([g[1:] for g in group])):
                    out[k] = node
            group, cells = [], 0

        for k, (ops, cin) in enumerate(pairs):
            chainable = (CHAIN_CELLS and self._m is not None and len(ops) == 2
                         and all(op.lo >= 0 for op in ops))
            if not chainable:
                out[k] = self.add(ops, cin)
                continue
            width = max(len(op.value) for op in ops) + 1
            if group and cells + width > CHAIN_CELLS:
                flush()
            group.append((k, ops, cin))
            cells += width
        flush()
        return out

    def _chain(self, group) -> list[_Node]:
        """Build the adders ``group`` (``[(operands, cin)]``, unsigned) as one carry chain."""
        xs, ys, spans = [], [], []
        pos = 0
        for ops, cin in group:
            a, b = ops
            hi = a.hi + b.hi + (1 if cin is not None else 0)
            c = cin.value if cin is not None else Const(0, 1)
            xs.append(c)  # the junction below this adder: its carry-in, in both operands
            ys.append(c)
            pos += 1
            width = max(len(a.value), len(b.value))
            xs.append(_zext(a.value, width))
            ys.append(_zext(b.value, width))
            spans.append((pos, width, a.lo + b.lo, hi))
            pos += width
        xs.append(Const(0, 1))  # the top junction: the last adder's carry-out
        ys.append(Const(0, 1))
        self._count += 1
        total = Signal(pos + 1, name=f"{self._name}_chain{self._count}", attrs={"keep": 1})
        self._m.d.comb += total.eq(Cat(*xs) + Cat(*ys))
        nodes = []
        for start, width, lo, hi in spans:
            s = self._signal(lo, hi, "add")
            self._m.d.comb += s.eq(total[start:start + width + 1])
            nodes.append(_Node(s, lo, hi))
        return nodes

    def sub(self, a: _Node, b: _Node, bounds) -> _Node:
        """``a - b`` as one carry chain (``a + ~b + 1``); ``bounds``: the ``(lo, hi)`` of the
        difference (correlated operands)."""
        lo, hi = bounds
        if self._m is None:
            return _Node(None, lo, hi)
        s = self._signal(lo, hi, "sub")
        self._m.d.comb += s.eq(a.value - b.value)
        return _Node(s, lo, hi)

    def register(self, node: _Node) -> _Node:
        if self._m is None:
            return node
        reg = Signal(_range_shape(node.lo, node.hi), name=f"{self._name}_r{self._count}")
        self._count += 1
        if self._en is None:
            self._m.d[self._domain] += reg.eq(node.value)
        else:
            with self._m.If(self._en):
                self._m.d[self._domain] += reg.eq(node.value)
        return _Node(reg, node.lo, node.hi)


def _tree(builder: _Builder, bits: list, wide: list, const: int, pipeline: int
          ) -> tuple[_Node, int]:
    """Build the tree; return its root and the number of register stages.

    Structure (chosen by measurement, see docs/results/adder-trees.md): the first level packs
    the bits three at a time into full adders (2 LUT4 each); every later level adds pairs of
    nodes of similar range with a carry chain whose carry-in is one more input bit, so a level of
    ``k``-bit adders consumes ``2k + 1`` bits. ``F`` full adders are made so that the remaining
    bits are about one carry-in per adder: ``F = ceil((n_bits - n_wide + 1) / 4)``.
    """
    bit_nodes = [_Node(b, 0, 1) for b in bits]
    leaves = list(wide)
    if const:
        leaves.append(_Node(Const(const), const, const))
    n_fa = min(len(bits) // 3, max(0, -(-(len(bits) - len(leaves) + 1) // 4)))
    fa_bits, pool = bit_nodes[:3 * n_fa], bit_nodes[3 * n_fa:]
    # A tree of L leaves has L - 1 adders: bits beyond one carry-in each become leaves.
    while len(pool) > n_fa + len(leaves) - 1:
        leaves.append(pool.pop(0))

    level = latency = 0

    def stage(nodes, pool, last):
        nonlocal latency
        if pipeline and (level % pipeline == 0 or last):
            latency += 1
            return [builder.register(n) for n in nodes], [builder.register(b) for b in pool]
        return nodes, pool

    nodes = leaves
    if n_fa:
        level += 1
        nodes = [builder.add(fa_bits[i:i + 3]) for i in range(0, len(fa_bits), 3)] + nodes
        nodes, pool = stage(nodes, pool, len(nodes) == 1)
    while len(nodes) > 1:
        level += 1
        nodes = sorted(nodes, key=lambda n: n.hi - n.lo)
        paired = builder.add_level([(nodes[i:i + 2], pool.pop(0) if pool else None)
                                    for i in range(0, len(nodes) - 1, 2)])
        if len(nodes) % 2:
            paired.append(nodes[-1])
        nodes, pool = stage(paired, pool, len(paired) == 1)
    assert not pool
    return nodes[0], latency


def popcount(m: Module, bits: Value, **kwargs) -> tuple[Value, int]:
    """Build hardware that counts the 1 bits of ``bits``; return ``(count, latency)``.

    Equivalent to ``sum_terms(m, [bits[i] for i in range(len(bits))], **kwargs)``; the keyword
    arguments (``const``, ``pipeline``, ``en``, ``domain``, ``name``) are those of
    :func:`sum_terms`.
    """
    try:
        bits = Value.cast(bits)
    except TypeError:
        raise TypeError(f"bits must be an Amaranth value, not {bits!r}") from None
    kwargs.setdefault("name", "popcount")
    return sum_terms(m, [bits[i] for i in range(len(bits))], **kwargs)
