"""Expected faults: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class DmsError(Exception):
    """A fault the user can fix (bad input file, bad config, unreachable device...).

    The message names the input and what is wrong with it.
    """

    exit_code = 2


class InputError(DmsError):
    """A file or argument given by the user cannot be used."""


class ModelError(DmsError):
    """A model file is missing, not ONNX, or has an unexpected signature."""
