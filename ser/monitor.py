"""`serctl monitor`: a live view of a running ser, refreshed every second.

Like ``kamctl monitor``: it polls the control interface (``core.uptime``,
``stats.get_statistics all``, ``pike.top HOT`` when pike is loaded) and
redraws one screen: uptime, requests and replies per second (the change of
``core:rcv_requests`` / ``core:rcv_replies`` over the last interval),
transactions, contacts, blocked sources and, with the tls module, TLS
connections. ``--count N`` stops after N screens; Ctrl-C stops it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Call = Callable[[str, list[Any]], dict[str, Any]]
CLEAR = "\x1b[H\x1b[2J"


def _result(call: Call, method: str, *params: Any) -> Any:
    resp = call(method, list(params))
    return resp.get("result") if "error" not in resp else None


def parse_stats(rows: Any) -> dict[str, int] | None:
    """Kamailio's ``["group:name = value", ...]`` -> {name: value}."""
    if not isinstance(rows, list):
        return None
    out = {}
    for row in rows:
        name, _, value = str(row).partition(" = ")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            continue
    return out


def _uptime(sec: int) -> str:
    d, rest = divmod(int(sec), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def screen(up: Any, stats: dict[str, int], prev: dict[str, int] | None, dt: float,
           blocked: int | None) -> str:
    def rate(name: str) -> str:
        if prev is None or dt <= 0:
            return "-"
        return f"{max(0, stats.get(name, 0) - prev.get(name, 0)) / dt:.1f}"
    tls = [v for k, v in stats.items() if k.startswith("tls:") and "current" in k]
    lines = [
        f"ser monitor -- {time.strftime('%Y-%m-%d %H:%M:%S')}  (Ctrl-C to quit)",
        "",
        f"  uptime            {_uptime(up.get('uptime', 0)) if isinstance(up, dict) else '-'}",
        f"  requests/s        {rate('core:rcv_requests')}",
        f"  replies/s         {rate('core:rcv_replies')}",
        f"  requests total    {stats.get('core:rcv_requests', 0)}",
        f"  replies total     {stats.get('core:rcv_replies', 0)}",
        f"  transactions      {stats.get('tm:current', '-')}  "
        f"(total {stats.get('tm:total', '-')})",
        f"  contacts          {stats.get('usrloc:location-contacts', '-')}",
        f"  blocked sources   {'-' if blocked is None else blocked}",
        f"  tls connections   {sum(tls) if tls else '-'}",
    ]
    return "\n".join(lines) + "\n"


def monitor(call: Call, out: TextIO = sys.stdout, interval: float = 1.0,
            count: int = 0) -> int:
    prev: dict[str, int] | None = None
    last = 0.0
    n = 0
    tty = out.isatty()
    try:
        while True:
            now = time.monotonic()
            stats = parse_stats(_result(call, "stats.get_statistics", "all"))
            if stats is None:
                print("serctl: ser does not answer stats.get_statistics", file=sys.stderr)
                return 1
            up = _result(call, "core.uptime")
            hot = _result(call, "pike.top", "HOT")
            text = screen(up, stats, prev, now - last, len(hot) if isinstance(hot, list)
                          else None)
            out.write((CLEAR if tty else "") + text)
            out.flush()
            prev, last = stats, now
            n += 1
            if count and n >= count:
                return 0
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
    except KeyboardInterrupt:
        return 0
