"""Shared test fixtures: the message corpora."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
RFC4475 = DATA / "rfc4475"


def rfc4475(name: str) -> bytes:
    return (RFC4475 / f"{name}.dat").read_bytes()


@pytest.fixture
def corpus() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))}


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL the tests share (``make test`` sets SER_TEST_PG_URL,
    starting a private server when the machine has none)."""
    import os

    from ser.core.db import DbError, connect
    url = os.environ.get("SER_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
    try:
        connect(url).close()
    except DbError as e:
        pytest.fail(f"no PostgreSQL at {url} ({e}); run the tests with `make test` "
                    "(scripts/services.sh starts one)")
    return url


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """A fresh database of its own on the shared server; its URL."""
    import os
    import uuid

    import psycopg
    name = f"ser_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    base = pg_url.rsplit("/", 1)[0]
    with psycopg.connect(pg_url.replace("postgres://", "postgresql://"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_url.replace("postgres://", "postgresql://"),
                             autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def private_pg() -> Iterator[object]:
    """A private PostgreSQL server the test may stop and start."""
    from tests.pgserver import PrivatePg
    pg = PrivatePg()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()
