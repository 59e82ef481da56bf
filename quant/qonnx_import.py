"""QONNX in: a Brevitas ``export_qonnx`` graph (or a FINN-style ``MultiThreshold`` graph) as an
:class:`~bitfab.model.IntegerModel`.

The graph is cleaned with qonnx's own transformations (shape inference, constant folding with the
quantizers kept, batchnorm to affine), then walked from the input along one chain::

    Quant|BipolarQuant (the input)  ->  [ Gemm|MatMul|Conv (weights: Quant|BipolarQuant|integers)
    [Add] [Mul] ... [Relu]  ->  Quant|BipolarQuant|MultiThreshold  [MaxPool] [Flatten] ]*
    ->  Gemm|MatMul [Add]

Images (``(1, C, H, W)`` inputs) become the conv kinds of :mod:`bitfab.conv` (channels last);
a flatten permutes the next dense layer's columns from ONNX's ``(c, h, w)`` order.

Every activation between two quantizers is ``scale * (code + offset)`` (or ``scale * (+-1)``),
so a layer's real pre-activation is ``y[o] = A[o] * acc[o] + B[o]`` with ``acc`` the exact integer
accumulator of the integer weight codes on the integer codes. ``A`` and ``B`` are kept as exact
fractions of the float32 numbers in the graph, and the next quantizer's rounding boundaries on
``y`` become integer thresholds on ``acc`` (``ceil`` / ``floor`` of exact fractions): bitfab
computes the exact real arithmetic of the quantizers. With power-of-two scales QONNX's float32
execution is exact too and the two agree on every input; with other scales see docs/interop.md.

Only ``quant/`` knows ONNX; without the ``interop`` extra the functions here say which to install.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from bitfab.conv import Conv, Flatten, MaxPool
from bitfab.encodings import encoding_from_json
from bitfab.errors import ModelFormatError, ToolError
from bitfab.fileformat import input_format
from bitfab.model import (
    Binary,
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    NoOutput,
    Pow2,
    Ternary,
    Threshold,
    signed_bits,
)

__all__ = ["require_interop", "load_onnx", "clean", "import_qonnx", "weight_encoding",
           "quant_boundaries", "INPUT_SCALE_KEY", "OUTPUT_SCALE_KEY", "SUPPORTED"]

#: metadata_props keys bitfab's own export writes (the real value of one input / output unit)
INPUT_SCALE_KEY = "bitfab.input_scale"
OUTPUT_SCALE_KEY = "bitfab.output_scale"
#: per-layer facts the graph does not carry (names, accumulator widths, input formats)
LAYERS_KEY = "bitfab.layers"
#: what the walk accepts, named in every refusal
SUPPORTED = ("Quant/BipolarQuant (input, weights, activations), MultiThreshold, Gemm/MatMul, "
             "Conv (2-D), MaxPool, Add/Sub/Mul/Div with constants, Relu, BatchNormalization "
             "(absorbed), Flatten/Reshape, Identity/Dropout")
_ROUNDING = ("ROUND", "HALF_EVEN", "FLOOR", "CEIL")
_NOOPS = ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze")
#: bitfab threshold stages hold at most this many thresholds (8-bit activations)
_MAX_THRESHOLDS = 255
#: thresholds beyond this magnitude are clamped to the reachable accumulator range
_CLAMP = 1 << 40


def require_interop():
    """Import and return ``onnx``, refusing with the extra to install where it is missing."""
    try:
        import onnx
        importlib.import_module("qonnx")
    except ImportError as exc:
        raise ToolError(f"QONNX import/export needs the interop extra ({exc.name} is missing): "
                        f"pip install 'bitfab[interop]'") from None
    return onnx


def load_onnx(path) -> object:
    """Read an ONNX file into a qonnx ``ModelWrapper``; refuse a file that is no ONNX model."""
    onnx = require_interop()
    from google.protobuf.message import DecodeError
    from qonnx.core.modelwrapper import ModelWrapper
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: not an ONNX model (truncated or another format): "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no details'}"[:300]
                               ) from None
    if not proto.graph.node or not proto.graph.input:
        raise ModelFormatError(f"{path}: not an ONNX model (truncated or another format): "
                               f"the graph has no nodes or no input")
    return ModelWrapper(proto)


def _check_static(model) -> None:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelFormatError(f"the graph has {len(inputs)} inputs "
                               f"({', '.join(i.name for i in inputs)}); bitfab takes one")
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") or d.dim_value < 1 for d in dims):
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ModelFormatError(f"input {inputs[0].name!r}: dynamic shape {shape}; bitfab needs a "
                               f"static shape such as [1, features] (export with a fixed-size "
                               f"example input)")


def clean(model):
    """Return ``model`` cleaned with qonnx's transformations, quantizers kept and node names
    left as the file has them (so that a refusal names the node the user sees)."""
    from qonnx.transformation.batchnorm_to_affine import BatchNormToAffine
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveUniqueParameterTensors,
        RemoveStaticGraphInputs,
        RemoveUnusedTensors,
    )
    from qonnx.transformation.infer_shapes import InferShapes
    _check_static(model)
    for node in model.graph.node:  # qonnx's executor finds its ops by this domain
        if node.op_type in ("Quant", "BipolarQuant", "Trunc", "MultiThreshold"):
            node.domain = "qonnx.custom_op.general"
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    steps = [InferShapes(), GiveUniqueParameterTensors(),
             FoldConstants(exclude_op_types=["Quant", "BipolarQuant"]), RemoveUnusedTensors(),
             RemoveStaticGraphInputs()]
    if model.get_nodes_by_op_type("BatchNormalization"):
        steps += [BatchNormToAffine(), InferShapes(),
                  FoldConstants(exclude_op_types=["Quant", "BipolarQuant"])]
    for step in steps:
        model = model.transform(step)
    return model


# --- exact numbers --------------------------------------------------------------------------------


def _fractions(arr) -> np.ndarray:
    """Exact fractions of the float32 (or other) numbers in ``arr`` (an object array)."""
    a = np.asarray(arr)
    return np.vectorize(lambda v: Fraction(float(v)), otypes=[object])(a) if a.size \
        else np.zeros(a.shape, dtype=object)


def _ceil(f: Fraction) -> int:
    return -((-f.numerator) // f.denominator)


def _floor(f: Fraction) -> int:
    return f.numerator // f.denominator


@dataclass(frozen=True, eq=False)
class _Act:
    """An activation tensor: ``scale * (code + offset)`` (``int``) or ``scale * b`` with
    ``b = 2 * code - 1`` (``bipolar``); ``fmt`` the integer format of what bitfab carries."""

    scale: Fraction
    offset: int
    fmt: InputFormat | None
    #: ``(features,)`` or an image ``(H, W, C)``
    shape: tuple = ()
    #: after a flatten: bitfab's vector index -> the file's (c, h, w) index
    perm: np.ndarray | None = None


def _carrier(fmt: InputFormat) -> InputFormat:
    """The format a pool or flatten carries: the 0/1 codes of a bipolar activation."""
    return InputFormat.int(1, signed=False) if fmt.kind == "bipolar" else fmt


def quant_boundaries(lo: int, hi: int, rounding: str) -> list[tuple[Fraction, bool]]:
    """Return the boundaries on ``v = y / scale`` of ``code = round(clamp(v, lo, hi))``:
    ``code >= k`` iff ``v >= b_k`` (inclusive) or ``v > b_k`` (strict), for ``k = lo+1..hi``,
    as ``(b_k, inclusive)``.

    Examples
    --------
    >>> quant_boundaries(0, 3, "ROUND")
    [(Fraction(1, 2), False), (Fraction(3, 2), True), (Fraction(5, 2), False)]
    """
    out = []
    for k in range(lo + 1, hi + 1):
        if rounding in ("ROUND", "HALF_EVEN"):  # numpy round: ties to even
            out.append((Fraction(2 * k - 1, 2), k % 2 == 0))
        elif rounding == "FLOOR":
            out.append((Fraction(k), True))
        else:  # CEIL
            out.append((Fraction(k - 1), False))
    return out


# --- the walk -------------------------------------------------------------------------------------


class _Walk:
    def __init__(self, model):
        self.m = model
        self.inits = {i.name for i in model.graph.initializer}
        self.used: set[str] = set()

    def fail(self, node, what: str) -> ModelFormatError:
        return ModelFormatError(f"node {node.name!r} ({node.op_type}): {what}; bitfab imports "
                                f"{SUPPORTED}"[:600])

    def const(self, name: str, node, what: str) -> np.ndarray:
        value = self.m.get_initializer(name)
        if value is None:
            producer = self.m.find_producer(name)
            if producer is not None and producer.op_type in ("Quant", "BipolarQuant"):
                raise self.fail(node, f"{what} is a quantized tensor, not a constant")
            raise self.fail(node, f"{what} ({name!r}) is not a constant")
        return np.asarray(value)

    def consumer(self, tensor: str):
        nodes = self.m.find_consumers(tensor) or []
        if len(nodes) > 1:
            raise self.fail(nodes[1], f"tensor {tensor!r} feeds {len(nodes)} nodes; bitfab "
                                      f"imports one chain of layers (no branches)")
        if nodes:
            self.used.add(nodes[0].name)
        return nodes[0] if nodes else None

    def attr(self, node, name: str, default=None):
        from onnx import helper
        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    # --- quantizer parameters ---------------------------------------------------------------------

    def quant_params(self, node) -> dict:
        """Scale (float32 array), zero point, bits, signed, narrow, rounding of a Quant node;
        refuse what bitfab does not map."""
        if node.op_type == "BipolarQuant":
            scale = self.const(node.input[1], node, "the scale")
            return {"bipolar": True, "scale": scale.astype(np.float32)}
        scale = self.const(node.input[1], node, "the scale").astype(np.float32)
        zp = self.const(node.input[2], node, "the zero point")
        bits = self.const(node.input[3], node, "the bit width")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise self.fail(node, "scales must be positive and finite")
        if zp.size != 1 or not float(zp.reshape(-1)[0]).is_integer():
            raise self.fail(node, f"zero point {zp.reshape(-1)[:4].tolist()} is not an integer "
                                  f"(a per-tensor integer zero point of 0 is supported)")
        if float(zp.reshape(-1)[0]) != 0:
            raise self.fail(node, f"zero point {float(zp.reshape(-1)[0]):g} is not 0 (bitfab maps "
                                  f"symmetric quantizers)")
        if bits.size != 1 or not float(bits.reshape(-1)[0]).is_integer() \
                or not 1 <= float(bits.reshape(-1)[0]) <= 32:
            raise self.fail(node, f"bit width {bits.reshape(-1)[:4].tolist()} is not an integer "
                                  f"in 1..32")
        signed = bool(self.attr(node, "signed", 1))
        narrow = bool(self.attr(node, "narrow", 0))
        rounding = str(self.attr(node, "rounding_mode", "ROUND")).upper()
        if rounding not in _ROUNDING:
            raise self.fail(node, f"rounding_mode {rounding!r} is not one of {_ROUNDING}")
        nbits = int(float(bits.reshape(-1)[0]))
        if nbits == 1 and signed:
            return {"bipolar": True, "scale": scale}
        if nbits == 1 and narrow:
            raise self.fail(node, "a 1-bit unsigned narrow-range quantizer has one level")
        lo = -(1 << (nbits - 1)) + narrow if signed else 0
        hi = (1 << (nbits - 1)) - 1 if signed else (1 << nbits) - 1 - narrow
        return {"bipolar": False, "scale": scale, "bits": nbits, "signed": signed, "lo": lo,
                "hi": hi, "rounding": rounding}

    def weights(self, node, name: str, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(codes, scale)`` of a layer's weights: the integer codes with the output
        channel first (the other axes as the file has them) and the per-output-channel scale
        (exact fractions)."""
        q = self.m.find_producer(name)
        if q is None or q.op_type not in ("Quant", "BipolarQuant"):
            w = self.const(name, node, "the weights")
            if not np.all(np.isfinite(w)) or not np.all(w == np.round(w)):
                raise self.fail(node, "the weights are neither quantized (Quant/BipolarQuant) "
                                      "nor integers")
            codes, scale = w.astype(np.int64), np.ones(1, dtype=np.float32)
        else:
            self.used.add(q.name)
            w = self.const(q.input[0], q, "the float weights").astype(np.float32)
            p = self.quant_params(q)
            scale = p["scale"]
            if p["bipolar"]:
                codes = np.where(w >= 0, 1, -1).astype(np.int64)
            else:
                # exactly what qonnx computes (float32: divide, clamp, round)
                v = np.broadcast_to(w / scale, w.shape)
                v = np.where(v > p["hi"], np.float32(p["hi"]), v)
                v = np.where(v < p["lo"], np.float32(p["lo"]), v)
                codes = np.round(v).astype(np.int64)
        full = np.broadcast_to(scale, w.shape) if scale.ndim else np.full(w.shape, scale)
        codes, full = np.moveaxis(codes, out_axis, 0), np.moveaxis(full, out_axis, 0)
        flat = full.reshape(len(full), -1)
        if np.any(flat != flat[:, :1]):
            raise self.fail(node, "weight scales vary along an input axis (per-output-channel "
                                  "or per-tensor scales are supported)")
        return codes, _fractions(flat[:, 0])

    # --- the model --------------------------------------------------------------------------------

    def run(self) -> IntegerModel:
        g = self.m.graph
        inp = [i for i in g.input if i.name not in self.inits][0]
        shape = self.m.get_tensor_shape(inp.name)
        if len(shape) == 4:  # NCHW: bitfab's images are (H, W, C), channels last
            tshape: tuple = (shape[2], shape[3], shape[1])
        elif len(shape) in (1, 2):
            tshape = (int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0]),)
        else:
            raise ModelFormatError(f"input {inp.name!r} of shape {shape}: bitfab imports "
                                   f"vectors (batch, features) and images (batch, C, H, W)")
        node = self.consumer(inp.name)
        if node is None:
            raise ModelFormatError("the graph input feeds no node")
        while node is not None and node.op_type in _NOOPS and len(tshape) == 1:
            node = self.consumer(node.output[0])
        if node is None or node.op_type not in ("Quant", "BipolarQuant"):
            what = "nothing" if node is None else f"node {node.name!r} ({node.op_type})"
            raise ModelFormatError(f"the graph input goes to {what}; bitfab reads integers, so "
                                   f"the input must pass a Quant or BipolarQuant node first")
        p = self.quant_params(node)
        if np.asarray(p["scale"]).size != 1:
            raise self.fail(node, "per-channel input scales are not supported")
        s_in = float(np.asarray(p["scale"]).reshape(-1)[0])
        fmt = InputFormat.bipolar() if p["bipolar"] else InputFormat.int(p["bits"], p["signed"])
        act = _Act(Fraction(s_in), 0, fmt, tshape)
        input_scale = s_in
        tensor = node.output[0]
        layers: list = []
        out_scale = None
        self.decode: dict = {}
        while True:
            node = self.consumer(tensor)
            while node is not None and node.op_type in ("Identity", "Dropout"):
                tensor = node.output[0]
                node = self.consumer(tensor)
            if node is None:
                break
            index = len(layers)
            if node.op_type in _NOOPS:
                if len(act.shape) > 1:  # an image becomes a vector: a flatten layer
                    out = self.m.get_tensor_shape(node.output[0])
                    if out is None or int(np.prod(out[1:])) != int(np.prod(act.shape)) \
                            or len(out) != 2:
                        raise self.fail(node, f"reshapes the image {act.shape} to {out}; "
                                              f"only flattening to (1, features) is supported")
                    layers.append(Flatten(_carrier(act.fmt), act.shape, name=f"flatten{index}"))
                    h, w, c = act.shape
                    # bitfab's vector is (h, w, c) in stream order; ONNX's flatten is (c, h, w)
                    perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
                    act = _Act(act.scale, act.offset, act.fmt, (h * w * c,), perm)
                tensor = node.output[0]
                continue
            if node.op_type == "MaxPool":
                layer = self.maxpool(node, act, index)
                layers.append(layer)
                act = _Act(act.scale, act.offset, act.fmt, layer.out_shape)
                tensor = node.output[0]
                continue
            layer, tensor, act, out_scale = self.layer(node, act, index)
            layers.append(layer)
            if act is None:
                break
        if not any(la.kind in ("dense", "conv") for la in layers):
            raise ModelFormatError("the graph has no Gemm, MatMul or Conv layer after its input "
                                   "quantizer")
        if layers[-1].kind != "dense":
            raise ModelFormatError(f"the graph ends in a {layers[-1].kind} layer; bitfab imports "
                                   f"graphs that end in a dense (Gemm/MatMul) layer")
        if tensor not in [o.name for o in g.output]:
            raise ModelFormatError(f"tensor {tensor!r} is not the graph output; bitfab imports "
                                   f"one chain of layers ending at the output")
        left = [n for n in g.node if n.name not in self.used
                and not (n.op_type in ("Quant", "BipolarQuant") and n.input[0] in self.inits)]
        if left:
            raise self.fail(left[0], "this node is not on the chain from the input to the "
                                     "output")
        props = {p.key: p.value for p in self.m.model.metadata_props}
        if LAYERS_KEY in props:
            layers = _restore(layers, props[LAYERS_KEY])
        if INPUT_SCALE_KEY in props:
            input_scale = float(props[INPUT_SCALE_KEY])
        if OUTPUT_SCALE_KEY in props:
            out_scale = float(props[OUTPUT_SCALE_KEY]) if props[OUTPUT_SCALE_KEY] else None
        return IntegerModel(tuple(layers), input_scale, out_scale,
                            {"source": "qonnx", "qonnx_output": self.decode})

    def maxpool(self, node, act: _Act, index: int) -> MaxPool:
        if len(act.shape) != 3:
            raise self.fail(node, "max pooling of a vector")
        kernel = tuple(self.attr(node, "kernel_shape", []))
        strides = tuple(self.attr(node, "strides", kernel))
        if any(self.attr(node, "pads", [0])) or self.attr(node, "ceil_mode", 0) \
                or any(d != 1 for d in self.attr(node, "dilations", [1])) \
                or self.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise self.fail(node, "padding, ceil_mode and dilations are not supported in pooling")
        return MaxPool(_carrier(act.fmt), act.shape, kernel, strides, name=f"pool{index}")

    def layer(self, node, act: _Act, index: int):
        """Map one Gemm/MatMul/Conv (and what follows it up to the next quantizer) to a layer;
        return ``(layer, output tensor, the activation it emits or None, output scale)``."""
        alpha = beta = Fraction(1)
        if node.op_type in ("Gemm", "MatMul"):
            if len(act.shape) != 1:
                raise self.fail(node, f"reads the image {act.shape}; flatten it first")
            out_axis = 1
            if node.op_type == "Gemm":
                if self.attr(node, "transA", 0):
                    raise self.fail(node, "transA=1 is not supported")
                out_axis = 0 if self.attr(node, "transB", 0) else 1
                alpha = Fraction(float(np.float32(self.attr(node, "alpha", 1.0))))
                beta = Fraction(float(np.float32(self.attr(node, "beta", 1.0))))
            codes, s_w = self.weights(node, node.input[1], out_axis)
            if codes.ndim != 2 or codes.shape[1] != act.shape[0]:
                raise self.fail(node, f"weights of shape {list(codes.shape)} for "
                                      f"{act.shape[0]} inputs")
            if act.perm is not None:
                codes = codes[:, act.perm]
        elif node.op_type == "Conv":
            if len(act.shape) != 3:
                raise self.fail(node, "a 2-D convolution of a vector")
            codes, s_w = self.weights(node, node.input[1], 0)
            if codes.ndim != 4:
                raise self.fail(node, "only 2-D convolutions are imported")
            codes = codes.transpose(0, 2, 3, 1)  # (O, C/g, kh, kw) -> (O, kh, kw, C/g)
        else:
            raise self.fail(node, "expected a Gemm, MatMul or Conv layer here")
        n_out = codes.shape[0]
        a = np.array([alpha * act.scale * s for s in s_w], dtype=object)
        b = np.array([Fraction(0)] * n_out, dtype=object)
        if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2]:
            bias = self.const(node.input[2], node, "the bias").astype(np.float32)
            b = b + beta * np.broadcast_to(_fractions(bias), (n_out,))
        # what the codes add: offset * the weights' sum (a code + offset activation)
        int_bias = act.offset * codes.reshape(n_out, -1).sum(axis=1)
        build = self.builder(node, codes, act, index)
        tensor = node.output[0]
        relu = False
        while True:
            nxt = self.consumer(tensor)
            if nxt is None:
                break
            op = nxt.op_type
            if op in ("Identity", "Dropout") or (op in _NOOPS and node.op_type != "Conv"):
                pass
            elif op in ("Add", "Sub", "Mul", "Div") and not relu:
                other = [i for i in nxt.input if i != tensor]
                if len(other) != 1:
                    raise self.fail(nxt, "needs one constant operand")
                c = self.const(other[0], nxt, "the other operand").astype(np.float32)
                if c.size not in (1, n_out):
                    raise self.fail(nxt, f"a constant of shape {list(c.shape)} (scalar or one "
                                         f"per channel)")
                f = np.broadcast_to(_fractions(c.reshape(-1)), (n_out,))
                if op == "Add":
                    b = b + f
                elif op == "Sub":
                    if nxt.input[0] != tensor:
                        raise self.fail(nxt, "constant - tensor is not supported")
                    b = b - f
                elif op == "Mul":
                    if any(v == 0 for v in f):
                        raise self.fail(nxt, "a zero multiplier")
                    a, b = a * f, b * f
                else:
                    if nxt.input[0] != tensor or any(v == 0 for v in f):
                        raise self.fail(nxt, "only tensor / nonzero constant is supported")
                    a, b = a / f, b / f
            elif op == "Relu" and not relu:
                relu = True
            elif op in ("Quant", "BipolarQuant", "MultiThreshold"):
                return self.stage(nxt, build, int_bias, a, b, relu, act)
            else:
                raise self.fail(nxt, "cannot be absorbed between a layer and its activation "
                                     "quantizer" if op not in ("Gemm", "MatMul", "Conv")
                                else "a second layer with no activation quantizer between")
            tensor = nxt.output[0]
        # the last layer: accumulators out, which must be the real outputs' integer grid
        if relu:
            raise ModelFormatError(f"layer {index}: a Relu at the output without a quantizer is "
                                   f"not supported")
        extra = []
        for o in range(n_out):
            q = b[o] / a[o]
            if q.denominator != 1:
                raise self.fail(node, f"the output bias of channel {o} ({float(b[o]):g}) is not a "
                                      f"whole number of accumulator units; add an output "
                                      f"quantizer")
            extra.append(int(q))
        layer = build(NoOutput(), int_bias + np.array(extra, dtype=np.int64))
        scale = float(a[0]) if all(v == a[0] for v in a) and a[0] > 0 else None
        self.decode = {"scale": [float(v) for v in a], "offset": 0, "bipolar": False}
        return layer, tensor, None, scale

    def builder(self, node, codes, act: _Act, index: int):
        """``(output stage, integer bias) -> layer`` of a Gemm/MatMul or Conv node."""
        enc = weight_encoding(codes)
        if node.op_type != "Conv":
            return lambda stage, bias: Dense(codes, enc, act.fmt, stage, bias, name=f"fc{index}")
        if self.attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") \
                or any(d != 1 for d in self.attr(node, "dilations", [1])):
            raise self.fail(node, "auto_pad and dilations are not supported")
        pads = list(self.attr(node, "pads", [0, 0, 0, 0]))
        strides = tuple(self.attr(node, "strides", [1, 1]))
        groups = int(self.attr(node, "group", 1))
        padding = ((pads[0], pads[2]), (pads[1], pads[3]))
        pad_value = None
        if any(pads):
            if act.fmt.kind == "bipolar":
                raise self.fail(node, "zero padding of a bipolar (-1/+1) activation has no code")
            pad_value = -act.offset  # the code of the real value 0
            if not act.fmt.min_value <= pad_value <= act.fmt.max_value:
                raise self.fail(node, f"zero padding needs code {pad_value}, outside "
                                      f"{act.fmt.describe()}")
        return lambda stage, bias: Conv(codes, enc, act.fmt, act.shape, strides, padding,
                                        pad_value, groups, stage, bias, name=f"conv{index}")

    def stage(self, q, build, int_bias, a, b, relu: bool, act: _Act):
        """Turn the quantizer ``q`` of ``y = a * acc + b`` into the layer's threshold stage."""
        n_out = len(a)
        int_bias = int_bias.copy()
        b = b.copy()
        for o in range(n_out):  # a whole number of accumulator units is the layer's bias
            units = b[o] / a[o]
            if units.denominator == 1 and abs(units) < _CLAMP:
                int_bias[o] += int(units)
                b[o] = Fraction(0)
        acc_lo, acc_hi = build(NoOutput(), int_bias).acc_range
        if q.op_type == "MultiThreshold":
            t = self.const(q.input[1], q, "the thresholds").astype(np.float32)
            if t.ndim != 2 or t.shape[0] not in (1, n_out):
                raise self.fail(q, f"thresholds of shape {list(t.shape)} (channels, steps)")
            t = np.broadcast_to(t, (n_out, t.shape[1]))
            bounds = [[(Fraction(float(v)), True) for v in row] for row in t]
            o_scale = Fraction(float(np.float32(self.attr(q, "out_scale", 1.0))))
            o_bias = Fraction(float(np.float32(self.attr(q, "out_bias", 0.0))))
            steps = t.shape[1]
            if relu:
                raise self.fail(q, "a Relu before a MultiThreshold is not supported")
            if steps == 1 and o_bias == -o_scale / 2 and o_scale > 0:
                nxt = _Act(o_scale / 2, 0, InputFormat.bipolar())
            elif o_scale > 0 and (o_bias / o_scale).denominator == 1:
                nxt = _Act(o_scale, int(o_bias / o_scale), None)
            else:
                raise self.fail(q, f"out_scale {float(o_scale):g} / out_bias {float(o_bias):g} "
                                   f"do not give integer levels")
        else:
            p = self.quant_params(q)
            scale = np.asarray(p["scale"])
            if scale.size != 1:
                raise self.fail(q, "per-channel activation scales are not supported")
            s = Fraction(float(scale.reshape(-1)[0]))
            if p["bipolar"]:
                if relu:
                    raise self.fail(q, "a Relu before a bipolar quantizer is constant")
                bounds = [[(Fraction(0), True)]] * n_out
                nxt = _Act(s, 0, InputFormat.bipolar())
            else:
                lo = max(p["lo"], 0) if relu else p["lo"]
                if p["hi"] - lo > _MAX_THRESHOLDS:
                    raise self.fail(q, f"{p['hi'] - lo + 1} levels; bitfab threshold stages "
                                       f"take at most {_MAX_THRESHOLDS + 1} (8-bit activations)")
                bounds = [[(v * s, inc) for v, inc in quant_boundaries(lo, p["hi"],
                                                                      p["rounding"])]] * n_out
                nxt = _Act(s, lo, None)
        thresholds = np.zeros((n_out, len(bounds[0])), dtype=np.int64)
        direction = np.ones(n_out, dtype=np.int64)
        for o in range(n_out):
            up = a[o] > 0
            direction[o] = 1 if up else -1
            lo_o, hi_o = int(acc_lo[o]), int(acc_hi[o])
            for k, (bound, inclusive) in enumerate(bounds[o]):
                t = (bound - b[o]) / a[o]
                if up:  # a * acc + b >= bound  <=>  acc >= t (inclusive) or acc > t
                    v = _ceil(t) if inclusive else _floor(t) + 1
                else:  # a < 0:  acc <= t (inclusive) or acc < t
                    v = _floor(t) if inclusive else _ceil(t) - 1
                if abs(v) > _CLAMP:  # far outside: the same decision at the reachable edge
                    v = (lo_o if v < 0 else hi_o + 1) if up else (lo_o - 1 if v < 0 else hi_o)
                thresholds[o, k] = v
        stage = Threshold(thresholds, direction)
        if nxt.fmt is None:
            nxt = _Act(nxt.scale, nxt.offset, InputFormat.int(stage.out_bits, signed=False))
        layer = build(stage, int_bias)
        nxt = _Act(nxt.scale, nxt.offset, nxt.fmt, layer.out_shape)
        self.decode = {"scale": [float(nxt.scale)] * n_out, "offset": nxt.offset,
                       "bipolar": nxt.fmt.kind == "bipolar"}
        return layer, q.output[0], nxt, float(nxt.scale)


