"""xhttp: HTTP requests on ser's SIP TCP/TLS listeners (Kamailio's xhttp module).

As in Kamailio, an HTTP request that arrives on a SIP stream port (the
parser recognizes ``HTTP/1.x`` in the request line; ``tcp_accept_no_cl=yes``
lets requests without Content-Length, such as a GET, through) does not go to
request_route: the core runs ``event_route[xhttp:request]``, where ``$hu``
is the URL and ``xhttp_reply(code, reason, ctype, body)`` answers on the
same connection (``set_reply_close()`` closes it after the reply).
``jsonrpc_dispatch()`` of the jsonrpcs module answers a JSON-RPC request
there. An HTTP request without that event route is dropped.
"""

from __future__ import annotations

from typing import Any

from ser.core.log import log
from ser.core.module import Arg, Function, Module, Param, RouteType
from ser.core.pv import PVDecl

R = RouteType

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error"}


def http_reply(ctx: Any, code: int, reason: str, ctype: str, body: bytes) -> bool:
    """Send an HTTP/1.1 response to the request of ``ctx`` on its connection."""
    core = ctx.rt.core
    msg = ctx.msg
    if core is None or msg.http_version is None or ctx.rcv is None:
        return False
    if ctx.cache.get("xhttp_replied"):
        log.warning("xhttp: a second reply to %s %s is not sent", msg.method, msg.ruri)
        return False
    head = [f"{msg.http_version} {code} {reason or _REASONS.get(code, 'Status')}"]
    if ctype:
        head.append(f"Content-Type: {ctype}")
    head.append(f"Content-Length: {len(body)}")
    if core.server:
        head.append(f"Server: {core.server}")
    if ctx.options.get("set_reply_close"):
        head.append("Connection: close")
    ctx.cache["xhttp_replied"] = True
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    return bool(core.send(ctx.rcv, data))


def xhttp_reply(ctx: Any, code: int, reason: str, ctype: str, body: str) -> int:
    if not 100 <= code <= 699:
        log.error("xhttp_reply: bad status code %d", code)
        return -1
    return 1 if http_reply(ctx, code, reason, ctype, body.encode()) else -1


def _hu(ctx: Any, _: Any) -> Any:
    msg = ctx.msg
    return msg.ruri if msg.is_request and msg.http_version is not None else None


exports = Module(
    name="xhttp",
    doc="HTTP requests on the SIP TCP/TLS listeners: event_route[xhttp:request], "
        "xhttp_reply(), $hu.",
    params=(
        Param("url_match", str, "", "Only URLs matching this regex go to the event route "
              "(accepted).", ignored=True),
        Param("url_skip", str, "", "URLs matching this regex are skipped (accepted).",
              ignored=True),
        Param("event_callback", str, "", "KEMI callback (no KEMI in ser).", ignored=True),
    ),
    functions=(
        Function("xhttp_reply", xhttp_reply,
                 (Arg("code", "int"), Arg("reason"), Arg("ctype"), Arg("body")), R.EVENT,
                 doc="Answer the HTTP request: status code, reason, Content-Type, body."),
    ),
    pvs=(PVDecl("hu", _hu, doc="URL of the HTTP request (xhttp)"),),
)
