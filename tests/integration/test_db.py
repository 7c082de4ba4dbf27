"""`serctl db init` against real SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess

import pytest

from ser.core.db import Db
from tests.integration.conftest import SERCTL

pytestmark = pytest.mark.integration
VERSIONS = {"subscriber": 7, "grp": 3, "address": 6, "location": 9, "acc": 5, "htable": 2}


def _init(url: str) -> str:
    r = subprocess.run([SERCTL, "db", "init", url], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_db_init_creates_kamailio_schema(tmp_path, engine, request):
    url = f"sqlite://{tmp_path}/sub/ser.db" if engine == "sqlite" \
        else request.getfixturevalue("pg_db")
    assert "created version, subscriber, grp, address, location, acc, htable" in _init(url)
    _init(url)                                        # twice: nothing changes
    db = Db(url)
    assert dict(db.query("SELECT table_name, table_version FROM version")) == VERSIONS
    db.execute("INSERT INTO location (ruid, username, contact) VALUES (?, ?, ?)",
               ("r1", "u", "sip:u@h"))
    row = db.query("SELECT q, callid, cseq, flags, expires FROM location")[0]
    assert row[:4] == (1.0, "Default-Call-ID", 1, 0)
    assert str(row[4]).startswith("2030-05-28 21:32:15")
    db.close()


def test_db_init_bad_url():
    r = subprocess.run([SERCTL, "db", "init", "mysql://h/d"], capture_output=True, text=True)
    assert r.returncode == 1 and "scheme" in r.stderr