def _restore(layers: list, text: str) -> list:
    """Apply the per-layer facts bitfab's export recorded (where they still fit)."""
    try:
        facts = json.loads(text)
        if not isinstance(facts, list) or len(facts) != len(layers):
            return layers
        return [la.replace(name=f["name"], acc_bits=f["acc_bits"],
                           input=input_format(f["input"], f"{LAYERS_KEY}[{i}].input"),
                           encoding=encoding_from_json(f["encoding"],
                                                       f"{LAYERS_KEY}[{i}].encoding"))
                for i, (la, f) in enumerate(zip(layers, facts))]
    except (ValueError, TypeError, KeyError):
        raise ModelFormatError(f"metadata_props {LAYERS_KEY} does not fit the graph") from None


def weight_encoding(codes: np.ndarray):
    """Return the narrowest encoding that holds the integer weight ``codes``: binary (+-1),
    ternary ({-1, 0, 1}), pow2 (0 and +-2^e, more than one exponent) or int k-bit.

    Examples
    --------
    >>> weight_encoding(np.array([[1, -1], [-1, 1]])).kind
    'binary'
    >>> weight_encoding(np.array([[0, -4], [2, 1]])).describe()
    'pow2 (2^0..2^2)'
    """
    values = set(np.unique(codes).tolist())
    if values <= {-1, 1}:
        return Binary()
    if values <= {-1, 0, 1}:
        return Ternary()
    mags = {abs(v) for v in values if v}
    if all(m & (m - 1) == 0 for m in mags) and max(mags) <= 1 << 30:
        exps = [m.bit_length() - 1 for m in mags]
        return Pow2(min(exps), max(exps), 0 in values)
    return IntWeights(max(2, signed_bits(min(values), max(values))))


def import_qonnx(source) -> IntegerModel:
    """Return the IntegerModel of a QONNX graph (a path or a qonnx ``ModelWrapper``).

    Raises
    ------
    ModelFormatError
        Not ONNX, or a node, attribute or shape that bitfab does not map (the message names the
        node, its op type and what is supported).
    """
    model = source if hasattr(source, "graph") else load_onnx(source)
    try:
        model = clean(model)
    except ModelFormatError:
        raise
    except Exception as exc:  # qonnx's own transformations on a graph they cannot handle
        raise ModelFormatError(f"qonnx cannot clean the graph: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300]) from None
    return _Walk(model).run()
