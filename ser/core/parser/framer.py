"""Cutting a byte stream (TCP, TLS) into whole SIP messages.

Theory of operation: bytes are appended to a buffer; a message is complete
when its header block has ended and Content-Length bytes of body follow
(RFC 3261 18.3: Content-Length is mandatory on a stream). CRLF keep-alives
between messages (RFC 5626 3.5.1) are consumed: each double CRLF "ping" is
counted in ``pings`` so the transport can answer it with a CRLF "pong".
With ``accept_no_cl`` (Kamailio's ``tcp_accept_no_cl``, for HTTP requests
such as a GET on the SIP port) a header block without Content-Length is a
whole message with no body.
"""

from __future__ import annotations

import re

from .errors import ProtocolError

# matched at the start of a header line (``$``: the end of that line)
_CL = re.compile(rb"(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)


class StreamFramer:
    """Feed bytes in any chunking; get whole messages out, in order."""

    __slots__ = ("buf", "max_size", "pings", "_error", "accept_no_cl")

    def __init__(self, max_size: int = 65535, accept_no_cl: bool = False) -> None:
        self.buf = bytearray()
        self.max_size = max_size
        self.accept_no_cl = accept_no_cl
        self.pings = 0
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Whole messages completed by ``data``. Raises ProtocolError on a
        broken stream (the connection should then be closed) — after the
        whole messages before the break have been returned: then the error
        comes with the next call."""
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        try:
            self._cut(data, out)
        except ProtocolError as e:
            if not out:
                raise
            self._error = e
        return out

    def _cut(self, data: bytes, out: list[bytes]) -> None:
        # Cut by offset over one buffer: ``data`` itself when nothing is held
        # (a message that arrives whole is passed on without a copy), else the
        # held bytes with ``data`` appended; what is left is kept at the end.
        buf = self.buf
        if buf:
            buf += data
            s: bytes | bytearray = buf
        else:
            s = data
        n = len(s)
        pos = 0
        try:
            while pos < n:
                if s[pos] in (13, 10):
                    if s.startswith(b"\r\n\r\n", pos):
                        self.pings += 1
                        pos += 4
                    elif n - pos < 4 and s[pos:] in (b"\r", b"\r\n", b"\r\n\r"):
                        break               # more bytes decide: a ping or a stray CRLF
                    else:
                        pos += 1
                    continue
                end = s.find(b"\r\n\r\n", pos)
                sep = 4
                if end < 0:
                    end = s.find(b"\n\n", pos)
                    sep = 2
                if end < 0:
                    if n - pos > self.max_size:
                        raise ProtocolError(513, "Message Too Large (header block)")
                    break
                total = end + sep - pos + self._content_length(bytes(s[pos:end]),
                                                               self.accept_no_cl)
                if total > self.max_size:
                    raise ProtocolError(513, "Message Too Large")
                if n - pos < total:
                    break
                out.append(bytes(s[pos:pos + total]))   # s itself when it is one message
                pos += total
        finally:
            if s is buf:
                del buf[:pos]
            elif pos < n:
                buf += s[pos:]

    @staticmethod
    def _content_length(head: bytes, accept_no_cl: bool = False) -> int:
        # the lines that can be Content-Length (or its compact form l), found
        # on a lowered copy; the pattern is matched only there
        low = head.lower()
        found = []
        if low.startswith((b"content-length", b"l")):
            m = _CL.match(head)
            if m is not None:
                found.append(m.group(1))
        for needle in (b"\ncontent-length", b"\nl"):
            i = low.find(needle)
            while i >= 0:
                m = _CL.match(head, i + 1)
                if m is not None:
                    found.append(m.group(1))
                i = low.find(needle, i + 1)
        if not found:
            if accept_no_cl:
                return 0
            raise ProtocolError(400, "missing Content-Length on a stream transport")
        value = found[0].strip()
        if len(found) > 1 and any(v.strip() != value for v in found):
            raise ProtocolError(400, "conflicting Content-Length headers")
        if not value.isdigit() or len(value) > 10:
            raise ProtocolError(400, "bad Content-Length")
        return int(value)

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self.buf)
