"""The design clock: the board oscillator, or a PLL (iCE40 SB_PLL40_CORE, ECP5 EHXPLLL).

:func:`plan` picks PLL dividers for a requested frequency (the closest one the PLL can make within
its VCO and phase-detector ranges, refused when that is more than :data:`TOLERANCE` off);
:func:`clock_domain` instantiates it at the top-level.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import io

from bitfab.errors import BitfabError

__all__ = ["ClockPlan", "plan", "clock_domain", "TOLERANCE", "OUTPUT_RANGE", "MARGIN",
           "frequencies", "choose_clock"]

#: the largest relative error between a requested clock and the one the PLL makes (LiteX's PLL
#: helpers use the same 1 % margin); a request further off is refused, naming the nearest one
TOLERANCE = 0.01
#: the output frequencies (Hz) each family's PLL makes (the datasheets cited below)
OUTPUT_RANGE = {"ice40": (16e6, 275e6), "ecp5": (3.125e6, 400e6)}
#: the clock chosen from a reported Fmax is at most ``(1 - MARGIN) * Fmax``: nextpnr's Fmax is
#: for one placement, seed and temperature corner, and a second place and route at the new
#: constraint moves it by a few percent either way (:func:`choose_clock`)
MARGIN = 0.15


@dataclass(frozen=True)
class ClockPlan:
    """How the design clock is made.

    Members
    -------
    f_in, f_out : float
        Oscillator and design clock (Hz); equal without a PLL.
    params : dict or None
        PLL dividers (None: the oscillator drives the design directly).
    """

    f_in: float
    f_out: float
    params: dict | None = None

    def to_json(self) -> dict:
        return {"oscillator_mhz": self.f_in / 1e6, "clock_mhz": self.f_out / 1e6,
                "pll": self.params}


def _ice40_settings(f_in: float):
    # iCE40 sysCLOCK PLL (TN1251 / FPGA-TN-02052): F_PFD = F_in / (DIVR+1) in 10..133 MHz,
    # F_VCO = F_PFD * (DIVF+1) in 533..1066 MHz (SIMPLE feedback), F_out = F_VCO / 2^DIVQ,
    # DIVQ 1..6, F_out 16..275 MHz. The same search icepll does. Yields (F_out, parameters).
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = vco / 2 ** divq
                if OUTPUT_RANGE["ice40"][0] <= f <= OUTPUT_RANGE["ice40"][1]:
                    yield f, {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                              "FILTER_RANGE": _ice40_filter(pfd)}


def _ice40_filter(pfd: float) -> int:
    for k, limit in enumerate((17e6, 26e6, 44e6, 66e6, 101e6), start=1):
        if pfd < limit:
            return k
    return 6


def _ecp5_settings(f_in: float):
    # ECP5 sysCLOCK PLL (FPGA-TN-02200): F_PFD = F_in / CLKI_DIV in 3.125..400 MHz,
    # F_out = F_PFD * CLKFB_DIV (feedback from CLKOP), F_VCO = F_out * CLKOP_DIV in 400..800 MHz.
    # Yields (F_out, parameters).
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb in range(1, 81):
            f = pfd * clkfb
            if not OUTPUT_RANGE["ecp5"][0] <= f <= OUTPUT_RANGE["ecp5"][1]:
                continue
            for clkop in range(1, 129):
                if 400e6 <= f * clkop <= 800e6:
                    yield f, {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                              "CLKOP_CPHASE": (clkop - 1) // 2}
                    break


_SETTINGS = {"ice40": (_ice40_settings, "iCE40"), "ecp5": (_ecp5_settings, "ECP5")}


def _closest(family: str, f_in: float, f_req: float) -> tuple[float, dict]:
    """The PLL setting whose output is closest to ``f_req`` (the first found on a tie)."""
    settings, title = _SETTINGS[family]
    best = None
    for f, params in settings(f_in):
        if best is None or abs(f - f_req) < abs(best[0] - f_req):
            best = (f, params)
    if best is None:
        raise BitfabError(f"the {title} PLL cannot make {f_req / 1e6:g} MHz from "
                          f"{f_in / 1e6:g} MHz")
    return best


@functools.cache
def _frequencies(family: str, f_in: float) -> tuple[float, ...]:
    return tuple(sorted({f for f, _ in _SETTINGS[family][0](f_in)}))


def frequencies(board) -> tuple[float, ...]:
    """Every design clock (Hz) ``board``'s PLL makes from its oscillator, ascending."""
    return _frequencies(board.family, float(board.clock_hz))


