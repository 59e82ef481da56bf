"""Run bitfab hardware in the Amaranth simulator as a pure function: values in, values out.

:func:`simulate` takes a layer, a :class:`~bitfab.hw.config.LayerConfig`, a model or an already
built component, streams a batch of input vectors through it (optionally with a producer that
idles and a consumer that stalls at random) and returns the output values, so that tests and
``bitfab sim --simulator amaranth`` compare them with :mod:`bitfab.sim.golden` bit for bit.

:func:`stream_put` / :func:`stream_get` are the shared async testbench helpers for
``amaranth.lib.stream`` interfaces. Set ``BITFAB_VCD=path.vcd`` to write a waveform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import ClockDomain, Module, Value
from amaranth.sim import Simulator

from bitfab.errors import VerificationError
from bitfab.hw.config import LayerConfig
from bitfab.hw.layer import Network, build_layer, network_configs
from bitfab.hw.packing import pack, unpack
from bitfab.model import Dense, IntegerModel

__all__ = ["stream_put", "stream_get", "simulate", "SimResult", "run_stream"]

_PERIOD = 1e-8  # the simulated clock period (only cycles matter)


async def stream_put(ctx, stream, payload: int) -> int:
    """Offer ``payload`` on ``stream`` until the receiver takes it; return the clocks it took.

    ``valid`` rises with the payload and falls after the transfer (the stream rules: the payload
    holds while ``valid`` is high and ``ready`` low).
    """
    ctx.set(stream.valid, 1)
    ctx.set(Value.cast(stream.payload), payload)
    ticks = 0
    while True:
        ticks += 1
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            break
    ctx.set(stream.valid, 0)
    return ticks


async def stream_get(ctx, stream) -> tuple[int, int]:
    """Accept one payload from ``stream``; return ``(payload, clocks it took)``."""
    ctx.set(stream.ready, 1)
    ticks = 0
    while True:
        ticks += 1
        _, _, valid, payload = await ctx.tick().sample(stream.valid, Value.cast(stream.payload))
        if valid:
            break
    ctx.set(stream.ready, 0)
    return payload, ticks


@dataclass
class SimResult:
    """What :func:`run_stream` observed.

    Members
    -------
    outputs : list of int
        Output payloads, in arrival order.
    in_cycles, out_cycles : list of int
        The clock cycle of each input and output transfer (cycle 0 is the first).
    cycles : int
        Clock cycles simulated.
    """

    outputs: list
    in_cycles: list
    out_cycles: list
    cycles: int


def run_stream(dut, payloads, *, stall: float = 0.0, bubble: float = 0.0, seed: int = 0,
               max_cycles: int | None = None) -> SimResult:
    """Stream ``payloads`` into ``dut.i`` and collect as many from ``dut.o``.

    ``bubble``: probability that the producer idles (``valid`` low) for a clock before a vector;
    ``stall``: probability that the consumer holds ``ready`` low for a clock before taking one.
    A design that gives fewer vectors within ``max_cycles``, or more than it was given, raises
    :class:`VerificationError`.
    """
    payloads = [int(p) for p in payloads]
    n = len(payloads)
    ii = getattr(dut, "initiation_interval", 1)
    lat = getattr(dut, "latency", 0)
    slow = 1.0 / max(1e-3, 1.0 - max(stall, bubble))
    if max_cycles is None:
        max_cycles = int((n + 2) * ii * slow * 4 + lat + 100)
    rng_in = np.random.default_rng(seed)
    rng_out = np.random.default_rng(seed + 1)
    result = SimResult([], [], [], 0)
    done = [False]

    async def producer(ctx):
        cycle = 0
        for word in payloads:
            while bubble and rng_in.random() < bubble:
                await ctx.tick()
                cycle += 1
            ticks = await stream_put(ctx, dut.i, word)
            result.in_cycles.append(cycle + ticks - 1)
            cycle += ticks

    async def consumer(ctx):
        cycle = 0
        for _ in range(n):
            while stall and rng_out.random() < stall:
                await ctx.tick()
                cycle += 1
            word, ticks = await stream_get(ctx, dut.o)
            result.outputs.append(word)
            result.out_cycles.append(cycle + ticks - 1)
            cycle += ticks
        result.cycles = cycle
        # a design that emits more vectors than it was given duplicates some: watch for one
        ctx.set(dut.o.ready, 1)
        for _ in range(lat + 2 * ii + 8):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                raise VerificationError(f"the design gave more than the {n} vectors it was given "
                                        f"(a duplicated vector)")
        ctx.set(dut.o.ready, 0)
        done[0] = True

    async def watchdog(ctx):
        await ctx.delay(max_cycles * _PERIOD)
        if not done[0]:
            raise VerificationError(f"the design gave {len(result.outputs)} of {n} vectors in "
                                    f"{max_cycles} cycles (lost vectors or a deadlock)")

    top = Module()
    top.domains.sync = ClockDomain("sync")  # a combinational design has no sync domain itself
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(_PERIOD)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(watchdog, background=True)
    vcd = os.environ.get("BITFAB_VCD")
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return result


def _target(target, pipeline: int):
    """Return ``(build, input format, output format, in_features, out_features)``; ``build()``
    makes the component (only once the inputs are known to be good, so that nothing is left
    unelaborated)."""
    if isinstance(target, Dense):
        target = LayerConfig.unrolled(target, pipeline)
    if isinstance(target, IntegerModel):
        configs = network_configs(target, pipeline=pipeline)
        first, last = configs[0].layer, configs[-1].layer
        return (lambda: Network(configs)), first.input, last.out_format, first.in_features, \
            last.out_features
    if isinstance(target, LayerConfig):
        layer = target.layer
        cfg = target
        return (lambda: build_layer(cfg)), layer.input, layer.out_format, layer.in_features, \
            layer.out_features
    if isinstance(target, Network):
        first, last = target.configs[0].layer, target.configs[-1].layer
    elif hasattr(target, "config"):
        first = last = target.config.layer
    else:
        raise TypeError(f"simulate needs a Dense layer, a LayerConfig, an IntegerModel or a "
                        f"bitfab component, not {type(target).__name__}")
    return (lambda: target), first.input, last.out_format, first.in_features, last.out_features


def simulate(target, x, *, stall: float = 0.0, bubble: float = 0.0, seed: int = 0,
             pipeline: int = 0) -> np.ndarray:
    """Simulate ``target`` on input values ``x`` (``(batch, in_features)``); return its outputs.

    Parameters
    ----------
    target : Dense, LayerConfig, IntegerModel or a bitfab layer/network component
        A ``Dense`` is built unrolled, a model as a :class:`~bitfab.hw.layer.Network` of unrolled
        layers, both with ``pipeline``.
    x : int array
        Input values of the first layer's input format (bipolar: -1/+1).
    stall, bubble : float
        Probabilities of a consumer stall / producer bubble per clock (see :func:`run_stream`).

    Returns
    -------
    int64 array ``(batch, out_features)``
        Output values of the last layer (``out_format.from_codes`` of the output payloads), in
        the order the hardware gave them; compare with the golden model's outputs.
    """
    build, fin, fout, n_in, n_out = _target(target, pipeline)
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n_in:
        raise VerificationError(f"x must have shape (batch, {n_in}), not {np.shape(x)}")
    payloads = pack(arr, fin)
    result = run_stream(build(), payloads, stall=stall, bubble=bubble, seed=seed)
    return unpack(result.outputs, fout, n_out)
