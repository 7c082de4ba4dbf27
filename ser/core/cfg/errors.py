"""One error type for everything the routing-script pipeline rejects.

A :class:`CfgError` always names the place in the ORIGINAL source the
operator wrote (file, line, column; 1-based), also when the offending token
came from an included file or from the expansion of a ``#!define``. Stages
collect errors instead of stopping at the first one; :class:`CfgErrors`
carries the whole list out of the pipeline.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

Pos = tuple[str, int, int]
"""(file, line, column) of a token in the original source, 1-based."""

NOWHERE: Pos = ("<none>", 0, 0)


@dataclass(frozen=True)
class CfgError(Exception):
    file: str
    line: int
    col: int
    message: str
    hint: str | None = None

    @classmethod
    def at(cls, pos: Pos, message: str, hint: str | None = None) -> CfgError:
        return cls(pos[0], pos[1], pos[2], message, hint)

    @property
    def pos(self) -> Pos:
        return (self.file, self.line, self.col)

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class CfgErrors(Exception):
    """Every error found by one run of the pipeline, in source order."""

    def __init__(self, errors: Iterable[CfgError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A ``did you mean 'x'?`` hint for a misspelt name, or None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f"did you mean '{close[0]}'?" if close else None
