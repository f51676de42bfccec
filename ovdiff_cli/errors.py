"""Errors a user can act on: the CLI prints their message as one line and exits non-zero."""


class OvdiffError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class CacheError(OvdiffError):
    """The cache cannot be opened or written (version, disk, permissions)."""


class ModelLoadError(OvdiffError):
    """Model weights could not be loaded."""
