"""group: membership of users in groups, from the ``grp`` table (Kamailio's group).

``is_user_in(URI, group)`` takes the user (and with ``use_domain`` the
domain) of the From, To or Request-URI, of the digest credentials
(``Credentials``: the username, and its domain or the realm) or of the URI
in an AVP, and looks for the row ``(username[, domain], grp)``. Every call
is one parameterized query on the worker's own connection; a database that
is down answers the request 500 (and the call is false).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ser.core.db import Db, DbError, DbUnavailable, check_url
from ser.core.log import RateLimited
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param
from ser.core.module import RouteType as R
from ser.core.parser import ProtocolError, SipURI, parse_uri

_log = RateLimited(interval=10.0, burst=3)
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SOURCES = {"from": "From", "to": "To", "request-uri": "Request-URI",
           "credentials": "Credentials"}
_AVP = re.compile(r"\$avp\((?:s:)?([^)]+)\)")


def _ident(v: object) -> str | None:
    return None if IDENT.fullmatch(str(v)) else f"'{v}' is not a table or column name"




def _db(ctx: Any) -> tuple[Db, dict[str, Any]]:
    inst = ctx.rt.modules["group"]
    db: Db | None = inst.state.get("db")
    if db is None:
        db = inst.state["db"] = Db(str(inst.params["db_url"]), what="group")
    return db, inst.params


def _user_domain(ctx: Any, source: str) -> tuple[str, str] | None:
    msg = ctx.msg
    if source == "Credentials":
        creds = [*msg.authorization, *msg.proxy_authorization]
        ok = ctx.cache.get("auth_ok")
        if ok is not None:
            creds = msg.authorization if ok[0] == "authorization" else msg.proxy_authorization
            creds = creds[ok[1]:ok[1] + 1]
        if not creds or not creds[0].username:
            return None
        user, at, dom = creds[0].username.partition("@")
        return user, dom if at else (creds[0].realm or "")
    if source == "From":
        u = msg.from_.uri if msg.from_ is not None else None
    elif source == "To":
        u = msg.to.uri if msg.to is not None else None
    elif source == "Request-URI":
        text = ctx.ruri or msg.ruri
        u = parse_uri(text)
    else:
        stack = ctx.avps.get(source)
        if not stack:
            return None
        u = parse_uri(str(stack[-1]))
    if not isinstance(u, SipURI) or not u.user:
        return None
    return u.user, u.host


def is_user_in_group(ctx: Any, source: str, group: str) -> int:
    """The typed check: 1 member, -1 not (or no user), -1 with a 500 on DB failure."""
    try:
        ud = _user_domain(ctx, source)
    except ProtocolError:
        return -1
    if ud is None:
        return -1
    db, p = _db(ctx)
    sql = f"SELECT {p['group_column']} FROM {p['table']} WHERE {p['user_column']} = ? " \
          f"AND {p['group_column']} = ?"
    args: tuple[str, ...] = (ud[0], group)
    if p["use_domain"]:
        sql += f" AND {p['domain_column']} = ?"
        args = (ud[0], group, ud[1])
    try:
        rows = db.query(sql, args)
    except DbError as e:
        if not isinstance(e, DbUnavailable):
            _log(logging.ERROR, "group: query failed: %s", e)
        core = ctx.rt.core
        if core is not None:
            core.reply(ctx, 500, "Server Internal Error")
        return -1
    return 1 if rows else -1


def _source_fixup(args: list[FixedArg]) -> list[FixedArg]:
    text = str(args[0].const).strip()
    src = SOURCES.get(text.lower())
    if src is None:
        m = _AVP.fullmatch(text)
        if not m:
            raise FixupError(f"bad URI source '{text}' (From, To, Request-URI, Credentials "
                             "or $avp(name))", 0)
        name = m.group(1)
        src = "i:" + name[2:] if name.startswith("i:") else name
    return [FixedArg(const=src, pos=args[0].pos, text=args[0].text), *args[1:]]


exports = Module(
    name="group",
    doc="Group membership checks against the grp table.",
    params=(
        Param("db_url", str, "sqlite:///var/lib/ser/ser.db", "Database URL.", check_url),
        Param("table", str, "grp", "Table of (user, domain, group) rows.", _ident),
        Param("user_column", str, "username", "Column of user names.", _ident),
        Param("domain_column", str, "domain", "Column of domains.", _ident),
        Param("group_column", str, "grp", "Column of group names.", _ident),
        Param("use_domain", int, 0, "Match the domain too."),
        Param("re_table", str, "", "Regular-expression groups (not in ser).", ignored=True),
        Param("multiple_gid", int, 1, "Regular-expression groups (not in ser).", ignored=True),
    ),
    functions=(
        Function("is_user_in", is_user_in_group,
                 (Arg("uri", "const", doc="From, To, Request-URI, Credentials or $avp(x)"),
                  Arg("group", doc="group name")), R.REQUEST | R.FAILURE, _source_fixup,
                 "True if the user of the URI is in the group."),
    ),
)
