"""Errors raised while reading dataset files.

A real dataset of tens of thousands of clips always holds a few broken files (a truncated download,
a zero-byte WAV, a macOS ``._`` resource fork beside every JPEG). Decoders in :mod:`mmtune.data`
raise :class:`CorruptFileError` for a file that exists but cannot be decoded, so a loader can catch
exactly that, name the file, and skip or report it; a *missing* file stays a ``FileNotFoundError``,
because that is a wrong path or an incomplete extraction, not a bad file.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CorruptFileError"]


class CorruptFileError(Exception):
    """``path`` exists but cannot be decoded; ``reason`` says why (usually the decoder's message).

    The exception pickles (its ``args`` are ``(path, reason)``), so it crosses process boundaries
    (Ray workers, DataLoader workers) intact.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
        super().__init__(str(path), reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot decode '{self.path}': {self.reason}. "
            "Re-download or re-extract this file, or leave it out of the split's file list."
        )
