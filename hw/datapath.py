"""The arithmetic of every datapath: per-channel terms, lane products and output stages.

One layer contract, five datapaths. Every channel's accumulator is written as

    acc[o] = scale * S[o] + offset[o],    S[o] = sum(terms) - sum(negated)

and ``S`` is built by :func:`bitfab.hw.adder_tree.sum_terms`, so the structured adder trees of
that module are used everywhere. ``scale`` is 1 for integer inputs and 2 for bipolar inputs:
a bipolar value ``x = 2c - 1`` (``c`` the code bit) times a weight ``w`` is
``2 |w| t - |w|`` with ``t = c`` for ``w > 0`` and ``t = ~c`` for ``w < 0``, so every bipolar
term is a non-negative ``|w| * t`` (an XNOR bit for binary weights: the popcount) and
``offset[o] = bias[o] - sum_i |w[o, i]|`` (``bias - N`` for binary weights).

- *unrolled* (:func:`unrolled_terms`): weights are Python constants. A zero weight adds no term
  (skip), ``+-1`` adds or subtracts the input, ``+-2**e`` adds a shifted input (wiring), a lut
  weight adds a constant product that is built once per input and dictionary magnitude and
  shared by every channel (canonical signed digits, so a power of two is wiring), an int weight
  is a plain multiplication (the baseline).
- *folded* (:func:`lane_terms`): weights are codes read from memory (see
  :attr:`bitfab.hw.config.LayerConfig.weight_code_bits`).

The output stage (:func:`output_stage`) compares ``S`` with thresholds moved into its domain
(``S >= ceil((T - offset) / scale)``, so a popcount is compared directly, FINN style), or
computes ``acc`` and requantizes it (multiply, floor shift with rounding offset, clamp).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned

from bitfab.model import Dense, signed_bits, unsigned_bits

from .adder_tree import sum_terms

__all__ = ["csd", "const_mul", "unrolled_terms", "lane_terms", "output_stage", "moved_thresholds",
           "pick_constant", "channel_offsets", "resize", "at_least"]


def csd(n: int) -> list[tuple[int, int]]:
    """Return the canonical signed digits of ``n > 0`` as ``(shift, sign)`` pairs.

    ``n = sum(sign << shift)`` with no two adjacent non-zero digits (the non-adjacent form, which
    has the fewest non-zero digits): ``7 -> [(0, -1), (3, +1)]``, ``2**e -> [(e, +1)]``.
    """
    digits, k = [], 0
    while n:
        if n & 1:
            d = 2 - (n & 3)
            n -= d
            digits.append((k, d))
        n >>= 1
        k += 1
    return digits


def const_mul(m: Module, x: Value, c: int, name: str) -> Value:
    """Return ``x * c`` for a constant ``c >= 0`` by shift-add over its canonical signed digits.

    A power of two is a shift (wiring, no adder); ``c = 0`` is the constant 0.
    """
    if c == 0:
        return Const(0)
    digits = csd(c)
    if len(digits) == 1:
        return x << digits[0][0]
    plus = [x << k for k, s in digits if s > 0]
    minus = [x << k for k, s in digits if s < 0]
    value, _ = sum_terms(m, plus, minus, pipeline=0, name=name)
    return value


def resize(m: Module, value: Value, bits: int, name: str) -> Value:
    """Return the low ``bits`` bits of ``value`` in two's complement (extended first)."""
    value = Value.cast(value)
    wide = Signal(signed(max(bits, len(value) + 1)), name=name)
    m.d.comb += wide.eq(value)
    return wide[:bits]


def _abs_sign(w: int) -> tuple[int, bool]:
    return abs(int(w)), int(w) < 0


def channel_offsets(layer: Dense) -> tuple[int, list[int]]:
    """Return ``(scale, offsets)`` of the affine map ``acc = scale * S + offset`` per channel."""
    bias = [int(b) for b in layer.bias]
    if layer.input.kind == "bipolar":
        mag = abs(layer.weights).sum(axis=1)
        return 2, [b - int(s) for b, s in zip(bias, mag)]
    return 1, bias


def unrolled_terms(m: Module, layer: Dense, o: int, xs: list, cache: dict
                   ) -> tuple[list, list]:
    """Return ``(terms, negated)`` of channel ``o`` with constant weights.

    ``xs`` holds the input elements: code bits for a bipolar input, values (signed where the
    format is) otherwise. ``cache`` is shared by all channels of a layer, so a lut input's
    constant product is built once and reused.
    """
    terms, negated = [], []
    row = layer.weights[o]
    enc = layer.encoding
    if layer.input.kind == "bipolar":
        for i, w in enumerate(row):
            if w == 0:
                continue
            mag, neg = _abs_sign(w)
            t = ~xs[i] if neg else xs[i]
            if mag & (mag - 1) == 0:
                terms.append(t << (mag.bit_length() - 1))  # |w| = 2**e: wiring
            else:
                terms.append(Mux(t, mag, 0))
        return terms, negated
    term_of = _UNROLLED[enc.kind]
    for i, w in enumerate(row):
        if w == 0:
            continue  # skip: a zero weight produces no hardware
        mag, neg = _abs_sign(w)
        term = term_of(m, enc, xs[i], i, int(w), mag, cache)
        if term is None:  # a signed product: its sign is in the term
            terms.append(xs[i] * Const(int(w), signed(enc.bits)))
            continue
        (negated if neg else terms).append(term)
    return terms, negated


