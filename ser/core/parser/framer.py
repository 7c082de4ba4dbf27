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

_CL = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$")


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
        buf = self.buf
        buf += data
        while buf:
            if buf[0] in (13, 10):
                if not self._skip_keepalive():
                    break
                continue
            end = buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end = buf.find(b"\n\n")
                sep = 2
            if end < 0:
                if len(buf) > self.max_size:
                    raise ProtocolError(513, "Message Too Large (header block)")
                break
            cl = self._content_length(bytes(buf[:end]), self.accept_no_cl)
            total = end + sep + cl
            if total > self.max_size:
                raise ProtocolError(513, "Message Too Large")
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]

    def _skip_keepalive(self) -> bool:
        """Drop leading CR/LF; False when more bytes are needed to decide."""
        buf = self.buf
        if buf.startswith(b"\r\n\r\n"):
            self.pings += 1
            del buf[:4]
            return True
        if buf in (b"\r", b"\r\n", b"\r\n\r"):
            return False
        del buf[:1]
        return True

    @staticmethod
    def _content_length(head: bytes, accept_no_cl: bool = False) -> int:
        found = _CL.findall(head)
        if not found:
            if accept_no_cl:
                return 0
            raise ProtocolError(400, "missing Content-Length on a stream transport")
        values = {v.strip() for v in found}
        if len(values) != 1:
            raise ProtocolError(400, "conflicting Content-Length headers")
        value = values.pop()
        if not value.isdigit() or len(value) > 10:
            raise ProtocolError(400, "bad Content-Length")
        return int(value)

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self.buf)
