"""Prometheus text exposition (format 0.0.4) of ser's statistics.

Every shm counter ``group:name`` (``stats.all()``) becomes
``ser_<group>_<name>``: a counter (suffix ``_total``) unless it is listed in
``GAUGES``, which also renames the well-known ones to names an operator
expects (``ser_tm_transactions_current``, ``ser_usrloc_contacts``). Values
that are not counters in shm are added from the RPC registry:
``ser_uptime_seconds`` and ``ser_pike_blocked_sources`` (sources blocked now,
from ``pike.top HOT`` when pike is loaded).
"""

from __future__ import annotations

import re
import time
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# shm name -> (metric name, help); these are gauges (they go down too)
GAUGES: dict[str, tuple[str, str]] = {
    "tm:current": ("ser_tm_transactions_current", "Transactions in memory now."),
    "tm:waiting": ("ser_tm_transactions_waiting", "Transactions in the wait state now."),
    "usrloc:location-contacts": ("ser_usrloc_contacts", "Contacts registered now."),
}
# shm name -> (metric name without _total, help) for counters worth a better name
COUNTERS: dict[str, tuple[str, str]] = {
    "core:rcv_requests": ("ser_core_received_requests", "SIP requests received."),
    "core:rcv_replies": ("ser_core_received_replies", "SIP replies received."),
    "core:fwd_requests": ("ser_core_forwarded_requests", "SIP requests forwarded."),
    "core:fwd_replies": ("ser_core_forwarded_replies", "SIP replies forwarded."),
    "tm:total": ("ser_tm_transactions", "Transactions created."),
    "pike:blocked_ips": ("ser_pike_blocks", "Times a source was blocked."),
    "auth:challenges": ("ser_auth_challenges", "Digest challenges (401/407) sent."),
    "auth:authenticated": ("ser_auth_authenticated", "Requests whose credentials were right."),
    "auth:invalid_password": ("ser_auth_invalid_password",
                              "Credentials of a known user with a wrong response."),
    "tls:handshakes": ("ser_tls_handshakes", "TLS handshakes completed."),
    "tls:handshake_failures": ("ser_tls_handshake_failures", "TLS handshakes that failed."),
}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(stat: str) -> str:
    group, _, name = stat.partition(":")
    return "ser_" + _BAD.sub("_", f"{group}_{name}").strip("_")


def _family(out: list[str], name: str, kind: str, help_: str, value: float) -> None:
    # the text format names a counter's family with its _total sample name
    sample = f"{name}_total" if kind == "counter" else name
    out.append(f"# HELP {sample} {help_}")
    out.append(f"# TYPE {sample} {kind}")
    out.append(f"{sample} {value:g}" if isinstance(value, float) else f"{sample} {value}")


def render(stats: dict[str, int], uptime: float | None = None,
           blocked_sources: int | None = None) -> str:
    """The exposition text of ``stats`` (``stats.all()``) and the extras."""
    out: list[str] = []
    seen: set[str] = set()
    if uptime is not None:
        _family(out, "ser_uptime_seconds", "gauge", "Seconds since ser started.", float(uptime))
    if blocked_sources is not None:
        _family(out, "ser_pike_blocked_sources", "gauge", "Sources blocked by pike now.",
                blocked_sources)
    for stat, value in stats.items():
        if stat in GAUGES:
            name, help_ = GAUGES[stat]
            kind = "gauge"
        else:
            name, help_ = COUNTERS.get(stat, (metric_name(stat), f"ser statistic {stat}."))
            kind = "counter"
            name = name.removesuffix("_total")
            value = max(value, 0)
        if name in seen:
            continue
        seen.add(name)
        _family(out, name, kind, help_, value)
    return "\n".join(out) + "\n"


def collect(ctx: Any) -> str:
    """The /metrics page from the control process's RPC context."""
    stats = ctx.stats.all() if getattr(ctx, "stats", None) is not None else {}
    blocked = None
    registry = ctx.registry
    if "pike.top" in registry.methods:
        try:
            blocked = len(registry.call(ctx, "pike.top", ["HOT"]))
        except Exception:       # noqa: BLE001 - a page without this gauge beats no page
            blocked = None
    return render(stats, time.time() - ctx.started, blocked)