def _lut_product(m: Module, enc, x, i: int, w: int, mag: int, cache: dict):
    key = (i, mag)
    if key not in cache:
        cache[key] = const_mul(m, x, mag, f"x{i}_mul{mag}")
    return cache[key]


#: encoding kind -> the unrolled term of ``|w| * x`` with a constant weight (None: ``x * w``, a
#: multiplier, the int baseline)
_UNROLLED = {
    "binary": lambda m, enc, x, i, w, mag, cache: x,
    "ternary": lambda m, enc, x, i, w, mag, cache: x,
    "pow2": lambda m, enc, x, i, w, mag, cache: x << (mag.bit_length() - 1),
    "lut": _lut_product,
    "int": lambda m, enc, x, i, w, mag, cache: None,
}


def lut_lane_products(m: Module, layer: Dense, x: Value, name: str) -> dict:
    """Return ``{|d|: x * |d|}`` for the dictionary magnitudes of a lut layer (one lane input).

    Shared by every PE that reads this lane: each lane input is multiplied once per magnitude.
    """
    mags = sorted({abs(d) for d in layer.encoding.dictionary})
    return {mag: const_mul(m, x, mag, f"{name}_mul{mag}") for mag in mags}


def lane_terms(layer: Dense, code: Value, x: Value, products: dict | None
               ) -> tuple[list, list]:
    """Return ``(terms, negated)`` of one folded lane: weight ``code`` (from memory) times ``x``.

    ``x`` is the code bit for a bipolar input, the value otherwise; ``products`` are the lut
    lane products of :func:`lut_lane_products` (lut with integer input only).
    """
    return _LANE[layer.encoding.kind](layer.encoding, code, x, layer.input.kind == "bipolar",
                                      products)


def _binary_lane(enc, code, x, bipolar, products):
    if bipolar:
        return [~(code[0] ^ x)], []  # XNOR bit: the popcount's input
    return [Mux(code[0], x, 0)], [Mux(code[0], 0, x)]


def _ternary_lane(enc, code, x, bipolar, products):
    pos, neg = code[0], code[1]
    if bipolar:
        return [(pos & x) | (neg & ~x)], []
    return [Mux(pos, x, 0)], [Mux(neg, x, 0)]


def _pow2_lane(enc, code, x, bipolar, products):
    nz, neg = code[0], code[1]
    exp = code[2:]
    if bipolar:
        t = nz & (x ^ neg)
        return [(t << exp) << enc.e_min], []
    v = (x << exp) << enc.e_min
    return [Mux(nz & ~neg, v, 0)], [Mux(nz & neg, v, 0)]


def _lut_lane(enc, code, x, bipolar, products):
    d = enc.dictionary
    neg = Array(Const(int(v < 0)) for v in d)[code]
    if bipolar:
        mag = Array(Const(abs(v), Shape.cast(range(abs(v) + 1))) for v in d)[code]
        return [Mux(x ^ neg, mag, 0)], []
    prod = Array(products[abs(v)] for v in d)[code]
    return [Mux(neg, 0, prod)], [Mux(neg, prod, 0)]


def _int_lane(enc, code, x, bipolar, products):
    w = code.as_signed()
    if bipolar:
        neg = code[-1]
        return [Mux(x ^ neg, abs(w), 0)], []
    return [x * w], []


#: encoding kind -> the folded lane: weight ``code`` (from memory, the encoding's ``codes``)
#: times ``x``
_LANE = {"binary": _binary_lane, "ternary": _ternary_lane, "pow2": _pow2_lane, "lut": _lut_lane,
         "int": _int_lane}


