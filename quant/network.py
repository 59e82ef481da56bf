"""The quantized MLP: a float QAT forward for training and an integer forward for eval.

``QuantMLP`` in training mode is the usual fake-quantized network: integer input values times the
input scale, then per hidden layer ``linear (quantized weights) -> batchnorm -> activation
quantizer``, and a last quantized linear layer whose bias is rounded to whole accumulator units.
In eval mode its forward runs in the integer domain: :meth:`QuantMLP.integer_layers` turns the
float state into :class:`bitfab.model.Dense` layers (integer weights, batchnorm folded into
integer thresholds by :mod:`bitfab.quant.fold`), and :meth:`QuantMLP.integer_forward` executes
them with float64 torch tensors that hold only integers below ``2**53``, so every sum is exact.
That is the torch reference the golden model is compared with, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitfab.errors import BitfabError
from bitfab.model import Dense, InputFormat, IntegerModel, NoOutput, Requant

from .fold import fold_requant, fold_thresholds
from .quantizers import BipolarActivation, FloatWeight, UniformActivation, WeightQuantizer
from .ste import round_half_up, ste

__all__ = ["QuantDense", "QuantMLP", "QuantizedLayers", "make_activation"]

_EXACT = 2.0 ** 53


def make_activation(bits: int | None) -> nn.Module:
    """Return the activation for ``bits``: ``None`` ReLU (float), 1 bipolar, 2..8 unsigned."""
    if bits is None:
        return nn.ReLU()
    if bits == 1:
        return BipolarActivation()
    return UniformActivation(bits)


class QuantDense(nn.Module):
    """A linear layer whose weights pass through ``quantizer`` (no bias: batchnorm follows,
    except in the last layer, which has a bias rounded to whole accumulator units)."""

    def __init__(self, n_in: int, n_out: int, quantizer: WeightQuantizer, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.quantizer = quantizer
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        quantizer.init_(self.weight)

    def qweight(self) -> torch.Tensor:
        return self.quantizer(self.weight)


class QuantizedLayers:
    """What training asks of a quantized network, over its ``layers`` (each with a
    ``quantizer`` and a ``weight``): the quantizers' penalty, post-step and schedule hooks and
    the integer weights (the weight-freezing metric)."""

    def penalty(self) -> torch.Tensor:
        return sum(layer.quantizer.penalty(layer.weight) for layer in self.layers)

    @torch.no_grad()
    def post_step(self) -> None:
        for layer in self.layers:
            layer.quantizer.post_step(layer.weight)

    @torch.no_grad()
    def set_progress(self, frac: float) -> None:
        for layer in self.layers:
            layer.quantizer.set_progress(frac, layer.weight)

    def discrete(self) -> list[np.ndarray]:
        """Return the integer weights of every layer (for the weight-freezing metric)."""
        return [layer.quantizer.discrete(layer.weight) for layer in self.layers]


class QuantMLP(QuantizedLayers, nn.Module):
    """A fully connected network with quantized weights and activations.

    Parameters
    ----------
    n_in, n_out : int
    hidden : sequence of int
    weight_quant : callable ``shape -> WeightQuantizer``
        Builds the quantizer of every layer.
    act_bits : int or None
        1 (bipolar), 2..8 (unsigned levels) or ``None`` (ReLU: the float reference).
    input_format : InputFormat
        Format of the integer input values.
    input_scale : float
        Real value of one input unit.
    act_stage : ``"threshold"`` or ``"requant"``
        How batchnorm and the activation fold at export: integer thresholds (exact) or an integer
        bias plus a requant multiplier and shift (multi-bit activations only; approximate, see
        :func:`bitfab.quant.fold.fold_requant`).
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int,
                 weight_quant: Callable[[tuple], WeightQuantizer], act_bits: int | None,
                 input_format: InputFormat, input_scale: float, act_stage: str = "threshold"):
        super().__init__()
        if act_stage not in ("threshold", "requant"):
            raise BitfabError(f"act_stage must be 'threshold' or 'requant', not {act_stage!r}")
        if act_stage == "requant" and (act_bits is None or act_bits < 2):
            raise BitfabError(f"act_stage 'requant' needs 2..8-bit activations, "
                              f"not act_bits={act_bits!r}")
        self.act_stage = act_stage
        sizes = [int(n_in), *(int(h) for h in hidden), int(n_out)]
        if any(s < 1 for s in sizes):
            raise BitfabError(f"layer sizes must be positive, not {sizes}")
        self.sizes = sizes
        self.input_format = input_format
        self.input_scale = float(input_scale)
        self.act_bits = act_bits
        n = len(sizes) - 1
        self.layers = nn.ModuleList(
            QuantDense(a, b, weight_quant((b, a)), bias=(i == n - 1))
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.bns = nn.ModuleList(nn.BatchNorm1d(h) for h in sizes[1:-1])
        self.act = make_activation(act_bits)
        # logits = exp(log_scale) * (acc + bias): a positive factor never changes the argmax
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    @property
    def is_float(self) -> bool:
        return isinstance(self.layers[0].quantizer, FloatWeight)

    def _units(self) -> list[float]:
        """Real value of one input unit of every layer."""
        step = 1.0 if self.is_float else float(self.act.step)
        return [self.input_scale] + [step] * (len(self.layers) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: float logits. Eval (quantized recipes): the last layer's exact integer
        accumulators (float64), from :meth:`integer_forward`."""
        if not self.training and not self.is_float:
            return self.integer_forward(x)[0][-1]
        return self.float_forward(x)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized float network (batchnorm per its mode)."""
        h = x.to(torch.float32) * self.input_scale
        for layer, bn in zip(self.layers[:-1], self.bns):
            h = self.act(bn(F.linear(h, layer.qweight())))
        last = self.layers[-1]
        out = F.linear(h, last.qweight())
        if self.is_float:
            out = out + last.bias
        else:
            # whole accumulator units: unit = input unit * weight scale (exported exactly)
            unit = self._units()[-1] * last.quantizer.scale(last.weight)
            out = out + ste(last.bias, round_half_up(last.bias.detach() / unit) * unit)
        return out * torch.exp(self.log_scale)

    # --- the integer network ----------------------------------------------------------------------

    @torch.no_grad()
    def integer_layers(self) -> list[Dense]:
        """Return the exported layers: integer weights, folded thresholds, integer last bias."""
        if self.is_float:
            raise BitfabError("the float recipe has no integer form: it is not exportable")
        units = self._units()
        fmt = self.input_format
        out = []
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            w_int, alpha, enc = layer.quantizer.integer(layer.weight)
            a = units[i] * alpha
            if i == n - 1:
                bias = round_half_up(layer.bias.detach().double() / a).numpy().astype(np.int64)
                out.append(Dense(w_int, enc, fmt, NoOutput(), bias, name=f"fc{i}"))
                break
            dense = Dense(w_int, enc, fmt, NoOutput(), None, name=f"fc{i}")
            bn = self.bns[i]
            lo, hi = dense.acc_range
            stats = (a, bn.running_mean.double().numpy(), bn.running_var.double().numpy(), bn.eps,
                     bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy())
            if self.act_stage == "requant":
                bias, stage = fold_requant(*stats, self.act.step, self.act.bits, lo, hi)
                out.append(dense.replace(output=stage, bias=bias))
            else:
                stage = fold_thresholds(*stats, self.act.offsets(), lo, hi)
                out.append(dense.replace(output=stage))
            fmt = self.act.out_format()
        return out

    @torch.no_grad()
    def integer_forward(self, x, layers: list[Dense] | None = None):
        """Execute the integer layers with torch; return ``(accumulators, outputs)`` per layer.

        ``x`` holds integer input values. Tensors are float64 holding integers; every product and
        partial sum stays below ``2**53`` (checked), so the float matmul is exact.
        """
        layers = self.integer_layers() if layers is None else layers
        v = torch.from_numpy(np.asarray(x, dtype=np.float64).copy())
        accs, outs = [], []
        for i, layer in enumerate(layers):
            if i and layer.input.kind == "bipolar":
                v = 2 * v - 1  # the previous layer's 0/1 output is the bipolar code
            w = torch.from_numpy(layer.weights.astype(np.float64))
            bound = float(v.abs().max()) * float(w.abs().sum(1).max()) + float(
                np.abs(layer.bias).max())
            if bound >= _EXACT:
                raise BitfabError(f"layer {i}: accumulators can reach {bound:.3g}, beyond the "
                                  f"exact float64 range")
            acc = v @ w.T + torch.from_numpy(layer.bias.astype(np.float64))
            accs.append(acc)
            if isinstance(layer.output, NoOutput):
                v = acc
            elif isinstance(layer.output, Requant):
                r = layer.output  # int64: acc * multiplier stays below 2**62 (checked by Dense)
                prod = acc.to(torch.int64) * torch.from_numpy(r.multiplier.copy())
                v = torch.clamp((prod + r.offset) >> r.shift, r.lo, r.hi).to(torch.float64)
            else:
                t = torch.from_numpy(layer.output.thresholds.astype(np.float64))
                up = torch.from_numpy(layer.output.direction > 0)[None, :]
                v = torch.zeros_like(acc)
                for k in range(t.shape[1]):
                    v += torch.where(up, acc >= t[:, k], acc <= t[:, k]).to(torch.float64)
            outs.append(v)
        return accs, outs

    def export(self, name: str = "model", metadata: dict | None = None,
               extras: dict | None = None) -> IntegerModel:
        """Return the :class:`~bitfab.model.IntegerModel` of this network."""
        return IntegerModel(tuple(self.integer_layers()), input_scale=self.input_scale,
                            metadata=metadata or {}, extras=extras or {}, name=name)
