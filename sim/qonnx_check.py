"""The check against QONNX's own executor: golden == ``qonnx.core.onnx_exec.execute_onnx``.

- :func:`run_qonnx` runs a graph on a batch with ``execute_onnx`` (float32, as QONNX defines it);
- :func:`qonnx_codes` turns its outputs into the integer codes the IntegerModel emits (using the
  output mapping :func:`~bitfab.quant.qonnx_import.import_qonnx` records in the metadata);
- :func:`exact_execute` runs the same graph in exact rational arithmetic (Python fractions), the
  real-number meaning of the quantizers that bitfab's thresholds implement;
- :func:`compare_with_qonnx` counts the outputs that differ and, for each, proves that it is a
  float32 boundary case: the exact execution gives the golden output, and at the first quantizer
  where float32 and exact execution part, the exact input lies within the float32 error of a
  rounding boundary. Any other difference is reported as unexplained (a bug).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from bitfab.model import IntegerModel
from bitfab.quant.qonnx_import import INPUT_SCALE_KEY, clean, quant_boundaries, require_interop
from bitfab.sim import golden

__all__ = ["run_qonnx", "real_inputs", "qonnx_codes", "exact_execute", "Comparison",
           "compare_with_qonnx"]

_QUANTIZERS = ("Quant", "BipolarQuant", "MultiThreshold")


def _batch(wrapper, n: int):
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes
    return wrapper.transform(ChangeBatchSize(n)).transform(InferShapes())


def run_qonnx(wrapper, x: np.ndarray, full: bool = False):
    """Run the (cleaned) graph ``wrapper`` on the float inputs ``x`` ``(batch, ...)`` with
    ``execute_onnx``; return its output (or, with ``full``, every tensor by name)."""
    require_interop()
    from qonnx.core.onnx_exec import execute_onnx
    wrapper = _batch(wrapper, len(x))
    name = wrapper.graph.input[0].name
    shape = wrapper.get_tensor_shape(name)
    ctx = execute_onnx(wrapper, {name: np.asarray(x, np.float32).reshape(shape)},
                       return_full_exec_context=full)
    return ctx if full else ctx[wrapper.graph.output[0].name]


def _reads_codes(wrapper) -> bool:
    """Whether the graph is bitfab's own export (integer codes in and out)."""
    return any(p.key == INPUT_SCALE_KEY for p in wrapper.model.metadata_props)


def real_inputs(model: IntegerModel, wrapper, x_int: np.ndarray) -> np.ndarray:
    """The float32 graph inputs whose input quantizer gives the integer codes ``x_int``
    (the codes themselves for bitfab's own export, which reads codes)."""
    x = np.asarray(x_int, dtype=np.float64)
    scale = 1.0 if _reads_codes(wrapper) else model.input_scale
    shape = model.in_shape
    if len(shape) == 3:  # bitfab's images are (H, W, C) in stream order; ONNX's (C, H, W)
        x = x.reshape((len(x),) + shape).transpose(0, 3, 1, 2)
    return (x * scale).astype(np.float32)


def _decode(model: IntegerModel, wrapper, y: np.ndarray) -> np.ndarray:
    """The integer codes of the graph outputs ``y`` (the mapping the import recorded; none for
    bitfab's own export, which emits codes)."""
    m = None if _reads_codes(wrapper) else model.metadata.get("qonnx_output")
    m = m or {"scale": [1.0], "offset": 0, "bipolar": False}
    v = np.asarray(y, np.float64).reshape(len(y), -1) / np.asarray(m["scale"], np.float64)
    if m["bipolar"]:
        v = (v + 1) / 2
    else:
        v = v - m["offset"]
    codes = np.round(v)
    bad = np.abs(v - codes) > 1e-3
    if np.any(bad):
        i = np.argwhere(bad)[0]
        raise ValueError(f"output {tuple(i)} = {float(y.reshape(len(y), -1)[tuple(i)])!r} is "
                         f"not on the output grid")
    return codes.astype(np.int64)


def qonnx_codes(model: IntegerModel, wrapper, x_int: np.ndarray) -> np.ndarray:
    """Run ``wrapper`` on the inputs with codes ``x_int`` and return its output codes."""
    return _decode(model, wrapper, run_qonnx(wrapper, real_inputs(model, wrapper, x_int)))


# --- exact execution ------------------------------------------------------------------------------


