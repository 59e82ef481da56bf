"""Run bitfab hardware in the Amaranth simulator as a pure function: values in, values out.

:func:`simulate` takes a layer (of any kind), a layer configuration, a model or an already built
component, streams a batch of input vectors (or sequences, one step per transfer) through it
(optionally with a producer that idles and a consumer that stalls at random) and returns the
output values in the golden model's layout, so that tests and ``bitfab sim --simulator amaranth``
compare them with :mod:`bitfab.sim.golden` bit for bit.

:func:`stream_put` / :func:`stream_get` are the shared async testbench helpers for
``amaranth.lib.stream`` interfaces. Set ``BITFAB_VCD=path.vcd`` to write a waveform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import ClockDomain, Module, Value
from amaranth.sim import Simulator

from bitfab.errors import ModelRangeError, VerificationError
from bitfab.hw.layer import Network, build_layer, network_configs
from bitfab.layers import is_layer
from bitfab.model import IntegerModel

from .golden import check_inputs

__all__ = ["stream_put", "stream_get", "simulate", "outputs_of", "StreamRun", "run_stream"]

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
class StreamRun:
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
               max_cycles: int | None = None, outputs: int | None = None,
               progress=None) -> StreamRun:
    """Stream ``payloads`` into ``dut.i`` and collect ``outputs`` payloads (default: as many as
    went in) from ``dut.o``; ``progress(k)`` is called with the count after each one.

    ``bubble``: probability that the producer idles (``valid`` low) for a clock before a vector;
    ``stall``: probability that the consumer holds ``ready`` low for a clock before taking one.
    A design that gives fewer vectors within ``max_cycles``, or more than it was given, raises
    :class:`VerificationError`.
    """
    payloads = [int(p) for p in payloads]
    n = len(payloads) if outputs is None else outputs
    ii = getattr(dut, "initiation_interval", 1)
    lat = getattr(dut, "latency", 0)
    slow = 1.0 / max(1e-3, 1.0 - max(stall, bubble))
    if max_cycles is None:
        max_cycles = int((max(n, len(payloads)) + 2) * ii * slow * 4 + lat + 100)
    rng_in = np.random.default_rng(seed)
    rng_out = np.random.default_rng(seed + 1)
    result = StreamRun([], [], [], 0)
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
            if progress is not None:
                progress(len(result.outputs))
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


def _design(target, pipeline: int):
    """Return ``(build, model)``: ``build()`` makes the component (only once the inputs are
    known to be good, so that nothing is left unelaborated), ``model`` is the IntegerModel whose
    golden output the component must produce."""
    if is_layer(target):
        target = IntegerModel((target,))
    if isinstance(target, IntegerModel):
        configs = network_configs(target, pipeline=pipeline)
        return (lambda: Network(configs)), target
    if isinstance(target, Network):
        return (lambda: target), IntegerModel(tuple(c.layer for c in target.configs))
    config = getattr(target, "config", target)
    if not is_layer(getattr(config, "layer", None)):
        raise TypeError(f"simulate needs a layer, a layer configuration, an IntegerModel or a "
                        f"bitfab component, not {type(target).__name__}")
    model = IntegerModel((config.layer,))
    if config is target:
        return (lambda: build_layer(config)), model
    return (lambda: target), model


def outputs_of(stream, payloads, lengths=None, steps: int | None = None) -> np.ndarray:
    """Return the values of output payloads of ``stream`` (a model's ``out_stream``) in the
    layout of the golden model's output: ``(batch, out)`` vectors, or ``(batch, T, out)`` steps
    of a framed output (0 at padding; ``lengths`` gives the steps of each sequence, ``steps``
    the padded length, default the longest). Raise
    :class:`VerificationError` where the ``last`` flags do not frame the sequences."""
    codes = stream.unpack_codes(payloads)
    values = stream.values(codes)
    if not stream.framed:
        return values
    lengths = np.asarray(lengths)
    expected = np.concatenate([np.arange(n) == n - 1 for n in lengths]).astype(np.int64) \
        if len(lengths) else np.zeros(0, dtype=np.int64)
    last = codes[:, -1]
    if len(last) != len(expected):
        raise VerificationError(f"{len(last)} output steps for {len(expected)} input steps")
    if not np.array_equal(last, expected):
        k = int(np.argmax(last != expected))
        raise VerificationError(f"output step {k}: last flag {int(last[k])}, expected "
                                f"{int(expected[k])}")
    if steps is None:
        steps = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), steps, stream.count), dtype=np.int64)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    out[valid] = values
    return out


def simulate(target, x, lengths=None, *, stall: float = 0.0, bubble: float = 0.0, seed: int = 0,
             pipeline: int = 0) -> np.ndarray:
    """Simulate ``target`` on input values ``x``; return its outputs as the golden model lays
    them out (:func:`outputs_of`).

    Parameters
    ----------
    target : a layer, a layer configuration, an IntegerModel or a bitfab component
        A layer is built as a one-layer model, a model as a :class:`~bitfab.hw.layer.Network`,
        both unrolled with ``pipeline``.
    x : int array
        Input values of the first layer's input format (bipolar: -1/+1): ``(batch, in)``
        vectors, or ``(batch, T, in)`` sequences with ``lengths`` for a sequence model.
    stall, bubble : float
        Probabilities of a consumer stall / producer bubble per clock (see :func:`run_stream`).

    Returns
    -------
    int64 array ``(batch, out)`` or ``(batch, T, out)``
        Compare with :func:`bitfab.sim.golden.execute`'s ``output``.
    """
    build, model = _design(target, pipeline)
    try:
        arr, lengths = check_inputs(model, x, lengths)
    except ModelRangeError as exc:
        raise VerificationError(str(exc)) from None
    payloads = model.in_stream.pack(arr, lengths)
    out_lengths, steps = _out_lengths(model, arr, lengths)
    result = run_stream(build(), payloads, stall=stall, bubble=bubble, seed=seed,
                        outputs=_output_count(model, arr, out_lengths))
    return outputs_of(model.out_stream, result.outputs, out_lengths, steps)


def _out_lengths(model: IntegerModel, x: np.ndarray, lengths) -> tuple:
    """``(lengths, steps)`` of the output frames: an image model's output images have the last
    layer's pixels each, a sequence model's output steps are its input steps."""
    frame = getattr(model.layers[-1], "out_frame_length", None)
    if getattr(model.layers[0], "frame_length", None) and frame:
        return np.full(len(x), frame, dtype=np.int64), frame
    return lengths, (x.shape[1] if model.sequential else None)


def _output_count(model: IntegerModel, x: np.ndarray, lengths) -> int:
    """Output transfers the hardware gives for ``x``: one per vector, per sequence, or per step
    (a framed output)."""
    return int(lengths.sum()) if model.out_stream.framed else len(x)
