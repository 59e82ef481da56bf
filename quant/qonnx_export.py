"""QONNX out: an :class:`~bitfab.model.IntegerModel` of dense layers as a QONNX graph.

The graph computes in the integer domain, where float32 is exact::

    global_in (integer codes) -> Quant|BipolarQuant (scale 1)
      -> [ MatMul (weights: Quant|BipolarQuant of integers, scale 1) [Add bias]
           [Mul +-1 (direction -1 channels)] MultiThreshold | (accumulators) ]*  -> global_out

The input is the integer codes ``round(x / input_scale)``; ``input_scale`` (and the output scale,
the layer names, accumulator widths, input formats and weight encodings) travel in
``metadata_props`` under ``bitfab.*`` keys, so :func:`~bitfab.quant.qonnx_import.import_qonnx`
rebuilds the same model (equal fingerprints). Threshold stages become ``MultiThreshold`` nodes
(FINN's form), a requant stage the equivalent thresholds; a layer whose output feeds a bipolar
layer emits -1/+1 (``out_scale=2, out_bias=-1``). Every value, threshold and partial sum is an
integer below ``2**24``, so ``execute_onnx`` (float32) computes the golden model's outputs exactly;
a model outside that is refused.
"""

from __future__ import annotations

import json

import numpy as np

from bitfab.errors import ModelFormatError
from bitfab.model import Dense, IntegerModel, Requant, Threshold

from .qonnx_import import INPUT_SCALE_KEY, LAYERS_KEY, OUTPUT_SCALE_KEY, require_interop

__all__ = ["to_qonnx", "save_qonnx", "LAYERS_KEY", "requant_thresholds"]

_EXACT = 1 << 24  # float32 holds every integer below this exactly


