"""The DB layer against real SQLite and PostgreSQL: URLs, schema, bound values."""

from __future__ import annotations

import pytest

from ser.core.db import Db, DbError, DbUnavailable, connect, parse_url
from ser.core.db.schema import TABLES, create_sqlite, ddl, init_db, sqlite_missing

EVIL = [
    "alice'; DROP TABLE location; --",
    "x\" OR \"1\"=\"1",
    "a;b;c",
    "Robert'); DELETE FROM version;--",
    "%s %% ? $1",
]


def test_url_forms():
    assert parse_url("sqlite:///var/lib/ser/ser.db").database == "/var/lib/ser/ser.db"
    assert parse_url("sqlite://ser.db").database == "ser.db"
    u = parse_url("postgres://ser:p%40ss@db.example.com:5433/ser")
    assert (u.user, u.password, u.host, u.port, u.database) == \
        ("ser", "p@ss", "db.example.com", 5433, "ser")
    assert u.driver == "db_postgres" and "p@ss" not in u.redacted()
    assert parse_url("postgresql://h/d").driver == "db_postgres"
    for bad in ("mysql://h/d", "ser.db", "sqlite://", "postgres://host", "postgres:///db"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_ddl_both_engines():
    for t in TABLES:
        lite = ddl(t, "sqlite")
        pg = ddl(t, "postgres")
        assert lite[0].startswith(f"CREATE TABLE IF NOT EXISTS {t.name} (")
        assert len(lite) == len(pg) == 1 + len(t.indexes)
    loc = "\n".join(ddl(TABLES[4], "postgres"))
    assert "SERIAL PRIMARY KEY" in loc and "ruid VARCHAR(64) DEFAULT '' NOT NULL" in loc


def _check_engine(url: str) -> None:
    db = Db(url)
    assert init_db(db)[0] == "version"
    init_db(db)          # idempotent
    versions = dict(db.query("SELECT table_name, table_version FROM version"))
    assert versions == {"subscriber": 7, "grp": 3, "address": 6, "location": 9, "acc": 5,
                        "htable": 2}
    for i, s in enumerate(EVIL):
        db.execute("INSERT INTO subscriber (username, domain, password) VALUES (?, ?, ?)",
                   (s, s + ".example", f"pw{i}"))
    for s in EVIL:
        rows = db.query("SELECT username, domain FROM subscriber WHERE username = ?", (s,))
        assert rows == [(s, s + ".example")]
    assert db.query("SELECT count(*) FROM subscriber")[0][0] == len(EVIL)
    assert len(db.query("SELECT * FROM version")) == 6
    with pytest.raises(DbError):
        db.query("SELECT nosuchcolumn FROM subscriber")
    db.close()


def test_sqlite_schema_and_bound_values(tmp_path):
    url = f"sqlite://{tmp_path}/ser.db"
    _check_engine(url)
    # NUL bytes are data too
    db = Db(url)
    db.execute("INSERT INTO subscriber (username, domain) VALUES (?, ?)", ("nul\0'x", "d"))
    assert db.query("SELECT username FROM subscriber WHERE domain = 'd'") == [("nul\0'x",)]


def test_sqlite_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    connect("sqlite://rel.db").close()
    assert (tmp_path / "rel.db").exists()


def test_sqlite_unavailable(tmp_path):
    db = Db(f"sqlite://{tmp_path}/no/such/dir/x.db", retry_interval=60)
    with pytest.raises(DbUnavailable):
        db.query("SELECT 1")
    with pytest.raises(DbUnavailable):    # no new attempt before retry_interval
        db.query("SELECT 1")


def test_postgres_schema_and_bound_values(pg_db):
    _check_engine(pg_db)
    db = Db(pg_db)
    # PostgreSQL text cannot hold NUL: an error, never SQL
    with pytest.raises(DbError):
        db.execute("INSERT INTO subscriber (username) VALUES (?)", ("nul\0'; DROP TABLE x",))
    assert db.query("SELECT count(*) FROM version")[0][0] == 6


def test_postgres_down_and_back(private_pg):
    db = Db(private_pg.url, retry_interval=0.0, log_interval=0.0)
    init_db(db)
    db.execute("INSERT INTO subscriber (username) VALUES (?)", ("kept",))
    private_pg.stop()
    with pytest.raises(DbUnavailable):
        db.query("SELECT 1")
    with pytest.raises(DbUnavailable):
        db.query("SELECT 1")
    private_pg.start()
    assert db.query("SELECT username FROM subscriber") == [("kept",)]


def test_sqlite_created_on_first_start(tmp_path):
    """What the master does for a db_url at start: a missing file, then
    missing tables, get Kamailio's schema; a complete database is left alone."""
    url = f"sqlite://{tmp_path}/new/ser.db"
    line, made = create_sqlite(url)
    assert line.startswith(f"db: created {url} with Kamailio's schema (version, subscriber,")
    assert made == [str(tmp_path / "new"), str(tmp_path / "new" / "ser.db")]
    assert sqlite_missing(str(tmp_path / "new" / "ser.db")) == []
    assert create_sqlite(url) is None
    conn = connect(url)
    conn.execute("INSERT INTO subscriber (username, domain, password) VALUES ('a', 'b', 'c')")
    conn.script(["DROP TABLE grp", "DROP TABLE location"])
    conn.close()
    line, made = create_sqlite(url)
    assert line == f"db: created the missing tables grp, location in {url}" and made == []
    assert connect(url).query("SELECT username FROM subscriber") == [("a",)]


def test_sqlite_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"cannot create the database sqlite://.*/file/ser\.db: "
                                      r".*\(set another DBURL"):
        create_sqlite(f"sqlite://{tmp_path}/file/ser.db")
