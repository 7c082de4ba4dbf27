"""pike: flood detection per source IP (Kamailio's pike module).

Theory of operation
-------------------
Every source address (IPv4 or IPv6, the text of ``$si``) that calls
``pike_check_req()`` has one record in the shared table ``pike``, so all
workers count into the same place. The record's value is one signed 64-bit
integer holding two sampling windows::

    bits  0..31   hits in the current window   (workers: one atomic incr)
    bits 32..62   hits in the previous window  (the timer: shift)

So the hot path is a single ``Table.incr`` (one stripe lock, no allocation
once the record exists). A source is *blocked* (the call returns false) while
either window holds more than ``reqs_density_per_unit`` hits. Every
``sampling_time_unit`` seconds the timer process shifts each record
(current -> previous, current = 0) under its bucket lock. A record expires
``remove_latency`` seconds after the last window that saw a hit (creation
sets it, each shift with hits refreshes it) and the timer sweeps it away.

The worker whose increment takes the current window to exactly
``limit + 1`` while the previous window was under the limit is the one that
reports the block (log at ``pike_log_level`` and ``pike:blocked_ips``);
``incr`` is atomic, so exactly one worker sees that value. Blocked requests
are counted in ``pike:blocked_requests``.

The config decides what to do with a blocked source (drop or reply); the
module only reports. Unlike Kamailio, ser keeps no tree of address prefixes:
each source address is a leaf of its own.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from ser.core.log import level_of, log
from ser.core.module import Function, Module, ModuleInstance, Param, RouteType, RPCMethod, Timer
from ser.core.rpc import RpcContext, RpcError

TABLE = "pike"
CUR_MASK = 0xFFFFFFFF
PREV_MAX = 0x7FFFFFFF
STATS = ("pike:blocked_ips", "pike:blocked_requests")
_q = struct.Struct("@q")

def split(v: int) -> tuple[int, int]:
    """(previous, current) hits of a record value."""
    return (v >> 32) & PREV_MAX, v & CUR_MASK


def mod_init(inst: ModuleInstance) -> None:
    p = inst.params
    shm = inst.state["shm"]
    for s in STATS:
        shm.stats.declare(s)
    st = inst.state
    st["table"] = shm.create_table(TABLE, 12)
    st["stats"] = shm.stats
    st["limit"] = int(p["reqs_density_per_unit"])
    st["unit"] = float(p["sampling_time_unit"])
    st["latency"] = float(p["remove_latency"])
    st["level"] = level_of(int(p["pike_log_level"]))
    st["last_shift"] = time.time()


def check(st: dict[str, Any], ip: str, now: float) -> bool:
    """Count one request from ``ip``; False if the source is over the limit."""
    v = st["table"].incr(ip.encode(), 1, now + st["latency"])
    limit = st["limit"]
    cur = v & CUR_MASK
    prev = (v >> 32) & PREV_MAX
    if cur <= limit and prev <= limit:
        return True
    stats = st["stats"]
    if cur == limit + 1 and prev <= limit:
        stats.inc("pike:blocked_ips")
        log.log(st["level"], "PIKE - BLOCKing ip %s, %d requests in %g s (limit %d)",
                ip, cur, st["unit"], limit)
    stats.inc("pike:blocked_requests")
    return False


def pike_check_req(ctx: Any) -> int:
    """Count the request; -1 if its source is over the limit."""
    st = ctx.rt.modules["pike"].state
    return 1 if check(st, ctx.src_ip, time.time()) else -1


def _shift(raw: bytes | None) -> bytes | None:
    if raw is None:
        return None
    cur = _q.unpack(raw)[0] & CUR_MASK
    return _q.pack(min(cur, PREV_MAX) << 32)


def shift(st: dict[str, Any], now: float) -> int:
    """One sampling step over every record; returns how many were shifted."""
    table = st["table"]
    n = 0
    for rec in table.snapshot():
        prev, cur = split(_q.unpack(rec.value)[0])
        if not cur and not prev:
            continue
        table.update(rec.key, _shift, expires=now + st["latency"] if cur else None)
        n += 1
    table.expire(now)
    return n


def _timer(inst: ModuleInstance, now: float) -> None:
    st = inst.state
    if "table" not in st or now - st["last_shift"] < st["unit"] - 0.05:
        return
    st["last_shift"] = now
    shift(st, now)


# ---------------------------------------------------------------- RPC

def _state(ctx: RpcContext) -> dict[str, Any]:
    inst = ctx.cfg.modules.get("pike")
    if inst is None or "table" not in inst.state:
        raise RpcError(500, "pike is not loaded")
    st: dict[str, Any] = inst.state
    return st


def nodes(st: dict[str, Any], now: float) -> list[dict[str, Any]]:
    limit = st["limit"]
    out = []
    for rec in st["table"].snapshot():
        prev, cur = split(_q.unpack(rec.value)[0])
        hot = prev > limit or cur > limit
        warm = not hot and max(prev, cur) > limit // 2
        out.append({"ip_addr": rec.key.decode(), "leaf_hits_prev": prev, "leaf_hits_curr": cur,
                    "expires": max(0, int(round(rec.expires - now))) if rec.expires else 0,
                    "status": "HOT" if hot else ("WARM" if warm else "ALL")})
    out.sort(key=lambda n: (-max(n["leaf_hits_prev"], n["leaf_hits_curr"]), n["ip_addr"]))
    return out


def rpc_top(ctx: RpcContext, mask: str = "ALL") -> list[dict[str, Any]]:
    mask = str(mask).upper()
    if mask not in ("ALL", "HOT", "WARM"):
        raise RpcError(400, "mask is ALL, HOT or WARM")
    rows = nodes(_state(ctx), time.time())
    if mask == "HOT":
        return [r for r in rows if r["status"] == "HOT"]
    if mask == "WARM":
        return [r for r in rows if r["status"] in ("HOT", "WARM")]
    return rows


def rpc_list(ctx: RpcContext) -> list[dict[str, Any]]:
    rows = nodes(_state(ctx), time.time())
    return sorted(({"ip": r["ip_addr"], "hits": [r["leaf_hits_prev"], r["leaf_hits_curr"]],
                    "blocked": r["status"] == "HOT", "expires": r["expires"]} for r in rows),
                  key=lambda r: r["ip"])


def _positive(v: object) -> str | None:
    return None if isinstance(v, int) and v > 0 else "must be a positive number"


exports = Module(
    name="pike",
    doc="Flood detection: counts requests per source IP (IPv4 and IPv6) in shared "
        "memory and reports sources over the limit; the config decides what to do.",
    params=(
        Param("sampling_time_unit", int, 2, "Seconds of one sampling window.", _positive),
        Param("reqs_density_per_unit", int, 30,
              "Requests allowed from one source per sampling window.", _positive),
        Param("remove_latency", int, 120,
              "Seconds a source is kept in memory after its last request.", _positive),
        Param("pike_log_level", int, 0,
              "Log level of the block message, in Kamailio's numbers (-1 error, 0 warning, "
              "1 notice, 2 info, 3 debug)."),
    ),
    functions=(
        Function("pike_check_req", pike_check_req, (), RouteType.REQUEST,
                 doc="Count the request by its source IP; false if the source sends more "
                     "than reqs_density_per_unit requests per sampling_time_unit."),
    ),
    rpc=(
        RPCMethod("pike.top", rpc_top, "Tracked sources, hottest first; mask ALL (default), "
                  "HOT (blocked) or WARM (over half the limit).", ("mask",)),
        RPCMethod("pike.list", rpc_list, "Every tracked source with its two windows."),
    ),
    timers=(Timer("pike", 0.25, _timer),),
    mod_init=mod_init,
)
