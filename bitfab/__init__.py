"""bitfab: quantized neural networks to bit-exact FPGA hardware.

The :class:`~bitfab.model.IntegerModel` is the contract: ``bitfab.quant`` writes it, ``bitfab.sim``
(the golden model), ``bitfab.hw`` and ``bitfab.boards`` read it.
"""

from .conv import Add, AvgPool, Conv, Flatten, MaxPool  # register the image kinds
from .errors import BitfabError, ModelFormatError, ModelRangeError, ToolError, VerificationError
from .lstm import Lstm  # registers the lstm layer kind, so IntegerModel.load reads it
from .lstm_mps import LstmMps  # registers the lstm_mps layer kind (MPS gate matrices)
from .model import (
    Binary,
    Dense,
    InputFormat,
    IntegerModel,
    IntWeights,
    Lut,
    NoOutput,
    Pow2,
    Requant,
    Ternary,
    Threshold,
)

__version__ = "0.1.0"

__all__ = [
    "BitfabError", "ModelFormatError", "ModelRangeError", "ToolError", "VerificationError",
    "IntegerModel", "Dense", "InputFormat", "Binary", "Ternary", "Pow2", "Lut", "IntWeights",
    "Threshold", "Requant", "NoOutput", "Lstm", "LstmMps", "Conv", "MaxPool", "AvgPool",
    "Flatten", "Add", "load",
]


def load(path) -> IntegerModel:
    """Read a ``.bfm`` model file (see :meth:`bitfab.model.IntegerModel.load`)."""
    return IntegerModel.load(path)
