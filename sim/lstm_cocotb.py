"""The cocotb 2.x bench of the LSTM cell (loaded by cocotb inside Verilator or Icarus).

:func:`bitfab.sim.lstm_verilog.run_lstm_bench` writes the configuration (a JSON file named by
``$BITFAB_BENCH``). The bench reuses the stream :class:`~bitfab.sim.cocotb_bench.Driver`,
:class:`~bitfab.sim.cocotb_bench.Backpressure` and :class:`~bitfab.sim.cocotb_bench.Monitor`:
every valid step of every sequence is one input transfer (``last`` on a sequence's final step),
and :class:`SequenceModel` computes the expected hidden states and ``last`` flags with the
golden model (:func:`bitfab.sim.lstm.lstm_direction`). The checker compares the output payloads
in order, bit for bit; the verdict goes to a JSON file and the test fails on any mismatch.
"""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from bitfab.sim.cocotb_bench import Backpressure, Driver, Monitor


class SequenceModel:
    """Expected output payloads: golden hidden states in stream order, packed with ``last``.

    ``wrong_reference`` flips the lowest bit of one expected payload, so that a test can show
    that the checker catches a single wrong bit.
    """

    def __init__(self, config: dict):
        from bitfab.model import IntegerModel
        from bitfab.sim.lstm import check_sequences, lstm_direction
        from bitfab.sim.lstm_hw import step_payloads

        model = IntegerModel.load(config["model"])
        layer = model.layers[config["layer"]]
        d = config["direction"]
        x, lengths = check_sequences(layer, np.load(config["inputs"]),
                                     np.load(config["lengths"]))
        hs, _, _ = lstm_direction(layer, d, x, lengths)
        codes = layer.hidden_format.to_codes(hs)
        hb, hidden = layer.hidden_bits, layer.hidden
        self.inputs = step_payloads(layer, x, lengths, d)
        self.outputs = []
        for b, n in enumerate(lengths):
            steps = range(n - 1, -1, -1) if d == 1 else range(n)
            for k, t in enumerate(steps):
                word = 0
                for j in range(hidden):
                    word |= int(codes[b, t, j]) << (j * hb)
                self.outputs.append(word | (int(k == n - 1) << (hidden * hb)))
        if config.get("wrong_reference"):
            self.outputs[len(self.outputs) // 2] ^= 1


@cocotb.test()
async def lstm_matches_golden(dut):
    """Stream whole sequences with random bubbles and stalls; every hidden state is golden."""
    with open(os.environ["BITFAB_BENCH"]) as f:
        config = json.load(f)
    names = {"i_valid": "i__valid", "i_ready": "i__ready", "i_payload": "i__payload",
             "o_valid": "o__valid", "o_ready": "o__ready", "o_payload": "o__payload"}
    rng = random.Random(config.get("seed", 0))
    model = SequenceModel(config)
    driver = Driver(dut, names, model.inputs, config.get("p_bubble", 0.0), rng)
    backpressure = Backpressure(dut, names, config.get("p_stall", 0.0), rng)
    monitor = Monitor(dut, names, backpressure)
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    expected = len(model.outputs)
    limit = expected * config.get("ii", 1) * 8 + 10_000
    cycles = 0
    start = time.perf_counter()
    while len(monitor.received) < expected and cycles < limit:
        await RisingEdge(dut.clk)
        driver.drive()
        backpressure.drive()
        await ReadOnly()
        driver.sample()
        monitor.sample()
        cycles += 1
    for _ in range(4 * config.get("ii", 1) + 8):  # an extra output would show here
        await RisingEdge(dut.clk)
        backpressure.state = 1
        dut.o__ready.value = 1
        dut.i__valid.value = 0
        await ReadOnly()
        monitor.sample()
        cycles += 1
    wall = time.perf_counter() - start
    got, want = monitor.received, model.outputs
    bad = [k for k, (g, w) in enumerate(zip(got, want)) if g != w]
    mismatches = len(bad) + abs(len(got) - len(want))
    first = None
    if bad:
        first = {"step": bad[0], "expected": hex(want[bad[0]]), "actual": hex(got[bad[0]])}
    elif len(got) != len(want):
        first = {"step": min(len(got), len(want)), "expected": len(want), "actual": len(got)}
    result = {"steps": expected, "received": len(got), "mismatches": mismatches,
              "first_mismatch": first, "cycles": cycles, "wall_s": wall,
              "sequences": int(len(np.load(config["lengths"])))}
    with open(config["results"], "w") as f:
        json.dump(result, f)
    assert mismatches == 0, f"{mismatches} mismatching steps, first: {first}"
