"""db_postgres: the PostgreSQL driver (Kamailio's db_postgres), psycopg 3.

URL: ``postgres://user:pass@host:port/db`` (``postgresql://`` too). Each
process has its own connection, opened on first use (never shared over a
fork) and held by the caller's :class:`ser.core.db.Db`, which reconnects
when the server comes back. Connections are in autocommit mode; a batch
(``executemany``) runs in one transaction. ser's ``?`` placeholders become
psycopg's ``%s``; values are always bound by the server-side protocol.
A connection that cannot be made within ``CONNECT_TIMEOUT`` seconds, or that
breaks, is :class:`~ser.core.db.DbUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ser.core.db import DbError, DbUnavailable, DbUrl
from ser.core.module import Module

CONNECT_TIMEOUT = 2


@lru_cache(maxsize=256)
def _sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _error(e: Exception) -> DbError:
    import psycopg
    if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
        return DbUnavailable(f"postgres: {str(e).strip()}")
    return DbError(f"postgres: {str(e).strip()}")


class PgConnection:
    engine = "postgres"

    def __init__(self, url: DbUrl) -> None:
        import psycopg
        kw: dict[str, Any] = {"host": url.host, "dbname": url.database,
                              "connect_timeout": CONNECT_TIMEOUT, "autocommit": True,
                              "application_name": "ser"}
        if url.port:
            kw["port"] = url.port
        if url.user:
            kw["user"] = url.user
        if url.password:
            kw["password"] = url.password
        try:
            self.conn = psycopg.connect(**kw)
        except psycopg.Error as e:
            raise DbUnavailable(f"postgres: {url.redacted()}: {str(e).strip()}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            with self.conn.cursor() as cur:
                cur.execute(_sql(sql), tuple(params))
                return cur.rowcount
        except Exception as e:
            raise _error(e) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany(_sql(sql), [tuple(r) for r in rows])
                return cur.rowcount
        except Exception as e:
            raise _error(e) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(_sql(sql), tuple(params))
                return cur.fetchall()
        except Exception as e:
            raise _error(e) from None

    def script(self, statements: Sequence[str]) -> None:
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
        except Exception as e:
            raise _error(e) from None

    def close(self) -> None:
        self.conn.close()


def open_connection(url: DbUrl) -> PgConnection:
    return PgConnection(url)


exports = Module(
    name="db_postgres",
    doc="PostgreSQL database driver (psycopg 3) for postgres:// URLs.",
)
