"""Kamailio's table schemas, written once; DDL for SQLite and PostgreSQL.

Each :class:`Table` lists its columns (Kamailio's names, types, sizes and
defaults), its indexes and the number Kamailio stores for it in the
``version`` table, so a database made by ``kamdbctl`` and one made by
``serctl db init`` are interchangeable. ``init_db`` creates what is missing
and writes the ``version`` rows; running it twice changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

DATETIME_DEFAULT = "2000-01-01 00:00:01"
EXPIRES_DEFAULT = "2030-05-28 21:32:15"


@dataclass(frozen=True)
class Column:
    name: str
    type: str                    # "id" | "string" | "int" | "smallint" | "real" | "datetime"
    size: int = 0
    default: Any = None          # None: no default
    null: bool = False


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    version: int
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()


def _id() -> Column:
    return Column("id", "id")


def _s(name: str, size: int, default: Any = "", null: bool = False) -> Column:
    return Column(name, "string", size, default, null)


def _i(name: str, default: Any = 0, null: bool = False) -> Column:
    return Column(name, "int", 0, default, null)


VERSION = Table("version", 1, (
    _s("table_name", 32, None), _i("table_version", 0)),
    (Index("table_name_idx", ("table_name",), True),))

SUBSCRIBER = Table("subscriber", 7, (
    _id(), _s("username", 64), _s("domain", 64), _s("password", 64),
    _s("ha1", 128), _s("ha1b", 128)),
    (Index("account_idx", ("username", "domain"), True),
     Index("username_idx", ("username",))))

GRP = Table("grp", 3, (
    _id(), _s("username", 64), _s("domain", 64), _s("grp", 64),
    Column("last_modified", "datetime", 0, DATETIME_DEFAULT)),
    (Index("account_group_idx", ("username", "domain", "grp"), True),))

ADDRESS = Table("address", 6, (
    _id(), _i("grp", 1), _s("ip_addr", 50, None), _i("mask", 32),
    Column("port", "smallint", 0, 0), _s("tag", 64, None, True)))

LOCATION = Table("location", 9, (
    _id(), _s("ruid", 64), _s("username", 64), _s("domain", 64, None, True),
    _s("contact", 512), _s("received", 128, None, True), _s("path", 512, None, True),
    Column("expires", "datetime", 0, EXPIRES_DEFAULT), Column("q", "real", 0, 1.0),
    _s("callid", 255, "Default-Call-ID"), _i("cseq", 1),
    Column("last_modified", "datetime", 0, DATETIME_DEFAULT), _i("flags"), _i("cflags"),
    _s("user_agent", 255), _s("socket", 64, None, True), _i("methods", None, True),
    _s("instance", 255, None, True), _i("reg_id"), _i("server_id"), _i("connection_id"),
    _i("keepalive"), _i("partition")),
    (Index("ruid_idx", ("ruid",), True),
     Index("account_contact_idx", ("username", "domain", "contact")),
     Index("expires_idx", ("expires",)),
     Index("connection_idx", ("server_id", "connection_id"))))

ACC = Table("acc", 5, (
    _id(), _s("method", 16), _s("from_tag", 128), _s("to_tag", 128), _s("callid", 255),
    _s("sip_code", 3), _s("sip_reason", 128), Column("time", "datetime")),
    (Index("callid_idx", ("callid",)),))

HTABLE = Table("htable", 2, (
    _id(), _s("key_name", 64), _i("key_type"), _i("value_type"), _s("key_value", 128),
    _i("expires")))

TABLES: tuple[Table, ...] = (VERSION, SUBSCRIBER, GRP, ADDRESS, LOCATION, ACC, HTABLE)
BY_NAME = {t.name: t for t in TABLES}


def _literal(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def _type(col: Column, engine: str) -> str:
    if col.type == "id":
        return "INTEGER PRIMARY KEY AUTOINCREMENT" if engine == "sqlite" else "SERIAL PRIMARY KEY"
    if col.type == "string":
        return f"VARCHAR({col.size})"
    if col.type == "datetime":
        return "TIMESTAMP WITHOUT TIME ZONE" if engine == "postgres" else "TIMESTAMP"
    return {"int": "INTEGER", "smallint": "SMALLINT", "real": "REAL"}[col.type]


def ddl(table: Table, engine: str, name: str | None = None) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements (``IF NOT EXISTS``) for
    ``engine`` ("sqlite" or "postgres"); ``name`` renames the table."""
    tname = name or table.name
    cols = []
    for c in table.columns:
        parts = [c.name, _type(c, engine)]
        if c.type != "id":
            if c.default is not None:
                parts.append(f"DEFAULT {_literal(c.default)}")
            parts.append("NULL" if c.null else "NOT NULL")
        cols.append(" ".join(parts))
    out = [f"CREATE TABLE IF NOT EXISTS {tname} (\n    " + ",\n    ".join(cols) + "\n)"]
    for ix in table.indexes:
        # index names are per schema in PostgreSQL: prefix them with the table
        iname = f"{tname}_{ix.name}"
        uniq = "UNIQUE " if ix.unique else ""
        out.append(f"CREATE {uniq}INDEX IF NOT EXISTS {iname} ON {tname} "
                   f"({', '.join(ix.columns)})")
    return out


def init_db(db: Any, tables: tuple[Table, ...] = TABLES) -> list[str]:
    """Create ``tables`` (and ``version``) in ``db`` (a Db or Connection) if
    missing and record their versions; returns the table names."""
    stmts: list[str] = []
    for t in (VERSION, *[t for t in tables if t is not VERSION]):
        stmts += ddl(t, db.engine)
    db.script(stmts)
    for t in tables:
        if t is VERSION:
            continue
        if not db.query("SELECT table_version FROM version WHERE table_name = ?", (t.name,)):
            db.execute("INSERT INTO version (table_name, table_version) VALUES (?, ?)",
                       (t.name, t.version))
    return [t.name for t in tables]


def ensure_table(db: Any, table: Table, name: str) -> None:
    """Create one table under another name (a private copy, e.g. for tests)."""
    db.script(ddl(table, db.engine, name))


def sqlite_missing(path: str) -> list[str]:
    """The tables of ``TABLES`` that the SQLite file at ``path`` lacks (all of
    them when the file does not exist); the file is only read."""
    import sqlite3
    if not os.path.exists(path):
        return [t.name for t in TABLES]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        return []      # not ours to repair: the driver reports it on first use
    return [t.name for t in TABLES if t.name not in have]


def create_sqlite(url: str) -> tuple[str, list[str]] | None:
    """On first start: when the SQLite file of ``url`` or some of Kamailio's
    tables in it do not exist, create them (and the file's directory) as
    ``serctl db init`` does. Returns (what to log, the paths made) or None
    when there was nothing to do; OSError when they cannot be made."""
    from ser.core.db import DbError, connect, parse_url
    u = parse_url(url)
    path = u.database
    missing = sqlite_missing(path)
    if not missing:
        return None
    made = []
    d = os.path.dirname(path)
    try:
        if d and not os.path.isdir(d):
            os.makedirs(d)
            made.append(d)
        existed = os.path.exists(path)
        conn = connect(u)
        try:
            init_db(conn)
        finally:
            conn.close()
    except (OSError, DbError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise OSError(f"cannot create the database {u.redacted()}: {why} (set another "
                      f"DBURL, or create it with `serctl db init URL`)") from None
    if not existed:
        made.append(path)
        return f"db: created {u.redacted()} with Kamailio's schema ({', '.join(missing)})", made
    return f"db: created the missing tables {', '.join(missing)} in {u.redacted()}", made
