"""Errors that name the problem and the fix.

Every user-facing validation in mmtune collects *all* problems before raising, each with the path
of the offending key (``train.lr``, ``params.alpha``), so a user fixes a config in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "StorageError", "did_you_mean", "shorten", "unknown_name_message"]

SHOWN_CHARS = 80  # a value quoted in a message is cut to this many characters
MESSAGE_CHARS = 4_000  # one problem's message (its path: PATH_CHARS); longer ones are cut. Values quoted in
# messages are cut much shorter (SHOWN_CHARS, `shorten`); this bound is the safety net for the rest, and leaves
# room for the layout help a dataset loader prints (~2,000 characters).
PATH_CHARS = 200
MAX_PROBLEMS = 50  # problems listed by one ConfigError; the rest are counted


def shorten(value: object, width: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``width`` characters (``'xxxx… (5,002 characters)``), for messages."""
    return _cut(repr(value), width)


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return f"{text[:width - 1]}… ({len(text):,} characters)"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest known name, or ``""`` when none is close."""
    if len(str(name)) > 100:  # no known name is that long, and difflib's cost grows with it
        return ""
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown method 'ogmm'. Did you mean 'ogm'? Known methods: …``; a long name is quoted cut (``shorten``)."""
    known = sorted(known)
    return f"unknown {kind} {shorten(str(name))}.{did_you_mean(name, known)} Known {kind}s: {', '.join(known)}."


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """One or more problems in user input. ``str(err)`` lists every problem on its own line."""

    headline = "invalid configuration"  # what the CLI prints above the problems

    def __init__(self, problems: Problem | str | Iterable[Problem]):
        if isinstance(problems, (str, Problem)):
            problems = [problems if isinstance(problems, Problem) else Problem("", problems)]
        # However large the input that caused them, the problems stay readable: each one cut to a few
        # lines, and the message lists at most MAX_PROBLEMS of them (``problems`` keeps them all).
        self.problems: list[Problem] = [
            p if len(p.path) <= PATH_CHARS and len(p.message) <= MESSAGE_CHARS
            else Problem(_cut(p.path, PATH_CHARS), _cut(p.message, MESSAGE_CHARS)) for p in problems
        ]
        lines = [f"  - {p}" for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"  … and {len(self.problems) - MAX_PROBLEMS:,} more problems. Fix these first.")
        super().__init__("\n".join(lines))

    def prefixed(self, prefix: str) -> ConfigError:
        """The same problems with ``prefix.`` in front of every path."""
        return ConfigError(
            Problem(f"{prefix}.{p.path}" if p.path else prefix, p.message) for p in self.problems
        )


class StorageError(ConfigError):
    """The results storage cannot be used: a full or read-only disk, or a damaged file in a sweep
    folder. Each problem names the path, what is wrong and how to recover."""

    headline = "storage problem"
