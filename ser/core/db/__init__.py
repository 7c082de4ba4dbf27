"""The DB layer: one URL style, drivers that are modules, a reconnecting handle.

Theory of operation
-------------------
A database is named by a URL (``sqlite:///var/lib/ser/ser.db``,
``postgres://user:pass@host:port/db``). Its scheme picks the driver, which
is a module (``ser.mods.db_sqlite``, ``ser.mods.db_postgres``) offering
``open_connection(url: DbUrl) -> Connection`` next to its ``exports``.
ser's own SQL is written once with ``?`` placeholders; a driver translates
them to its paramstyle. Values are always bound, never spliced into SQL text:
nothing a SIP peer sends (a username, a domain, a Contact) reaches SQL as
code.

:class:`Db` is what a module holds, one per process (it reconnects lazily
after a fork): every call goes through it, a connection failure turns into
:class:`DbUnavailable` (the request gets 500), is logged once per
``log_interval``, and the next call after ``retry_interval`` seconds tries to
connect again.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ser.core.log import log

SCHEMES = {"sqlite": "db_sqlite", "postgres": "db_postgres", "postgresql": "db_postgres"}


class DbError(Exception):
    """A failed query (bad SQL, a constraint): the database itself is fine."""


class DbUnavailable(DbError):
    """The database cannot be reached (down, refused, connection lost)."""


@dataclass(frozen=True)
class DbUrl:
    scheme: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: int | None = None
    database: str = ""       # the database name, or the SQLite file path

    @property
    def driver(self) -> str:
        return SCHEMES[self.scheme]

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.database}"
        cred = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{cred}{self.host}{port}/{self.database}"


def parse_url(url: str) -> DbUrl:
    """``sqlite://PATH`` (the path is everything after ``sqlite://``, so
    ``sqlite:///abs.db`` is absolute and ``sqlite://rel.db`` relative) or
    ``postgres://[user[:pass]@]host[:port]/db``. ValueError if bad."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        known = ", ".join(sorted(SCHEMES))
        raise ValueError(f"bad DB URL '{url}': the scheme must be one of {known}")
    if scheme == "sqlite":
        if not rest:
            raise ValueError(f"bad DB URL '{url}': no database file")
        return DbUrl("sqlite", database=rest)
    parts = urlsplit(url)
    db = parts.path.lstrip("/")
    if not parts.hostname or not db:
        raise ValueError(f"bad DB URL '{url}': want {scheme}://user:pass@host[:port]/db")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad DB URL '{url}': bad port") from None
    return DbUrl(scheme, unquote(parts.username or ""), unquote(parts.password or ""),
                 parts.hostname, port, unquote(db))


def check_url(value: object) -> str | None:
    """The ``check`` of a ``db_url`` module parameter: "" (unset) or a URL we parse."""
    if not value:
        return None
    try:
        parse_url(str(value))
    except ValueError as e:
        return str(e)
    return None


class Connection(Protocol):
    """What a driver returns. SQL uses ``?`` placeholders."""

    engine: str     # "sqlite" or "postgres": picks the DDL dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def script(self, statements: Sequence[str]) -> None: ...
    def close(self) -> None: ...


def driver_module(url: DbUrl) -> Any:
    return importlib.import_module(f"ser.mods.{url.driver}")


def connect(url: str | DbUrl) -> Connection:
    """A new connection (raises DbUnavailable when the server is not there)."""
    u = parse_url(url) if isinstance(url, str) else url
    conn: Connection = driver_module(u).open_connection(u)
    return conn


class Db:
    """A per-process, reconnecting handle on one database URL."""

    def __init__(self, url: str, retry_interval: float = 1.0, log_interval: float = 10.0,
                 what: str = "db") -> None:
        self.url = parse_url(url)
        self.what = what
        self.retry_interval = retry_interval
        self.log_interval = log_interval
        self._conn: Connection | None = None
        self._pid = 0
        self._next_try = 0.0
        self._last_log = -1e9
        self._suppressed = 0
        self.down_since = 0.0

    @property
    def engine(self) -> str:
        return "sqlite" if self.url.scheme == "sqlite" else "postgres"

    def _connection(self) -> Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None            # inherited over fork: never use, never close
        now = time.monotonic()
        if now < self._next_try:
            raise DbUnavailable(f"{self.url.redacted()} is unavailable")
        try:
            self._conn = connect(self.url)
        except DbUnavailable as e:
            self._failed(e)
            raise
        self._pid = os.getpid()
        if self.down_since:
            log.info("%s: %s is back after %.1f s", self.what, self.url.redacted(),
                     time.time() - self.down_since)
            self.down_since = 0.0
        return self._conn

    def _failed(self, e: Exception) -> None:
        now = time.monotonic()
        self._next_try = now + self.retry_interval
        if not self.down_since:
            self.down_since = time.time()
        if now - self._last_log >= self.log_interval:
            more = f" ({self._suppressed} more failures)" if self._suppressed else ""
            log.log(logging.ERROR, "%s: database %s unavailable: %s%s", self.what,
                    self.url.redacted(), e, more)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def _run(self, op: str, *args: Any) -> Any:
        conn = self._connection()
        try:
            return getattr(conn, op)(*args)
        except DbUnavailable as e:
            self._drop()
            self._failed(e)
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is broken anyway
                pass

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._run("execute", sql, params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(self._run("executemany", sql, rows))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run("query", sql, params)
        return rows

    def script(self, statements: Sequence[str]) -> None:
        self._run("script", statements)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._drop()
        self._conn = None
