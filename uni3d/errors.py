"""The library's error for input it cannot use, importable without torch (a job's ``main`` catches it)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file or folder that is not a checkpoint uni3d can load: missing, unreadable, of another format, or with
    tensors that fit no preset. The message is one line and names the path."""
