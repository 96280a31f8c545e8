"""Exceptions raised by pneumocnn.

Every error a user can cause derives from :class:`PneumocnnError`, so one ``except`` clause
catches them all, and each names the file or input it is about.
"""

from __future__ import annotations


class PneumocnnError(Exception):
    """Base class of every error raised by pneumocnn."""


class InputError(PneumocnnError, ValueError):
    """An image input could not be read or has an unusable shape or content.

    ``source`` names the input (a path, or a short description such as ``array[3]``) and
    ``reason`` says what is wrong with it.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class NotFrontalChestError(InputError):
    """An input whose DICOM tags say it is not a frontal chest X-ray of a person (the input
    guard, :mod:`pneumocnn.core.guard`): its ``reason`` begins ``not a frontal chest X-ray: ``
    and names the tag. It is not scored unless the guard is turned off."""


class ModelFileError(PneumocnnError, ValueError):
    """A model file is missing, is not a model, or lacks a valid pneumocnn description."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DatasetError(PneumocnnError, ValueError):
    """A labelled image folder does not have the layout or content training needs."""


class MissingDependencyError(PneumocnnError, ImportError):
    """An optional package needed for this operation is not installed."""
