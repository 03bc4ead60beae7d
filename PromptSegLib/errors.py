"""Errors PromptSegLib raises: each carries a one-line reason a user can act on."""


class PromptSegError(Exception):
    """Base class: anything the command line reports as a one-line reason and a non-zero exit."""


class InputImageError(PromptSegError):
    """The image cannot be used: unreadable, wrong dimension, empty, constant or not finite."""


class PromptError(PromptSegError):
    """A prompt names a target or region the vocabulary does not know, or one the model was not trained for."""


class ModelError(PromptSegError):
    """A model folder is missing files, fails its checksum, or does not match this code."""


class OutputError(PromptSegError):
    """An output cannot be written where it was asked for."""


class Cancelled(PromptSegError):
    """The caller set the cancel flag; nothing was written."""
