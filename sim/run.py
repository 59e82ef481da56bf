"""Prove the generated hardware bit-exact against the golden model (what ``bitfab sim`` runs).

:func:`simulate_model` runs the chosen simulation (Amaranth, or on Verilator / Icarus the fast
in-simulator bench or the cocotb bench, optionally on the synthesized iCE40 / ECP5 netlist) of a
model or one of its layers, of any layer kind, on random inputs or on real ones, compares every
output with :mod:`bitfab.sim.golden` and returns a :class:`SimRun` naming the first mismatch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitfab.errors import BitfabError
from bitfab.hw.config import DEFAULT_PIPELINE
from bitfab.toolchain import build_dir

__all__ = ["SimRun", "simulate_model", "random_inputs", "selftest_vectors", "choose_simulator",
           "amaranth_seconds", "AMARANTH_SECONDS_PER_SYNAPSE", "AUTO_SECONDS", "BENCHES"]

#: seconds Amaranth's simulator takes per synapse and vector, the larger of two measurements on
#: 2-core machines: 2.3 us (the digits MLP 64-64-32-10, 6,464 synapses, 1,000 vectors in 15 s on
#: a loaded one) and 5.6 us (a 784 x 32 bipolar layer on an idle one, docs/results/speed.md)
AMARANTH_SECONDS_PER_SYNAPSE = 5.6e-6
#: ``auto`` simulates in Amaranth when that is estimated to take at most this long: a Verilator
#: build of the same design takes minutes (the digits MLP: 2.8 MB of Verilog), though only once
AUTO_SECONDS = 60.0
#: the Verilator / Icarus benches (``auto``: ``fast`` unless a waveform is asked for)
BENCHES = ("auto", "fast", "cocotb")


@dataclass
class SimRun:
    """The outcome of :func:`simulate_model`: ``vectors`` output transfers compared (vectors, or
    time steps of a framed output) from ``inputs`` input transfers; ``flow`` the yosys flow of a
    netlist run."""

    simulator: str
    netlist: str | None
    vectors: int
    mismatches: int
    cycles: int
    cycles_per_s: float
    wall_s: float
    build_s: float
    first_mismatch: dict | None
    design: str
    vcd: str | None = None
    flow: str | None = None
    inputs: int = 0
    bench: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def selftest_vectors(model, count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Return the contents of an on-board self-test of ``model``
    (:class:`bitfab.boards.selftest.SelfTestData`): the input payloads of ``count`` random
    inputs (:func:`random_inputs`) and the golden model's result payloads for them, in stream
    order. Sequence models are refused (their steps and answers interleave)."""
    from .golden import execute
    if model.sequential:
        raise BitfabError(f"the self-test runs vector and image models, not the sequence model "
                          f"{model.name}")
    x, lengths = random_inputs(model, count, seed)
    trace = execute(model, x, lengths)
    out = model.out_stream
    expected = out.pack(trace.output) if not out.framed else out.pack(trace.output, lengths)
    return model.in_stream.pack(x, lengths), expected


