"""The cocotb 2.x bench for any generated layer or network (the Verilog boundary).

cocotb loads this module inside the simulator; :mod:`bitfab.sim.verilog` writes its
configuration (a JSON file named by ``$BITFAB_BENCH``) from the design's sidecar, so one bench
drives every design, of every layer kind:

- :class:`Driver` offers input payloads (vectors, or time steps with their ``last`` bit) on the
  ``i`` stream, idling at random (bubbles);
- :class:`Backpressure` drops ``o.ready`` at random (stalls);
- :class:`Monitor` records each transfer on ``o`` (valid and ready at a clock edge);
- :class:`Model` computes the expected outputs with the golden model (:mod:`bitfab.sim.golden`);
- :class:`Checker` compares them in order, bit for bit, and keeps the first mismatch.

All are stepped from one clock loop (one trigger pair per cycle keeps cocotb's overhead low).
The verdict goes to a JSON results file and the test fails on any mismatch, lost or extra vector.
"""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer

from bitfab.sim.golden import compare_outputs


class Driver:
    """Offers ``payloads`` in order on the input stream; ``p_bubble`` = chance to idle a cycle."""

    def __init__(self, dut, names: dict, payloads: list[int], p_bubble: float, rng):
        self.valid = getattr(dut, names["i_valid"])
        self.ready = getattr(dut, names["i_ready"])
        self.data = getattr(dut, names["i_payload"])
        self.payloads, self.p_bubble, self.rng = payloads, p_bubble, rng
        self.sent = 0
        self.offering = False

    def drive(self):
        if not self.offering and self.sent < len(self.payloads):
            # a stream producer may only idle between transfers, never withdraw an offer
            self.offering = self.rng.random() >= self.p_bubble
            if self.offering:
                self.data.value = self.payloads[self.sent]
        self.valid.value = int(self.offering)

    def sample(self):
        if self.offering and int(self.ready.value):
            self.sent += 1
            self.offering = False


class Backpressure:
    """Drives the output stream's ready: low with probability ``p_stall`` in each cycle."""

    def __init__(self, dut, names: dict, p_stall: float, rng):
        self.ready = getattr(dut, names["o_ready"])
        self.p_stall, self.rng = p_stall, rng
        self.state = 0

    def drive(self):
        self.state = int(self.rng.random() >= self.p_stall)
        self.ready.value = self.state


class Monitor:
    """Records the payload of every output transfer (valid and ready high at a clock edge)."""

    def __init__(self, dut, names: dict, backpressure: Backpressure):
        self.valid = getattr(dut, names["o_valid"])
        self.data = getattr(dut, names["o_payload"])
        self.backpressure = backpressure
        self.received: list[int] = []

    def sample(self):
        if self.backpressure.state and int(self.valid.value):
            self.received.append(int(self.data.value))


def _model(config: dict):
    from bitfab.model import IntegerModel
    model = IntegerModel.load(config["model"])
    return model if config.get("layer") is None else model.single(config["layer"])


class Model:
    """The expected outputs: the golden model on the bench's inputs, as code rows (one per
    output transfer, a framed stream's ``last`` as the final column).

    ``wrong_reference`` deliberately adds one to one expected code, so that a test can show the
    checker catches a single wrong bit.
    """

    def __init__(self, config: dict):
        from bitfab.sim import golden

        model = _model(config)
        x = np.load(config["inputs"], allow_pickle=False)
        lengths = np.load(config["lengths"], allow_pickle=False) if config.get("lengths") \
            else None
        x, lengths = golden.check_inputs(model, x, lengths)
        #: the input payloads (vectors, or one time step each with its ``last`` bit)
        self.inputs = model.in_stream.pack(x, lengths)
        self.stream = model.out_stream
        self.codes = np.array(golden.expected_rows(model, x, lengths), dtype=np.int64)
        if config.get("wrong_reference") and len(self.codes):
            row = self.codes[len(self.codes) // 2]
            row[0] = (row[0] + 1) % (1 << self.stream.element.bits)


class Checker:
    """Compares received payloads with the model, in order; keeps counts and the first mismatch."""

    def __init__(self, model: Model):
        self.model = model
        self.mismatches = 0
        self.first = None

    def check(self, received: list[int]):
        stream = self.model.stream
        got = stream.unpack_codes(received) if received else \
            np.zeros((0, stream.count + int(stream.framed)), dtype=np.int64)
        self.mismatches, self.first = compare_outputs(got, self.model.codes)
        return got


@cocotb.test()
async def stream_matches_golden(dut):
    """Drive every input vector with random bubbles and stalls; outputs equal the golden model."""
    with open(os.environ["BITFAB_BENCH"]) as f:
        config = json.load(f)
    names = config["ports"]
    rng = random.Random(config.get("seed", 0))
    model = Model(config)
    payloads = model.inputs
    driver = Driver(dut, names, payloads, config.get("p_bubble", 0.0), rng)
    backpressure = Backpressure(dut, names, config.get("p_stall", 0.0), rng)
    monitor = Monitor(dut, names, backpressure)
    checker = Checker(model)

    getattr(dut, names["i_valid"]).value = 0
    getattr(dut, names["o_ready"]).value = 0
    if names.get("clk"):
        clk = getattr(dut, names["clk"])
        cocotb.start_soon(Clock(clk, 10, unit="ns").start())
        def edge():
            return RisingEdge(clk)
        if names.get("rst"):
            rst = getattr(dut, names["rst"])
            rst.value = 1
            for _ in range(2):
                await edge()
            rst.value = 0
    else:
        # a purely combinational design (unrolled, no pipeline registers): a virtual clock
        def edge():
            return Timer(10, "ns")

    expected = len(model.codes)
    transfers = max(len(payloads), expected)
    limit = config.get("max_cycles") or (transfers * config.get("ii", 1) * 4 + 10_000)
    cycles = 0
    start = time.perf_counter()
    # one loop, two triggers a cycle: drive after the edge, sample the settled values
    while len(monitor.received) < expected and cycles < limit:
        await edge()
        driver.drive()
        backpressure.drive()
        await ReadOnly()
        driver.sample()
        monitor.sample()
        cycles += 1
    # let a design that emits too many vectors show it
    drain = config.get("drain_cycles", 4 * config.get("latency", 0) + 4 * config.get("ii", 1) + 8)
    for _ in range(drain):
        await edge()
        backpressure.state = 1
        backpressure.ready.value = 1
        getattr(dut, names["i_valid"]).value = 0
        await ReadOnly()
        monitor.sample()
        cycles += 1
    wall = time.perf_counter() - start
    got = checker.check(monitor.received)
    result = {
        "vectors": int(expected), "inputs": len(payloads), "received": len(monitor.received),
        "mismatches": checker.mismatches, "first_mismatch": checker.first,
        "cycles": cycles, "wall_s": wall, "cycles_per_s": cycles / wall if wall else 0.0,
        "timed_out": cycles >= limit and len(monitor.received) < expected,
    }
    if config.get("save_outputs"):
        np.save(config["save_outputs"], got)
    with open(config["results"], "w") as f:
        json.dump(result, f)
    assert not result["timed_out"], f"only {len(monitor.received)} of {expected} vectors came out"
    assert checker.mismatches == 0, f"{checker.mismatches} mismatching vectors, first: " \
                                    f"{checker.first}"
