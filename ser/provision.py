"""Provisioning for serctl: subscribers, group ACLs and the address table
(what kamctl's add/passwd/rm/show, acl and address commands do).

``run(args, url)`` carries out one parsed serctl command against the
database at ``url`` and returns (text to print, RPC method to tell a running
ser or ""). Every statement is parameterized; errors are
:class:`ProvisionError` with the message the operator sees.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from typing import Any

from ser.core.db import DbError, connect, parse_url


class ProvisionError(Exception):
    pass


def ha1(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def split_aor(text: str) -> tuple[str, str]:
    user, at, domain = text.strip().removeprefix("sip:").partition("@")
    if not user or not at or not domain:
        raise ProvisionError(f"'{text}' is not USER@DOMAIN")
    return user, domain


def parse_address(text: str) -> tuple[str, int]:
    """"10.0.0.0/8" -> ("10.0.0.0", 8); "1.2.3.4" -> ("1.2.3.4", 32); v6 too."""
    ip, _, mask = text.partition("/")
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise ProvisionError(f"bad address '{text}': not an IPv4 or IPv6 address") from None
    bits = 32 if addr.version == 4 else 128
    if not mask:
        return str(addr), bits
    if not mask.isdigit() or not 0 <= int(mask) <= bits:
        raise ProvisionError(f"bad address '{text}': the mask is 0..{bits}")
    return str(addr), int(mask)


def _port(text: str | None) -> int:
    if text is None:
        return 0
    if not text.isdigit() or int(text) > 65535:
        raise ProvisionError(f"bad port '{text}' (0..65535, 0 is any)")
    return int(text)


def _subscribers(db: Any, args: Any) -> tuple[str, str]:
    cmd = args.cmd
    if cmd == "show":
        if args.user:
            u, d = split_aor(args.user)
            rows = db.query("SELECT username, domain, password, ha1, ha1b FROM subscriber "
                            "WHERE username = ? AND domain = ?", (u, d))
            if not rows:
                raise ProvisionError(f"unknown user {args.user}")
        else:
            rows = db.query("SELECT username, domain, password, ha1, ha1b FROM subscriber "
                            "ORDER BY domain, username")
        return "\n".join(f"{r[0]}@{r[1]}  password={r[2]}  ha1={r[3]}  ha1b={r[4]}"
                         for r in rows), ""
    u, d = split_aor(args.user)
    exists = bool(db.query("SELECT id FROM subscriber WHERE username = ? AND domain = ?",
                           (u, d)))
    if cmd == "add":
        if exists:
            raise ProvisionError(f"user {u}@{d} already exists")
        db.execute("INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                   "VALUES (?, ?, ?, ?, ?)",
                   (u, d, args.password, ha1(u, d, args.password),
                    ha1(f"{u}@{d}", d, args.password)))
        return f"added {u}@{d}", "auth_db.flush"
    if not exists:
        raise ProvisionError(f"unknown user {u}@{d}")
    if cmd == "passwd":
        db.execute("UPDATE subscriber SET password = ?, ha1 = ?, ha1b = ? "
                   "WHERE username = ? AND domain = ?",
                   (args.password, ha1(u, d, args.password), ha1(f"{u}@{d}", d, args.password),
                    u, d))
        return f"password of {u}@{d} changed", "auth_db.flush"
    db.execute("DELETE FROM subscriber WHERE username = ? AND domain = ?", (u, d))
    return f"removed {u}@{d}", "auth_db.flush"


def _acl(db: Any, args: Any) -> tuple[str, str]:
    if args.action == "show":
        if args.user:
            u, d = split_aor(args.user)
            rows = db.query("SELECT username, domain, grp FROM grp WHERE username = ? AND "
                            "domain = ? ORDER BY grp", (u, d))
        else:
            rows = db.query("SELECT username, domain, grp FROM grp ORDER BY domain, username, grp")
        return "\n".join(f"{r[0]}@{r[1]}  {r[2]}" for r in rows), ""
    if not args.user or not args.group:
        if args.action == "grant" or not args.user:
            raise ProvisionError(f"acl {args.action} needs USER@DOMAIN GROUP")
    u, d = split_aor(args.user)
    if args.action == "grant":
        if db.query("SELECT id FROM grp WHERE username = ? AND domain = ? AND grp = ?",
                    (u, d, args.group)):
            raise ProvisionError(f"{u}@{d} is already in {args.group}")
        db.execute("INSERT INTO grp (username, domain, grp, last_modified) VALUES (?, ?, ?, ?)",
                   (u, d, args.group, dt.datetime.now().replace(microsecond=0)))
        return f"{u}@{d} granted {args.group}", ""
    if args.group:
        n = db.execute("DELETE FROM grp WHERE username = ? AND domain = ? AND grp = ?",
                       (u, d, args.group))
    else:
        n = db.execute("DELETE FROM grp WHERE username = ? AND domain = ?", (u, d))
    if not n:
        raise ProvisionError(f"{u}@{d} is not in {args.group or 'any group'}")
    return f"{u}@{d} revoked {args.group or 'every group'}", ""


def _address(db: Any, args: Any) -> tuple[str, str]:
    a = list(args.args)
    if args.action == "list":
        rows = db.query("SELECT id, grp, ip_addr, mask, port, tag FROM address ORDER BY grp, id")
        return "\n".join(f"{r[0]:>4}  grp={r[1]}  {r[2]}/{r[3]}  port={r[4]}  tag={r[5] or ''}"
                         for r in rows), ""
    if len(a) < 2 or not a[0].lstrip("-").isdigit():
        raise ProvisionError(f"address {args.action} needs GRP IP[/MASK] [PORT]"
                             + (" [TAG]" if args.action == "add" else ""))
    grp = int(a[0])
    ip, mask = parse_address(a[1])
    port = _port(a[2] if len(a) > 2 else None)
    if args.action == "add":
        if len(a) > 4:
            raise ProvisionError("address add takes GRP IP[/MASK] [PORT] [TAG]")
        tag = a[3] if len(a) > 3 else None
        db.execute("INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (?, ?, ?, ?, ?)",
                   (grp, ip, mask, port, tag))
        return f"added {grp} {ip}/{mask} port {port}; `serctl address reload` applies it", ""
    sql = "DELETE FROM address WHERE grp = ? AND ip_addr = ? AND mask = ?"
    params: tuple[Any, ...] = (grp, ip, mask)
    if len(a) > 2:
        sql += " AND port = ?"
        params += (port,)
    if not db.execute(sql, params):
        raise ProvisionError(f"no address {grp} {ip}/{mask}")
    return f"removed {grp} {ip}/{mask}; `serctl address reload` applies it", ""


def run(args: Any, url: str) -> tuple[str, str]:
    try:
        u = parse_url(url)
        db = connect(u)
    except (ValueError, DbError) as e:
        raise ProvisionError(str(e)) from None
    try:
        if args.cmd == "acl":
            return _acl(db, args)
        if args.cmd == "address":
            return _address(db, args)
        return _subscribers(db, args)
    except DbError as e:
        raise ProvisionError(f"{u.redacted()}: {e} (did `serctl db init` run?)") from None
    finally:
        db.close()