def _frac(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object:
        return a
    return np.vectorize(lambda v: Fraction(float(v)), otypes=[object])(a) if a.size \
        else np.zeros(a.shape, dtype=object)


def _attr(node, name, default):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _round(v: Fraction, mode: str) -> int:
    if mode in ("ROUND", "HALF_EVEN"):
        return round(v)  # Fraction rounds half to even, as numpy does
    return math.floor(v) if mode == "FLOOR" else math.ceil(v)


def _quant(node, x, s, zp, bits) -> np.ndarray:
    from qonnx.custom_op.general.intquant import max_int, min_int
    signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
    mode = str(_attr(node, "rounding_mode", "ROUND")).upper()
    bits = int(float(np.asarray(bits).reshape(-1)[0]))
    v = x / s + zp
    if bits == 1 and signed:
        q = np.vectorize(lambda e: Fraction(1 if e >= 0 else -1), otypes=[object])(v)
    else:
        lo, hi = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
        q = np.vectorize(lambda e: Fraction(_round(min(max(e, lo), hi), mode)),
                         otypes=[object])(v)
    return (q - zp) * s


def _windows(x: np.ndarray, kernel, strides, pads) -> tuple[np.ndarray, int, int]:
    """``(padded x, out height, out width)`` of an NCHW object array (padding with 0)."""
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    xp = np.full((n, c, h + top + bottom, w + left + right), Fraction(0), dtype=object)
    xp[:, :, top:top + h, left:left + w] = x
    oh = (xp.shape[2] - kernel[0]) // strides[0] + 1
    ow = (xp.shape[3] - kernel[1]) // strides[1] + 1
    return xp, oh, ow


def _conv(node, x, w, bias) -> np.ndarray:
    if int(_attr(node, "group", 1)) != 1:
        raise ValueError(f"exact execution of grouped convolutions ({node.name!r}) is not "
                         f"implemented")
    kernel = w.shape[2:]
    strides = list(_attr(node, "strides", [1, 1]))
    xp, oh, ow = _windows(x, kernel, strides, list(_attr(node, "pads", [0, 0, 0, 0])))
    out = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=object)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * strides[0]:i * strides[0] + kernel[0],
                     j * strides[1]:j * strides[1] + kernel[1]]
            out[:, :, i, j] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3]))
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def _maxpool(node, x) -> np.ndarray:
    kernel = list(_attr(node, "kernel_shape", [2, 2]))
    strides = list(_attr(node, "strides", kernel))
    _, oh, ow = _windows(x, kernel, strides, [0, 0, 0, 0])
    out = np.empty(x.shape[:2] + (oh, ow), dtype=object)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * strides[0]:i * strides[0] + kernel[0],
                    j * strides[1]:j * strides[1] + kernel[1]]
            out[:, :, i, j] = np.max(win.reshape(win.shape[:2] + (-1,)), axis=2)
    return out


