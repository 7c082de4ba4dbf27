"""db_sqlite: the embedded SQLite driver (Kamailio's db_sqlite), the default.

URL: ``sqlite://PATH`` -- the path is everything after ``sqlite://``
(``sqlite:///var/lib/ser/ser.db`` is absolute, ``sqlite://ser.db`` is
relative to the working directory). Each process opens its own connection
(autocommit, WAL journal, a busy timeout so several workers can write).
Datetimes are stored as ``YYYY-MM-DD HH:MM:SS`` text, as Kamailio's
db_sqlite does.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from typing import Any

from ser.core.db import DbError, DbUnavailable, DbUrl
from ser.core.module import Module

BUSY_TIMEOUT = 5.0
_TRANSIENT = ("unable to open", "locked", "disk i/o", "readonly", "read-only", "not a database")


def _adapt_datetime(v: dt.datetime) -> str:
    return v.strftime("%Y-%m-%d %H:%M:%S")


sqlite3.register_adapter(dt.datetime, _adapt_datetime)


def _error(e: sqlite3.Error) -> DbError:
    text = str(e)
    if isinstance(e, sqlite3.OperationalError) and any(t in text.lower() for t in _TRANSIENT):
        return DbUnavailable(f"sqlite: {text}")
    return DbError(f"sqlite: {text}")


class SqliteConnection:
    engine = "sqlite"

    def __init__(self, url: DbUrl) -> None:
        self.path = url.database
        try:
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise DbUnavailable(f"sqlite: {self.path}: {e}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self.conn.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as e:
            raise _error(e) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        try:
            self.conn.execute("BEGIN")
            try:
                n = self.conn.executemany(sql, [tuple(r) for r in rows]).rowcount
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return n
        except sqlite3.Error as e:
            raise _error(e) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise _error(e) from None

    def script(self, statements: Sequence[str]) -> None:
        try:
            self.conn.execute("BEGIN")
            for s in statements:
                self.conn.execute(s)
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _error(e) from None

    def close(self) -> None:
        self.conn.close()


def open_connection(url: DbUrl) -> SqliteConnection:
    return SqliteConnection(url)


exports = Module(
    name="db_sqlite",
    doc="SQLite database driver for sqlite:// URLs (the embedded default).",
)
