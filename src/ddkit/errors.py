"""Exceptions raised by ddkit for bad input.

Every problem a user can cause (unknown dataset, impossible IPC, a file that is not a
distilled set, a tampered file, NaNs, a model that does not fit the data, an unwritable
path, an unknown config key) raises a subclass of :class:`DDKitError` whose message names
the problem and the fix. The CLI prints that message as one line on stderr and exits 2.
"""

from __future__ import annotations


class DDKitError(ValueError):
    """Base class of every user-facing ddkit error (a ``ValueError``)."""


class DatasetNotFoundError(DDKitError):
    """A dataset is unknown, or known but not present on disk and not downloadable."""


class ConfigError(DDKitError):
    """A method or evaluation setting is unknown or has an invalid value."""


class ArtifactError(DDKitError):
    """A file is not a valid distilled set, or its hash does not match its contents."""


class ModelError(DDKitError):
    """A model name is unknown or the model does not fit the image size/channels."""


class OutputError(DDKitError):
    """An output path cannot be written."""
