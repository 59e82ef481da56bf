"""Board targets: which amaranth-boards platform, clock, UART and LED, and the device limits.

Each :class:`Board` is a thin record on an amaranth-boards platform. Device limits are the
datasheet figures (cited per family below); a report compares what a design uses against them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from bitfab.errors import BitfabError

__all__ = ["Board", "BOARDS", "get_board", "Limits", "Bridge", "LINK_BAUD", "FT2232H", "FT231X"]


@dataclass(frozen=True)
class Limits:
    """What a device holds.

    Members
    -------
    luts : int
        LUT4s (iCE40 logic cells; ECP5 LUT4s = 2 per slice).
    ffs : int
        Flip-flops.
    bram : int
        Block RAMs (iCE40 EBR of 4 Kbit, ECP5 DP16KD of 18 Kbit).
    bram_bits : int
        Bits of one block RAM.
    spram : int
        iCE40UP SPRAM blocks of 256 Kbit (0 elsewhere).
    dsp : int
        Multiplier blocks (iCE40UP SB_MAC16; ECP5 18x18 multipliers).
    """

    luts: int
    ffs: int
    bram: int
    bram_bits: int
    spram: int
    dsp: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


# iCE40 UltraPlus family data sheet (FPGA-DS-02008, Table 1.1): iCE40UP5K has 5280 LUT4s (and as
# many flip-flops), 30 sysMEM EBR of 4 Kbit (120 Kbit), 4 SPRAM blocks of 256 Kbit (1 Mbit),
# 8 DSP (SB_MAC16).
UP5K = Limits(luts=5280, ffs=5280, bram=30, bram_bits=4096, spram=4, dsp=8)
# iCE40 LP/HX family data sheet (FPGA-DS-02029, Table 1.1): iCE40HX8K has 7680 logic cells (LUT4 +
# flip-flop each), 32 EBR of 4 Kbit (128 Kbit), no SPRAM, no DSP.
HX8K = Limits(luts=7680, ffs=7680, bram=32, bram_bits=4096, spram=0, dsp=0)
# ECP5 and ECP5-5G family data sheet (FPGA-DS-02012, Table 1.1): LFE5U-85F has 84 K LUTs
# (41,820 slices x 2 = 83,640 LUT4 and as many flip-flops), 208 EBR of 18 Kbit, 156 18x18
# multipliers; LFE5U-25F has 24 K LUTs (12,144 slices: 24,288 LUT4), 56 EBR, 28 multipliers.
ECP5_85F = Limits(luts=83640, ffs=83640, bram=208, bram_bits=18432, spram=0, dsp=156)
ECP5_25F = Limits(luts=24288, ffs=24288, bram=56, bram_bits=18432, spram=0, dsp=28)


@dataclass(frozen=True)
class Bridge:
    """The USB-serial bridge between a board's UART and the host.

    Members
    -------
    name : str
        The chip.
    max_baud : int or None
        The highest rate it makes (None: unknown, an adapter of the user's choice).
    """

    name: str
    max_baud: int | None

    def to_json(self) -> dict:
        return {"name": self.name, "max_baud": self.max_baud}


# FTDI FT2232H datasheet (DS_FT2232H, section 4.4 / 1): its UARTs run up to 12 Mbaud (a 120 MHz
# base clock divided by n + k/8); the FT231X (DS_FT231X, section 1): up to 3 Mbaud (48 MHz / 16).
FT2232H = Bridge("FTDI FT2232H", 12_000_000)
FT231X = Bridge("FTDI FT231X", 3_000_000)
#: the link rate bitfab builds for (``--baud`` overrides it): 3 Mbaud, the FT231X's maximum and
#: the common reliable one of the FT2232H with pyserial on Linux (ftdi_sio); the FT2232H makes it
#: exactly (12 MHz / 4), and so does a 12 MHz oscillator (4 clocks per bit, the UART's floor)
LINK_BAUD = 3_000_000


@dataclass(frozen=True)
class Board:
    """A board bitfab builds for.

    Members
    -------
    name : str
        The ``--board`` name.
    title : str
        What a user calls it.
    platform : str
        ``module:Class`` of the amaranth-boards platform.
    family : ``"ice40"`` or ``"ecp5"``
    clock : str
        The oscillator resource.
    clock_hz : float
        Its frequency.
    uart : str
        The UART resource (``rx``/``tx`` subsignals).
    led : str
        The status LED resource (``name.subsignal`` for one colour of an RGB LED).
    limits : Limits
    extra_resources : str or None
        ``module:attribute`` of resources to add (a UART the platform does not name).
    drive_high : tuple of str
        Resources driven high (ULX3S: ``uart_tx_enable`` lets the FTDI hear the FPGA's TX).
    pll_pad : bool
        iCE40: the oscillator arrives on the PLL's dedicated pad (``SB_PLL40_PAD``), not through
        an ``SB_IO`` (``SB_PLL40_CORE``).
    bridge : Bridge
        The USB-serial bridge on the UART (its highest rate bounds ``--baud``).
    baud : int
        The link rate a build uses when ``--baud`` is not given (:data:`LINK_BAUD`).
    bitstream : str
        The file nextpnr + pack write (``.bin`` iCE40, ``.bit`` ECP5).
    """

    name: str
    title: str
    platform: str
    family: str
    clock: str
    clock_hz: float
    uart: str
    led: str
    limits: Limits
    extra_resources: str | None = None
    drive_high: tuple = field(default_factory=tuple)
    pll_pad: bool = False
    bridge: Bridge = Bridge("a USB-serial adapter", None)
    baud: int = LINK_BAUD

    @property
    def bitstream(self) -> str:
        return "bin" if self.family == "ice40" else "bit"

    def make_platform(self):
        """Return an instance of the board's amaranth-boards platform (with bitfab's extras)."""
        module, cls = self.platform.split(":")
        platform = getattr(importlib.import_module(module), cls)()
        if self.extra_resources:
            module, attr = self.extra_resources.split(":")
            platform.add_resources(getattr(importlib.import_module(module), attr)())
        return platform

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "family": self.family,
                "device": self.device, "clock_hz": self.clock_hz,
                "limits": self.limits.to_json(), "bridge": self.bridge.to_json(),
                "baud": self.baud}

    @property
    def device(self) -> str:
        module, cls = self.platform.split(":")
        platform = getattr(importlib.import_module(module), cls)
        return f"{platform.device}-{platform.package}"


def orangecrab_uart():
    """The OrangeCrab has no UART resource: use the Feather header's D0 (RX) and D1 (TX), where
    a USB-serial adapter connects (the board's USB port is the FPGA's own USB, not a UART)."""
    from amaranth.build import Attrs
    from amaranth_boards.resources import UARTResource
    return [UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))]


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("icebreaker", "1BitSquared iCEBreaker (iCE40UP5K)",
          "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "clk12", 12e6, "uart",
          "led_g", UP5K, pll_pad=True, bridge=FT2232H),
    Board("ice40-hx8k", "Lattice iCE40-HX8K Breakout Board (ICE40HX8K-B-EVN)",
          "amaranth_boards.ice40_hx8k_b_evn:ICE40HX8KBEVNPlatform", "ice40", "clk12", 12e6,
          "uart", "led", HX8K, bridge=FT2232H),
    Board("ulx3s", "Radiona ULX3S 85F (ECP5 LFE5U-85F)",
          "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "clk25", 25e6, "uart", "led",
          ECP5_85F, drive_high=("uart_tx_enable",), bridge=FT231X),
    Board("orangecrab", "Great Scott Gadgets / GsD OrangeCrab r0.2 25F (ECP5 LFE5U-25F)",
          "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform", "ecp5", "clk", 48e6,
          "uart", "rgb_led.g", ECP5_25F, extra_resources="bitfab.boards.targets:orangecrab_uart",
          bridge=Bridge("a 3.3 V USB-serial adapter on the Feather header", None)),
)}


def get_board(name: str) -> Board:
    """Return the board called ``name``; an unknown name lists the known ones."""
    board = BOARDS.get(str(name).lower())
    if board is None:
        raise BitfabError(f"board must be one of {', '.join(sorted(BOARDS))}, not {name!r}")
    return board
