"""One RPC registry; JSON-RPC 2.0 framing as Kamailio's jsonrpcs speaks it.

A handler is ``fn(ctx, *params) -> data`` where ``ctx`` is the
:class:`RpcContext` of the control process (the shared state it may read)
and ``params`` are the JSON-RPC positional parameters. It returns JSON-able
data or raises :class:`RpcError`. Transports (FIFO, UNIX datagram socket,
HTTP) only frame and unframe: they call :meth:`RpcRegistry.handle`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = 500


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Method:
    name: str
    handler: Callable[..., Any]
    doc: str = ""


class RpcContext:
    """What RPC handlers may reach: set by the control process after the fork."""

    def __init__(self, **services: Any) -> None:
        self.__dict__.update(services)

    def __getattr__(self, name: str) -> Any:
        raise RpcError(INTERNAL_ERROR, f"service '{name}' is not available")


class RpcRegistry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, name: str, handler: Callable[..., Any], doc: str = "") -> None:
        if name in self.methods:
            raise ValueError(f"RPC method {name} registered twice")
        self.methods[name] = Method(name, handler, doc)

    def call(self, ctx: RpcContext, name: str, params: list[Any]) -> Any:
        m = self.methods.get(name)
        if m is None:
            raise RpcError(METHOD_NOT_FOUND, "Method Not Found")
        try:
            inspect.signature(m.handler).bind(ctx, *params)
        except TypeError as e:
            raise RpcError(INVALID_PARAMS, f"Invalid Parameters: {e}") from None
        return m.handler(ctx, *params)

    def handle(self, ctx: RpcContext, raw: bytes | str) -> dict[str, Any] | None:
        """One JSON-RPC 2.0 request -> its response object (None for a notification)."""
        try:
            req = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(None, PARSE_ERROR, "Parse Error")
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return _error(req.get("id") if isinstance(req, dict) else None,
                          INVALID_REQUEST, "Invalid Request")
        rid = req.get("id")
        params = req.get("params", [])
        if isinstance(params, dict):
            params = list(params.values())
        if not isinstance(params, list):
            return _error(rid, INVALID_PARAMS, "Invalid Parameters")
        try:
            result = self.call(ctx, req["method"], params)
        except RpcError as e:
            resp = _error(rid, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - an RPC failure must not kill the ctl process
            resp = _error(rid, INTERNAL_ERROR, f"Internal Error: {type(e).__name__}: {e}")
        else:
            resp = {"jsonrpc": "2.0", "result": result, "id": rid}
        if "id" not in req:
            return None
        return resp


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}