def exact_execute(wrapper, x: np.ndarray) -> dict:
    """Run the cleaned graph on inputs ``x`` in exact rational arithmetic (the float32 numbers
    of the inputs and constants taken exactly); return every tensor by name (object arrays of
    fractions). Supports the ops the import maps."""
    wrapper = _batch(wrapper, len(x))
    env: dict = {}
    for init in wrapper.graph.initializer:
        env[init.name] = _frac(wrapper.get_initializer(init.name))
    name = wrapper.graph.input[0].name
    env[name] = _frac(np.asarray(x, np.float32).reshape(wrapper.get_tensor_shape(name)))
    for node in wrapper.graph.node:
        ins = [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Quant":
            out = _quant(node, *ins)
        elif op == "BipolarQuant":
            out = np.vectorize(lambda e: Fraction(1 if e >= 0 else -1), otypes=[object])(
                ins[0]) * ins[1]
        elif op == "MultiThreshold":
            t = ins[1]
            xs = ins[0]
            count = np.zeros(xs.shape, dtype=object)
            count[...] = Fraction(0)
            for k in range(t.shape[1]):
                col = t[:, k].reshape((1, -1) + (1,) * (xs.ndim - 2))
                count = count + np.vectorize(lambda e: Fraction(int(e)), otypes=[object])(
                    xs >= col)
            out = count * Fraction(float(np.float32(_attr(node, "out_scale", 1.0)))) \
                + Fraction(float(np.float32(_attr(node, "out_bias", 0.0))))
        elif op == "Gemm":
            a, b = ins[0], ins[1]
            if _attr(node, "transB", 0):
                b = b.T
            out = a.dot(b) * Fraction(float(np.float32(_attr(node, "alpha", 1.0))))
            if len(ins) > 2 and ins[2] is not None:
                out = out + ins[2] * Fraction(float(np.float32(_attr(node, "beta", 1.0))))
        elif op == "MatMul":
            out = ins[0].dot(ins[1])
        elif op in ("Add", "Sub", "Mul", "Div"):
            a, b = ins
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                   "Div": np.divide}[op](a, b)
        elif op == "Conv":
            out = _conv(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
        elif op == "MaxPool":
            out = _maxpool(node, ins[0])
        elif op == "Relu":
            out = np.vectorize(lambda e: max(e, Fraction(0)), otypes=[object])(ins[0])
        elif op in ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze"):
            out = ins[0].reshape(wrapper.get_tensor_shape(node.output[0]))
        else:
            raise ValueError(f"exact execution does not know node {node.name!r} ({op})")
        env[node.output[0]] = np.asarray(out, dtype=object)
    return env


# --- the comparison -------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Golden against QONNX on a batch.

    Members
    -------
    samples : int
    differing : list of int
        Rows whose output codes differ.
    boundary : list of int
        Differing rows proven to be float32 boundary cases.
    unexplained : list of int
        Differing rows that are not (a bug on one side).
    details : list of dict
        Per differing row: the node, element, exact value and float32 value at the boundary.
    """

    samples: int
    differing: list = field(default_factory=list)
    boundary: list = field(default_factory=list)
    unexplained: list = field(default_factory=list)
    details: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"samples": self.samples, "differing": len(self.differing),
                "boundary_cases": len(self.boundary), "unexplained": len(self.unexplained)}


def _boundary(node, x_exact, x_float, params) -> tuple[Fraction, Fraction] | None:
    """``(distance to the nearest boundary, float32 error)`` of one quantizer input."""
    if node.op_type == "MultiThreshold":
        bounds = [b for b in params]
        v_exact, v_float = x_exact, Fraction(float(x_float))
    elif node.op_type == "BipolarQuant":
        bounds, v_exact, v_float = [Fraction(0)], x_exact, Fraction(float(x_float))
    else:
        s, bits = params
        v_exact, v_float = x_exact / s, Fraction(float(np.float32(x_float) / np.float32(s)))
        signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
        if bits == 1 and signed:
            bounds = [Fraction(0)]
        else:
            from qonnx.custom_op.general.intquant import max_int, min_int
            lo, hi = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
            mode = str(_attr(node, "rounding_mode", "ROUND")).upper()
            bounds = [b for b, _ in quant_boundaries(lo, hi, mode)]
    dist = min(abs(v_exact - b) for b in bounds)
    return dist, abs(v_float - v_exact)


def compare_with_qonnx(model: IntegerModel, wrapper, x_int: np.ndarray,
                       want: np.ndarray | None = None) -> Comparison:
    """Compare the golden outputs of ``model`` (or ``want``, a reference to check the checker)
    with QONNX's execution of ``wrapper`` on the inputs with codes ``x_int``; prove each
    difference a float32 boundary case or report it unexplained."""
    wrapper = clean(wrapper)
    x_int = np.asarray(x_int)
    want = golden.execute(model, x_int).output if want is None else np.asarray(want)
    real = real_inputs(model, wrapper, x_int)
    ctx = run_qonnx(wrapper, real, full=True)
    got = _decode(model, wrapper, ctx[wrapper.graph.output[0].name])
    result = Comparison(len(x_int))
    rows = np.flatnonzero(np.any(got != want.reshape(len(want), -1), axis=1))
    for r in rows.tolist():
        result.differing.append(r)
        exact = exact_execute(wrapper, real[r:r + 1])
        exact_codes = _decode(model, wrapper, np.array(
            [[float(v) for v in exact[wrapper.graph.output[0].name].reshape(-1)]]))
        fact = None
        if np.array_equal(exact_codes[0], want.reshape(len(want), -1)[r]):
            fact = _first_split(wrapper, exact, ctx, r)
        if fact is not None and fact["distance"] <= fact["float32_error"] \
                and fact["float32_error"] < Fraction(1, 1 << 10):
            result.boundary.append(r)
        else:
            result.unexplained.append(r)
        result.details.append({"row": r, **(fact or {})})
    return result


def _first_split(wrapper, exact: dict, ctx: dict, r: int) -> dict | None:
    """At the first quantizer whose float32 output differs from the exact one (row ``r``):
    the element, the exact input's distance to the nearest boundary and the float32 error."""
    for node in wrapper.graph.node:
        if node.op_type not in _QUANTIZERS or node.input[0] not in ctx:
            continue
        if wrapper.get_initializer(node.input[0]) is not None:
            continue  # a weight quantizer: constants, computed alike
        out_f = np.asarray(ctx[node.output[0]])[r:r + 1].reshape(-1)
        out_e = exact[node.output[0]].reshape(-1)
        diff = [k for k in range(len(out_e)) if Fraction(float(out_f[k])) != out_e[k]]
        if not diff:
            continue
        k = diff[0]
        x_e = exact[node.input[0]].reshape(-1)[k]
        x_f = np.asarray(ctx[node.input[0]])[r:r + 1].reshape(-1)[k]
        if node.op_type == "MultiThreshold":
            t = wrapper.get_initializer(node.input[1])
            ch = k % t.shape[0] if t.shape[0] > 1 else 0
            params = [Fraction(float(v)) for v in t[ch]]
        elif node.op_type == "Quant":
            s = Fraction(float(np.asarray(wrapper.get_initializer(node.input[1])).reshape(-1)[0]))
            bits = int(float(np.asarray(wrapper.get_initializer(node.input[3])).reshape(-1)[0]))
            params = (s, bits)
        else:
            params = None
        dist, err = _boundary(node, x_e, x_f, params)
        return {"node": node.name, "element": k, "exact": float(x_e), "float32": float(x_f),
                "distance": dist, "float32_error": err}
    return None