def choose_clock(board, fmax_hz: float, baud: int, margin: float = MARGIN) -> tuple[float, str]:
    """Return the design clock (Hz) for a design that reached ``fmax_hz`` on ``board``, and why:
    the fastest the PLL makes (:func:`frequencies`, or the oscillator) that is at most
    ``(1 - margin) * fmax_hz`` and carries ``baud`` within the UART's 2 % (the clock and the
    rate are chosen together, :func:`bitfab.boards.uart.uart_divisor`). A design slower than
    the oscillator plus margin stays on the oscillator when it carries ``baud``. Raises
    :class:`BitfabError` when no such clock carries ``baud``."""
    from .uart import uart_divisor
    ceiling = (1 - margin) * fmax_hz
    osc = float(board.clock_hz)
    # the oscillator is always a candidate: a design too slow for a PLL clock above it stays on
    # it (whether it meets timing there is the first pass's verdict)
    for f in sorted({osc, *frequencies(board)}, reverse=True):
        if f > ceiling and f != osc:
            continue
        try:
            div = uart_divisor(f, baud)
        except BitfabError:
            continue
        how = (f"{100 * abs(f / div - baud) / baud:.2f} % off at {div} clocks per bit")
        if f == osc and f > ceiling:
            return f, (f"Fmax {fmax_hz / 1e6:.1f} MHz less a {100 * margin:g} % margin is not "
                       f"above the {osc / 1e6:g} MHz oscillator: the oscillator ({baud} baud "
                       f"{how})")
        return f, (f"Fmax {fmax_hz / 1e6:.1f} MHz less a {100 * margin:g} % margin is "
                   f"{ceiling / 1e6:.1f} MHz; {f / 1e6:g} MHz is the fastest clock below it that "
                   f"carries {baud} baud ({how})")
    raise BitfabError(f"no clock up to {ceiling / 1e6:.1f} MHz on {board.name} carries {baud} "
                      f"baud within 2 %: give --clock or --baud")


def plan(board, clock_hz: float | None) -> ClockPlan:
    """Return how to clock a design on ``board`` at ``clock_hz`` (None: the oscillator).

    Raises :class:`BitfabError` for a frequency outside the PLL's output range
    (:data:`OUTPUT_RANGE`) or one it cannot make within :data:`TOLERANCE` (naming the nearest).
    """
    if clock_hz is None:
        return ClockPlan(board.clock_hz, board.clock_hz)
    if isinstance(clock_hz, bool) or not isinstance(clock_hz, (int, float)) or \
            not math.isfinite(clock_hz) or clock_hz <= 0:
        raise BitfabError(f"the clock must be a positive frequency, not {clock_hz!r}")
    if abs(clock_hz - board.clock_hz) < 1:
        return ClockPlan(board.clock_hz, board.clock_hz)
    lo, hi = OUTPUT_RANGE[board.family]
    name = "iCE40" if board.family == "ice40" else "ECP5"
    if not lo * (1 - TOLERANCE) <= clock_hz <= hi * (1 + TOLERANCE):
        raise BitfabError(f"the {name} PLL makes {lo / 1e6:g}..{hi / 1e6:g} MHz (or the "
                          f"{board.clock_hz / 1e6:g} MHz oscillator), not {clock_hz / 1e6:g} MHz")
    f, params = _closest(board.family, board.clock_hz, clock_hz)
    if abs(f - clock_hz) > TOLERANCE * clock_hz:
        raise BitfabError(f"the {name} PLL cannot make {clock_hz / 1e6:g} MHz from "
                          f"{board.clock_hz / 1e6:g} MHz within {100 * TOLERANCE:g} %: the "
                          f"nearest is {f / 1e6:g} MHz")
    return ClockPlan(board.clock_hz, f, params)


def clock_domain(m: Module, platform, board, clock: ClockPlan) -> None:
    """Add the ``sync`` domain of ``clock`` to ``m`` (the platform makes it from the oscillator
    when there is no PLL)."""
    if clock.params is None:
        return  # the platform's default clock domain: the oscillator, constrained by it
    m.domains.sync = ClockDomain("sync")
    pin = platform.request(board.clock, 0, dir="-")
    locked = Signal()
    clk = Signal()
    p = clock.params
    if board.family == "ice40":
        params = dict(p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                      p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                      p_FILTER_RANGE=p["FILTER_RANGE"], i_RESETB=1, i_BYPASS=0,
                      o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        if board.pll_pad:
            # the oscillator pin is the PLL's own pad (iCEBreaker pin 35): an SB_IO there would
            # take the pad from the PLL (nextpnr: "conflicts with input ... on pin '35'")
            m.submodules.pll = Instance("SB_PLL40_PAD", i_PACKAGEPIN=pin.io, **params)
        else:
            m.submodules.clk_buf = buf = io.Buffer("i", pin)
            m.submodules.pll = Instance("SB_PLL40_CORE", i_REFERENCECLK=buf.i, **params)
    else:
        m.submodules.clk_buf = buf = io.Buffer("i", pin)
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{clock.f_in / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{clock.f_out / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
            p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
            i_CLKI=buf.i, i_CLKFB=clk, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
            i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=locked)
    # hold the design in reset until the PLL locks
    m.d.comb += [ClockSignal("sync").eq(clk), ResetSignal("sync").eq(~locked)]
    platform.add_clock_constraint(clk, clock.f_out)
