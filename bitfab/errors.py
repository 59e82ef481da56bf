"""Exceptions raised by bitfab.

Every error that a user can cause (a bad model file, a bad option, a missing tool) is a
:class:`BitfabError`; the CLI prints its message on one line and exits non-zero.
"""

__all__ = ["BitfabError", "ModelFormatError", "ModelRangeError", "ToolError", "VerificationError"]


class BitfabError(Exception):
    """Base class of every error that bitfab reports to a user."""


class ModelFormatError(BitfabError, ValueError):
    """A model (a ``.bfm`` file or an in-memory IntegerModel) is malformed.

    The message names the offending field, e.g. ``layers[1].weights: value 3 is not binary``.
    """


class ModelRangeError(BitfabError, ValueError):
    """Inputs given to a model lie outside the range that its input format declares."""


class ToolError(BitfabError, RuntimeError):
    """An external tool (Verilator, Icarus, yosys, nextpnr) is missing or failed."""


class VerificationError(BitfabError, AssertionError):
    """Two implementations that must agree bit for bit did not."""
