"""The one error the parser raises: a protocol error that knows its SIP answer."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that cannot be accepted as SIP.

    ``status`` is the response a server should send (400, 413, 414, 505,
    513, ...), or ``None`` when no reply is possible (a broken response, or a
    request whose first line or top Via cannot be read). The receive loop
    turns the error into that reply or a drop; nothing else escapes the
    parser.
    """

    __slots__ = ("status", "reason")

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.status!r}, {self.reason!r})"


def bad(reason: str) -> ProtocolError:
    """A 400 Bad Request carrying ``reason``."""
    return ProtocolError(400, reason)
