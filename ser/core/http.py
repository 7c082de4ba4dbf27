"""The control process's embedded HTTP listener: JSON-RPC at /RPC, metrics at /metrics.

Theory of operation. Off unless ``modparam("jsonrpcs", "http_port", N)``
(address ``http_address``, default 127.0.0.1). It is Kamailio's jsonrpcs
transport 1 (xhttp + ``jsonrpc_dispatch()``) without a script: the control
process serves it from the same selector loop as the FIFO and the datagram
socket, one request per connection (``Connection: close``):

* ``POST /RPC`` -- a JSON-RPC 2.0 request in the body, answered by the same
  :class:`ser.core.rpc.RpcRegistry` as the other transports;
* ``GET /metrics`` -- Prometheus text exposition (:mod:`ser.core.metrics`).

Each connection is non-blocking with a byte limit and a deadline, so a slow
or hostile client cannot stall the other transports.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

MAX_REQUEST = 1 << 20
TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large"}


def listen(address: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(16)
    s.setblocking(False)
    return s


def response(code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nServer: ser\r\n\r\n")
    return head.encode() + body


class HttpConn:
    """One client connection: collect a request, then answer it once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = time.monotonic() + TIMEOUT
        self.out = b""

    def request(self) -> tuple[str, str, bytes] | int | None:
        """(method, path, body) when complete, an HTTP error code, or None for more."""
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return 413 if len(self.buf) > 65536 else None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    return 400
        if length < 0 or length > MAX_REQUEST:
            return 413
        if len(rest) < length:
            return None
        return parts[0].upper(), parts[1].split("?", 1)[0], rest[:length]


def answer(method: str, path: str, body: bytes, rpc: Callable[[bytes], Any],
           metrics: Callable[[], str]) -> bytes:
    """The whole HTTP response to one request."""
    if path == "/RPC" or path.startswith("/RPC/"):
        if method != "POST":
            return response(405, b"POST a JSON-RPC 2.0 request to /RPC\n")
        resp = rpc(body)
        data = b"" if resp is None else json.dumps(resp).encode()
        return response(200, data, "application/json")
    if path == "/metrics":
        if method not in ("GET", "HEAD"):
            return response(405, b"GET /metrics\n")
        from ser.core.metrics import CONTENT_TYPE
        return response(200, metrics().encode(), CONTENT_TYPE)
    return response(404, b"ser serves /RPC (JSON-RPC 2.0, POST) and /metrics\n")
