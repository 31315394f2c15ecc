"""Errors that name the problem and the fix.

Every user-facing validation in mmtune collects *all* problems before raising, each with the path
of the offending key (``train.lr``, ``params.alpha``), so a user fixes a config in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "did_you_mean", "unknown_name_message"]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest known name, or ``""`` when none is close."""
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    return f"unknown {kind} '{name}'.{did_you_mean(name, known)} Known {kind}s: {', '.join(known)}."


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """One or more problems in user input. ``str(err)`` lists every problem on its own line."""

    def __init__(self, problems: Problem | str | Iterable[Problem]):
        if isinstance(problems, (str, Problem)):
            problems = [problems if isinstance(problems, Problem) else Problem("", problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(f"  - {p}" for p in self.problems))

    def prefixed(self, prefix: str) -> ConfigError:
        """The same problems with ``prefix.`` in front of every path."""
        return ConfigError(
            Problem(f"{prefix}.{p.path}" if p.path else prefix, p.message) for p in self.problems
        )
