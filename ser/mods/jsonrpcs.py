"""jsonrpcs: JSON-RPC 2.0 control over a FIFO, a UNIX datagram socket and HTTP.

ser's control process always runs; loading this module (as Kamailio configs
do) only sets where it listens. Relative paths are under the runtime
directory (``ser -Y DIR``). ``http_port`` turns on the HTTP listener
(``/RPC`` and Prometheus ``/metrics``), off by default.

``jsonrpc_dispatch()`` answers a JSON-RPC request that came as HTTP on a SIP
TCP port, in ``event_route[xhttp:request]`` (module xhttp) -- Kamailio's
``transport`` bit 1. The worker runs the method itself, with the same
registry and services the control process has.
"""

from __future__ import annotations

import json
from typing import Any

from ser.core.log import log
from ser.core.module import Function, Module, Param, RouteType


def jsonrpc_dispatch(ctx: Any) -> int:
    from ser.core.corerpc import build_registry, rpc_context
    from ser.mods.xhttp import http_reply
    core = ctx.rt.core
    msg = ctx.msg
    if core is None or core.env is None or msg.http_version is None:
        return -1
    inst = ctx.rt.modules.get("jsonrpcs")
    state = inst.state if inst is not None else {}
    rpc = state.get("rpc_ctx")
    if rpc is None:       # once per process
        rpc = state["rpc_ctx"] = rpc_context(core.env, build_registry(core.cfg))
    if msg.method != "POST":
        ok = http_reply(ctx, 405, "Method Not Allowed", "text/plain", b"use POST\n")
        return 1 if ok else -1
    resp = rpc.registry.handle(rpc, msg.body)
    body = b"" if resp is None else json.dumps(resp, indent=4).encode() + b"\n"
    if not http_reply(ctx, 200, "OK", "application/json", body):
        log.error("jsonrpc_dispatch: the reply could not be sent")
        return -1
    return 1


def _transport(v: object) -> str | None:
    return None if isinstance(v, int) and 0 <= v <= 15 else "transport is a bit mask 0..15"


def _port(v: object) -> str | None:
    return None if isinstance(v, int) and 0 <= v <= 65535 else "a port is 0..65535"


exports = Module(
    name="jsonrpcs",
    doc="JSON-RPC 2.0 control interface (FIFO and UNIX datagram socket).",
    params=(
        Param("transport", int, 6, "Transports to serve, a bit mask: 2 FIFO, 4 datagram "
              "socket, 1 HTTP over xhttp: jsonrpc_dispatch() in event_route[xhttp:request]; "
              "8 TCP is not available. http_port is ser's own HTTP listener.", _transport),
        Param("http_port", int, 0, "Port of the embedded HTTP listener of the control "
              "process: POST /RPC (JSON-RPC 2.0) and GET /metrics (Prometheus). 0: off.",
              _port),
        Param("http_address", str, "127.0.0.1", "Address of the HTTP listener."),
        Param("fifo_name", str, "ser_rpc.fifo", "The FIFO file (relative: in the runtime dir)."),
        Param("fifo_mode", int, 0o660, "Permissions of the FIFO file."),
        Param("fifo_group", (int, str), "", "Group of the FIFO file.", ignored=True),
        Param("fifo_user", (int, str), "", "Owner of the FIFO file.", ignored=True),
        Param("fifo_reply_dir", str, "/tmp/", "Directory of the clients' reply FIFOs."),
        Param("dgram_socket", str, "ser_rpc.sock",
              "The UNIX datagram socket (relative: in the runtime dir)."),
        Param("dgram_mode", int, 0o660, "Permissions of the datagram socket file."),
        Param("dgram_group", (int, str), "", "Group of the socket file.", ignored=True),
        Param("dgram_user", (int, str), "", "Owner of the socket file.", ignored=True),
        Param("dgram_timeout", int, 2000, "Send timeout of datagram replies, ms."),
        Param("pretty_format", int, 1, "Indent JSON replies.", ignored=True),
    ),
    functions=(
        Function("jsonrpc_dispatch", jsonrpc_dispatch, (), RouteType.EVENT,
                 doc="Answer the JSON-RPC request of event_route[xhttp:request] (POST "
                 "body) with the method's result."),
    ),
)