def _pick(values: list[int], sel: Value | None) -> Value:
    """A constant (``sel`` None: ``values[0]``) or a table of constants indexed by ``sel``."""
    lo, hi = min(values), max(values)
    shape = signed(signed_bits(lo, hi)) if lo < 0 else unsigned(unsigned_bits(hi))
    if sel is None or len(set(values)) == 1:
        return Const(values[0], shape)
    # multiplexers, not an Array: Amaranth writes a constant Array as an ``always @*`` case
    # block, which Icarus leaves at X until its selector changes (the folded layers' first
    # vectors read X there); continuous assignments have no such start-up race. A balanced tree
    # on the bits of ``sel``, not a chain: the Amaranth simulator compiles a chain of 50-odd
    # nested multiplexers (a folded layer of 64 channels at pe 1) past Python's nesting limit.
    # A ``sel`` past the last value reads the last value.
    k = max(len(values) - 1, 1).bit_length()
    level = [Const(v, shape) for v in values + [values[-1]] * ((1 << k) - len(values))]
    for b in range(k):
        level = [Mux(sel[b], level[2 * i + 1], level[2 * i]) if b < len(sel) else level[2 * i]
                 for i in range(len(level) // 2)]
    out = level[0]
    if len(sel) > k:
        out = Mux(sel[k:] != 0, Const(values[-1], shape), out)
    return out


def pick_constant(values: list[int], sel: Value | None) -> Value:
    """A constant (``sel`` None: ``values[0]``) or a table of integer constants indexed by
    ``sel`` (a read-only table in logic: yosys maps it to LUTs)."""
    return _pick(values, sel)


def moved_thresholds(layer: Dense, channels=None) -> list[list[int]]:
    """Return the thresholds of a threshold output stage moved into the domain of the sum ``S``
    (``acc = scale * S + offset[channel]``), per channel of ``channels`` (None: every channel):
    ``acc >= T  <=>  S >= ceil((T - off) / scale)`` (direction +1) and ``acc <= T  <=>  S <=
    floor((T - off) / scale)`` (direction -1)."""
    stage = layer.output
    scale, offsets = channel_offsets(layer)
    t, d = stage.thresholds, stage.direction
    channels = range(t.shape[0]) if channels is None else channels
    return [[-((offsets[c] - int(t[c, k])) // scale) if d[c] > 0
             else (int(t[c, k]) - offsets[c]) // scale for k in range(stage.count)]
            for c in channels]


def at_least(s: Value, t: int) -> Value:
    """Return ``s >= t`` for a constant ``t`` as AND/OR logic over the bits of ``s`` (from the
    lowest up: ``ge_i = s_i & ge_(i-1)`` where bit ``i`` of ``t`` is 1, ``s_i | ge_(i-1)`` where
    it is 0; a signed ``s`` compares in offset binary). yosys maps ``>=`` to a carry chain,
    which LUT mapping cannot merge with the logic around it: a threshold stage of a narrow sum
    (a residual add's) then costs a chain per threshold instead of a few LUTs per code bit."""
    shape = Value.cast(s).shape()
    w = shape.width
    lo = -(1 << (w - 1)) if shape.signed else 0
    if t <= lo:
        return Const(1, 1)
    if t > lo + (1 << w) - 1:
        return Const(0, 1)
    u = t - lo
    bits = Value.cast(s).as_unsigned()
    if shape.signed:
        bits = Cat(bits[:w - 1], ~bits[w - 1])
    ge = Const(1, 1)
    for i in range(w):
        ge = (bits[i] & ge) if (u >> i) & 1 else (bits[i] | ge)
    return ge


def output_stage(m: Module, layer: Dense, s: Value, channels: list[int], sel: Value | None,
                 name: str) -> Value:
    """Return the output code (``layer.out_bits`` wide) of the sum ``s`` of a channel.

    ``channels`` lists the channels this hardware serves: one (unrolled) or one per neuron fold
    (folded, selected by ``sel``). ``acc = scale * s + offset[channel]``.
    """
    stage = layer.output
    scale, offsets = channel_offsets(layer)
    off = [offsets[c] for c in channels]
    if stage.kind == "threshold":
        d = stage.direction
        moved_all = moved_thresholds(layer, channels)
        bits = []
        for k in range(stage.count):
            moved = [row[k] for row in moved_all]
            dirs = {int(d[c]) for c in channels}
            th = _pick(moved, sel)
            if isinstance(th, Const) and len(dirs) == 1:
                # a constant threshold: AND/OR logic, which LUT mapping merges with the count
                bits.append(at_least(s, th.value) if dirs == {1} else ~at_least(s, th.value + 1))
            elif dirs == {1}:
                bits.append(s >= th)
            elif dirs == {-1}:
                bits.append(s <= th)
            else:
                up = _pick([int(d[c] > 0) for c in channels], sel)
                bits.append(Mux(up, s >= th, s <= th))
        y, _ = sum_terms(m, bits, pipeline=0, name=f"{name}_count")
        return resize(m, y, layer.out_bits, f"{name}_y")
    acc = (s << 1 if scale == 2 else s) + _pick(off, sel)
    if stage.kind == "none":
        return resize(m, acc, layer.acc_bits, f"{name}_acc")
    assert stage.kind == "requant"
    mult = _pick([int(stage.multiplier[c]) for c in channels], sel)
    product = acc * mult + stage.offset
    shifted = Signal(signed(len(product) + 1), name=f"{name}_shifted")
    m.d.comb += shifted.eq(product >> stage.shift)  # arithmetic: product is signed
    clamped = Mux(shifted < stage.lo, stage.lo, Mux(shifted > stage.hi, stage.hi, shifted))
    return resize(m, clamped, stage.bits, f"{name}_y")
