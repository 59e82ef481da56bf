"""Adder trees and popcounts: ``sum(terms) - sum(negated) + const`` as pipelined hardware.

Every datapath in :mod:`bitfab.hw` ends in a multi-operand sum (a popcount of XNOR bits, an
add/subtract/skip of inputs, a shift-add of shifted inputs). :func:`sum_terms` builds that sum as
a balanced tree of two-input adders, each sized to the exact range of its operands, with an
optional register stage after every ``pipeline`` adder levels.

The public interface (shared with the datapath generators, which only call it):

- :func:`sum_terms` ``(m, terms, negated, *, const, pipeline, en, domain, name)``
  ``-> (value, latency)``
- :func:`popcount` ``(m, bits, **same) -> (value, latency)``
- :func:`tree_latency` ``(n_terms, pipeline) -> latency`` (callers must still use the returned one)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from amaranth.hdl import Const, Module, Shape, Signal, Value

__all__ = ["sum_terms", "popcount", "tree_latency", "value_range"]


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


def _tree_levels(n: int) -> int:
    """Adder levels of a balanced binary tree over ``n`` operands: ``ceil(log2(n))``."""
    return max(0, (n - 1).bit_length())


def tree_latency(n_terms: int, pipeline: int) -> int:
    """Return the latency of :func:`sum_terms` over ``n_terms`` non-constant terms.

    ``latency = ceil(levels / pipeline)`` with ``levels = ceil(log2(n_terms))`` adder levels
    (0 when ``pipeline == 0`` or ``n_terms <= 1``). A guide for planning only: callers of
    :func:`sum_terms` use the latency it returns.
    """
    n_terms = operator.index(n_terms)
    pipeline = operator.index(pipeline)
    if pipeline == 0:
        return 0
    return -(-_tree_levels(n_terms) // pipeline)


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
        The number of register stages between the terms and ``result``
        (``ceil(ceil(log2(n)) / K)`` for ``n`` non-empty operands, ``0`` when ``K == 0``).

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

    nodes = []
    for term in terms:
        if len(term) == 0:
            continue
        lo, hi = value_range(term)
        nodes.append(_Node(term, lo, hi))
    for term in negated:
        if len(term) == 0:
            continue
        lo, hi = value_range(term)
        nodes.append(_Node(-term, -hi, -lo))
    if not nodes:
        return Const(const), 0

    sub = Module()
    m.submodules += sub
    levels = _tree_levels(len(nodes))
    latency = 0
    level = 0
    while len(nodes) > 1:
        level += 1
        paired = []
        for i in range(0, len(nodes) - 1, 2):
            a, b = nodes[i], nodes[i + 1]
            # The constant rides on the first adder of the first level: no extra level for it.
            c = const if level == 1 and i == 0 else 0
            lo, hi = a.lo + b.lo + c, a.hi + b.hi + c
            s = Signal(_range_shape(lo, hi), name=f"{name}_l{level}_{i // 2}")
            sub.d.comb += s.eq(a.value + b.value + c if c else a.value + b.value)
            paired.append(_Node(s, lo, hi))
        if len(nodes) % 2:
            paired.append(nodes[-1])
        nodes = paired
        if pipeline and (level % pipeline == 0 or level == levels):
            latency += 1
            nodes = [_register(sub, node, en, domain, f"{name}_p{latency}_{j}")
                     for j, node in enumerate(nodes)]
    (root,) = nodes
    if levels == 0 and const:
        root = _Node(root.value + const, root.lo + const, root.hi + const)
    result = Signal(_range_shape(root.lo, root.hi), name=name)
    sub.d.comb += result.eq(root.value)
    return result, latency


def _register(m: Module, node: _Node, en: Value | None, domain: str, name: str) -> _Node:
    reg = Signal(_range_shape(node.lo, node.hi), name=name)
    if en is None:
        m.d[domain] += reg.eq(node.value)
    else:
        with m.If(en):
            m.d[domain] += reg.eq(node.value)
    return _Node(reg, node.lo, node.hi)


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