def requant_thresholds(stage: Requant, acc_lo: np.ndarray, acc_hi: np.ndarray) -> Threshold:
    """Return the threshold stage ``y - lo = #{k: ...}`` equal to ``stage`` on every accumulator
    in ``[acc_lo, acc_hi]``: ``y >= k`` iff ``acc * M + r >= k * 2**shift``.

    Examples
    --------
    >>> t = requant_thresholds(Requant(np.array([3]), 2, 2), np.array([-10]), np.array([10]))
    >>> t.thresholds.tolist()
    [[2, 3, 4]]
    """
    levels = stage.hi - stage.lo
    if levels > 255:
        raise ModelFormatError(f"a requant stage to {stage.bits} bits has {levels + 1} levels; "
                               f"QONNX export takes at most 256 (8-bit outputs)")
    n = len(stage.multiplier)
    t = np.zeros((n, levels), dtype=np.int64)
    direction = np.ones(n, dtype=np.int64)
    for o in range(n):
        m, lo, hi = int(stage.multiplier[o]), int(acc_lo[o]), int(acc_hi[o])
        for j, k in enumerate(range(stage.lo + 1, stage.hi + 1)):
            c = (k << stage.shift) - stage.offset  # acc * m >= c
            if m > 0:
                t[o, j] = min(max(-(-c // m), lo), hi + 1)
            elif m < 0:
                direction[o] = -1
                t[o, j] = min(max(c // m, lo - 1), hi)  # acc <= floor(c / m)
            else:
                t[o, j] = lo if 0 >= c else hi + 1
        if m == 0:
            direction[o] = 1
    return Threshold(t, direction)


def _weight_quant(layer: Dense, name: str):
    """``(op_type, extra inputs, attributes)`` of the quantizer that holds the integer weights."""
    enc = layer.encoding
    if enc.kind == "binary":
        return "BipolarQuant", [], {}
    w = layer.weights
    lo, hi = int(w.min()), int(w.max())
    if max(-lo, hi) >= _EXACT:
        raise ModelFormatError(f"{name}: weights reach {max(-lo, hi)}, beyond float32's exact "
                               f"integers (2^24)")
    bits = 2 if enc.kind == "ternary" else max(2, getattr(enc, "bits", 0) or
                                               max(-lo, hi + 1).bit_length() + 1)
    narrow = 1 if enc.kind == "ternary" else 0
    return "Quant", [bits], {"signed": 1, "narrow": narrow, "rounding_mode": "ROUND"}


def to_qonnx(model: IntegerModel):
    """Return the QONNX graph (an ``onnx.ModelProto``) of ``model``.

    Raises
    ------
    ModelFormatError
        A layer kind QONNX export does not express (conv, lstm), or numbers beyond float32's
        exact integers.
    """
    onnx = require_interop()
    from onnx import TensorProto, helper, numpy_helper
    for i, layer in enumerate(model.layers):
        if layer.kind != "dense":
            raise ModelFormatError(f"layers[{i}] is a {layer.kind} layer; QONNX export covers "
                                   f"dense models (Gemm/MatMul + MultiThreshold), not "
                                   f"{layer.kind}")
        if getattr(layer, "sources", ("",)) != ("",):
            raise ModelFormatError(f"layers[{i}]: skip edges are not exported")
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    one, zero = const("one", 1.0), const("zero", 0.0)
    fmt = model.input
    if fmt.kind == "bipolar":
        nodes.append(helper.make_node("BipolarQuant", ["global_in", one], ["in_q"],
                                      domain="qonnx.custom_op.general", name="input_quant"))
    else:
        nodes.append(helper.make_node("Quant", ["global_in", one, zero,
                                                const("in_bits", fmt.bits)], ["in_q"],
                                      domain="qonnx.custom_op.general", name="input_quant",
                                      signed=int(fmt.signed), narrow=0, rounding_mode="ROUND"))
    x = "in_q"
    facts = []
    for i, layer in enumerate(model.layers):
        p = f"fc{i}"
        lo, hi = layer.acc_range
        x_mag = max(abs(layer.input.min_value), abs(layer.input.max_value))
        bound = int((np.abs(layer.weights).sum(axis=1) * x_mag + np.abs(layer.bias)).max())
        if bound >= _EXACT:
            raise ModelFormatError(f"layers[{i}]: partial sums can reach {bound}, beyond "
                                   f"float32's exact integers (2^24); QONNX's float32 execution "
                                   f"would round them")
        op, extra, attrs = _weight_quant(layer, f"layers[{i}]")
        w = const(f"{p}_w", layer.weights.T)
        ins = [w, one] + ([zero, const(f"{p}_w_bits", extra[0])] if op == "Quant" else [])
        nodes.append(helper.make_node(op, ins, [f"{p}_wq"], domain="qonnx.custom_op.general",
                                      name=f"{p}_weight_quant", **attrs))
        nodes.append(helper.make_node("MatMul", [x, f"{p}_wq"], [f"{p}_mm"], name=f"{p}_matmul"))
        x = f"{p}_mm"
        if np.any(layer.bias != 0):
            nodes.append(helper.make_node("Add", [x, const(f"{p}_b", layer.bias)], [f"{p}_acc"],
                                          name=f"{p}_bias"))
            x = f"{p}_acc"
        stage = layer.output
        if stage.kind == "requant":
            stage = requant_thresholds(stage, lo, hi)
            out_bias = layer.output.lo
        else:
            out_bias = 0
        if stage.kind == "threshold":
            t = stage.thresholds.copy()
            d = stage.direction
            up = d[:, None] > 0  # a threshold beyond 2^24 decides alike at the reachable edge
            t = np.where(t >= _EXACT, np.where(up, hi[:, None] + 1, hi[:, None]),
                         np.where(t <= -_EXACT, np.where(up, lo[:, None], lo[:, None] - 1), t))
            if np.any(d < 0):
                nodes.append(helper.make_node("Mul", [x, const(f"{p}_dir", d)], [f"{p}_signed"],
                                              name=f"{p}_direction"))
                x = f"{p}_signed"
                t = t * d[:, None]
            bipolar_next = i + 1 < len(model.layers) and \
                model.layers[i + 1].input.kind == "bipolar"
            scale, bias = (2.0, -1.0) if bipolar_next else (1.0, float(out_bias))
            bits = max(1, int(stage.count).bit_length())
            dtype = "BIPOLAR" if bipolar_next else (f"INT{bits + 1}" if out_bias < 0
                                                    else f"UINT{bits}")
            nodes.append(helper.make_node("MultiThreshold", [x, const(f"{p}_t", t)], [f"{p}_y"],
                                          domain="qonnx.custom_op.general", name=f"{p}_act",
                                          out_dtype=dtype, out_scale=scale, out_bias=bias))
            x = f"{p}_y"
        facts.append({"name": layer.name, "acc_bits": layer.acc_bits,
                      "input": layer.input.to_json(), "encoding": layer.encoding.to_json()})
    nodes.append(helper.make_node("Identity", [x], ["global_out"], name="output"))
    graph = helper.make_graph(
        nodes, model.name or "bitfab",
        [helper.make_tensor_value_info("global_in", TensorProto.FLOAT, [1, model.in_features])],
        [helper.make_tensor_value_info("global_out", TensorProto.FLOAT,
                                       [1, model.out_features])],
        inits)
    proto = helper.make_model(graph, producer_name="bitfab",
                              opset_imports=[helper.make_opsetid("", 13),
                                             helper.make_opsetid("qonnx.custom_op.general", 1)])
    props = {INPUT_SCALE_KEY: repr(float(model.input_scale)),
             OUTPUT_SCALE_KEY: "" if model.output_scale is None else repr(model.output_scale),
             LAYERS_KEY: json.dumps(facts)}
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto


def save_qonnx(model: IntegerModel, path) -> None:
    """Write ``model`` as a QONNX file (built and checked completely before the file opens)."""
    proto = to_qonnx(model)
    data = proto.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