def random_inputs(model, count: int, seed: int = 0, max_steps: int = 12
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``count`` random inputs of ``model`` (extremes included: the first two are all
    minimum and all maximum values); return ``(x, lengths)``.

    Vectors ``(count, in_features)`` with ``lengths`` None, images ``(count, pixels, channels)``
    with every length the pixel count, or for a sequence model sequences
    ``(count, T, in_features)`` of random lengths in ``1..T`` (the first two full length),
    ``T = min(max_steps, the first layer's max_length)``.
    """
    rng = np.random.default_rng(seed)
    fmt, n = model.input, model.in_features
    if getattr(model.layers[0], "frame_length", None):
        # images: (count, pixels, channels) in stream order, every frame full
        pixels = model.layers[0].frame_length
        x = rng.integers(fmt.min_value, fmt.max_value + 1, size=(count, pixels, n))
        if fmt.kind == "bipolar":
            x = np.where(x > 0, 1, -1)
        if count >= 2:
            x[0], x[1] = fmt.min_value, fmt.max_value
        return x, np.full(count, pixels, dtype=np.int64)
    steps = min(max_steps, getattr(model.layers[0], "max_length", max_steps)) \
        if model.sequential else None
    shape = (count, n) if steps is None else (count, steps, n)
    x = rng.integers(fmt.min_value, fmt.max_value + 1, size=shape)
    if fmt.kind == "bipolar":
        x = np.where(x > 0, 1, -1)
    if count >= 2:
        x[0], x[1] = fmt.min_value, fmt.max_value
    if steps is None:
        return x, None
    lengths = rng.integers(1, steps + 1, size=count)
    lengths[:2] = steps
    return x, lengths


def amaranth_seconds(model, x: np.ndarray, lengths=None) -> float:
    """Estimate the seconds Amaranth's simulator takes on ``model`` with inputs ``x`` (vectors,
    or sequences of ``lengths`` steps): :data:`AMARANTH_SECONDS_PER_SYNAPSE` per synapse and
    input transfer."""
    synapses = sum(la.weight_count for la in model.layers)
    transfers = len(x) if lengths is None else int(np.sum(lengths))
    return AMARANTH_SECONDS_PER_SYNAPSE * synapses * transfers


def choose_simulator(model, x: np.ndarray, lengths=None, netlist: str | None = None) -> str:
    """The ``auto`` choice: Verilator for a netlist, else Amaranth when it is estimated to take
    at most :data:`AUTO_SECONDS` (:func:`amaranth_seconds`), else Verilator."""
    if netlist or amaranth_seconds(model, x, lengths) > AUTO_SECONDS:
        return "verilator"
    return "amaranth"


def _generate(model, model_path, layer, fold, pipeline, say) -> Path:
    """Generate (or reuse) the Verilog and sidecar of the design under test; return the sidecar."""
    from bitfab.hw.verilog import generate, generator_digest
    # keyed by the model and by the generator's code: a changed hw/ never serves stale Verilog
    tag = (f"{model.fingerprint()[:16]}-{generator_digest()[:8]}-l{layer}-f{fold}-p{pipeline}"
           .replace(" ", ""))
    out = build_dir("sim", "designs", tag.replace("(", "").replace(")", "").replace(",", "x"))
    sidecars = sorted(out.glob("*.json"))
    if sidecars:
        say("generate", "Verilog cached")
        return sidecars[0]
    what = f"layer {layer}" if layer is not None else f"{len(model.layers)} layer(s)"
    say("generate", f"Verilog of {what}")
    facts = generate(model, out, layer=layer, fold=fold, pipeline=pipeline)
    return out / f"{facts['top']}.json"


def _values_mismatch(model, first: dict | None) -> dict | None:
    """Turn a mismatch in hardware codes into one in values (what a user reads)."""
    if not first or not isinstance(first.get("expected"), list):
        return first
    stream = model.out_stream
    want = stream.values(np.array([first["expected"]]))[0]
    got = stream.values(np.array([first["actual"]]))[0]
    out = {"vector": first["vector"], "outputs": [int(k) for k in np.flatnonzero(want != got)],
           "expected": want.tolist(), "actual": got.tolist()}
    if stream.framed:
        out["expected_last"], out["actual_last"] = first["expected"][-1], first["actual"][-1]
    return out


def simulate_model(model_path, *, simulator: str = "auto", netlist: str | None = None,
                   vectors: int = 1000, inputs: np.ndarray | None = None, lengths=None,
                   layer: int | None = None, fold: tuple[int, int] | None = None,
                   pipeline: int = DEFAULT_PIPELINE, stall: float = 0.2, seed: int = 0,
                   vcd: str | None = None, bench: str = "auto", progress=None) -> SimRun:
    """Simulate a model (or one layer) and compare it with the golden model; see ``bitfab sim``.

    ``inputs`` (and ``lengths`` for sequences) are the input values, else ``vectors`` random
    ones (:func:`random_inputs`). ``simulator`` ``auto`` is :func:`choose_simulator`.
    ``bench`` picks the Verilator / Icarus bench: ``fast`` (:func:`bitfab.sim.fast.run_fast`,
    stimulus and capture inside the simulator), ``cocotb`` (:func:`bitfab.sim.verilog.run_bench`)
    or ``auto``: fast, except that a waveform (``vcd``) takes the cocotb bench.
    ``progress(stage, detail)`` is called as stages start (``generate``, ``netlist``,
    ``build``, ``simulate``) and, in Amaranth, with the vectors done.
    """
    from bitfab.model import IntegerModel
    from bitfab.sim import golden

    model = IntegerModel.load(model_path)
    if layer is not None and not 0 <= layer < len(model.layers):
        raise BitfabError(f"--layer must be in 0..{len(model.layers) - 1}, not {layer}")
    design_model = model if layer is None else model.single(layer)
    if inputs is None:
        x, lengths = random_inputs(design_model, vectors, seed)
    else:
        x, lengths = golden.check_inputs(design_model, inputs, lengths)
    if netlist and simulator == "amaranth":
        raise BitfabError("--netlist needs --simulator verilator or icarus")
    say = progress or (lambda stage, detail="": None)
    if simulator == "auto":
        simulator = choose_simulator(design_model, x, lengths, netlist)
    if simulator == "amaranth":
        return _simulate_amaranth(design_model, fold, pipeline, x, lengths, stall, seed, vcd,
                                  say)
    if simulator not in ("verilator", "icarus"):
        raise BitfabError(f"--simulator must be auto, amaranth, verilator or icarus, "
                          f"not {simulator!r}")
    if bench not in BENCHES:
        raise BitfabError(f"--bench must be one of {', '.join(BENCHES)}, not {bench!r}")
    if bench == "fast" and vcd:
        raise BitfabError("--vcd needs --bench cocotb (the fast bench writes no waveform)")
    if bench == "auto":
        bench = "cocotb" if vcd else "fast"
    from . import fast, verilog
    from .verilog import Design
    start = time.perf_counter()
    sidecar = _generate(model, model_path, layer, fold, pipeline, say)
    gen_s = time.perf_counter() - start
    design = Design.from_sidecar(sidecar)
    if bench == "fast":
        result = fast.run_fast(design, model_path, x, lengths, simulator=simulator,
                               netlist=netlist, p_bubble=stall, p_stall=stall, seed=seed,
                               progress=say)
    else:
        result = verilog.run_bench(design, model_path, x, lengths, simulator=simulator,
                                   netlist=netlist, p_bubble=stall, p_stall=stall, seed=seed,
                                   vcd=vcd, progress=say)
    return SimRun(simulator, netlist, result.vectors, result.mismatches, result.cycles,
                  result.cycles_per_s, result.wall_s, gen_s + result.build_s,
                  _values_mismatch(design_model, result.first_mismatch), design.top, result.vcd,
                  result.flow, result.inputs, bench)


def _simulate_amaranth(model, fold, pipeline, x, lengths, stall, seed, vcd, say) -> SimRun:
    from bitfab.hw.layer import build_network
    from bitfab.sim import golden

    from .amaranth_sim import run_stream

    start = time.perf_counter()
    say("elaborate", f"{len(model.layers)} layer(s) for Amaranth's simulator")
    component = build_network(model, fold, pipeline)
    payloads = model.in_stream.pack(x, lengths)
    expected = golden.expected_rows(model, x, lengths)
    build_s = time.perf_counter() - start
    saved = os.environ.get("BITFAB_VCD")
    if vcd:
        os.environ["BITFAB_VCD"] = str(vcd)
    try:
        start = time.perf_counter()
        n = len(expected)
        say("simulate", f"0/{n} vectors, about {amaranth_seconds(model, x, lengths):.0f} s")

        def done(k):
            if k % 50 == 0 or k == n:
                elapsed = time.perf_counter() - start
                say("simulate", f"{k}/{n} vectors, {elapsed * (n - k) / k:.0f} s left")

        result = run_stream(component, payloads, stall=stall, bubble=stall, seed=seed,
                            outputs=n, progress=done)
        wall = time.perf_counter() - start
    finally:
        if vcd and saved is None:
            os.environ.pop("BITFAB_VCD", None)
        elif vcd:
            os.environ["BITFAB_VCD"] = saved
    got = model.out_stream.unpack_codes(result.outputs)
    mismatches, first = golden.compare_outputs(got, expected)
    return SimRun("amaranth", None, len(expected), mismatches, result.cycles,
                  result.cycles / wall if wall else 0.0, wall, build_s,
                  _values_mismatch(model, first), type(component).__name__,
                  str(vcd) if vcd else None, None, len(payloads))
