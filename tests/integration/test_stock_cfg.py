"""Kamailio's own stock kamailio.cfg (Debian's /etc/kamailio/kamailio.cfg) under ser.

The file is used as shipped, except what a test run must change: the listen
lines (127.0.0.1, a free port) and, with the DB switches on, the driver line
``loadmodule "db_mysql.so"`` -> ``db_sqlite.so`` and the DBURL to a SQLite
file. As in Kamailio, the DB features need ``WITH_MYSQL`` too: it is what
defines ``DBURL`` and loads the driver.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import SER, free_port, need

STOCK = Path("/etc/kamailio/kamailio.cfg")
SCEN = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
DB_SWITCHES = ["-A", "WITH_MYSQL", "-A", "WITH_AUTH", "-A", "WITH_USRLOCDB", "-A", "WITH_IPAUTH"]
SERCTL = [sys.executable, "-m", "ser.serctl"]

pytestmark = pytest.mark.skipif(not STOCK.exists(),
                                reason=f"{STOCK} is absent (Debian package kamailio)")


def sqlite_copy(db: Path) -> str:
    text = STOCK.read_text()
    assert 'loadmodule "db_mysql.so"' in text
    text = text.replace('loadmodule "db_mysql.so"', 'loadmodule "db_sqlite.so"')
    text, n = re.subn(r'#!trydef DBURL "[^"]*"', f'#!trydef DBURL "sqlite://{db}"', text)
    assert n == 1
    return text


def with_listen(text: str, port: int) -> str:
    text, n = re.subn(r"^# listen=udp:10\.0\.0\.10:5060$",
                      f"listen=udp:127.0.0.1:{port}\nlisten=tcp:127.0.0.1:{port}",
                      text, flags=re.M)
    assert n == 1
    return text


def check(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SER, "-c", "-f", str(path), *args], capture_output=True, text=True,
                          timeout=60)


def test_stock_cfg_checks_unchanged():
    r = check(STOCK)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config file ok" in (r.stdout + r.stderr).lower()


def test_stock_cfg_checks_with_db_switches(tmp_path):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(sqlite_copy(tmp_path / "ser.db"))
    r = check(cfg, *DB_SWITCHES)
    assert r.returncode == 0, r.stdout + r.stderr


def _serctl(*args: str) -> str:
    r = subprocess.run([*SERCTL, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_stock_cfg_registers_and_calls(ser_factory, tmp_path):
    need("sipp")
    db = tmp_path / "ser.db"
    url = f"sqlite://{db}"
    _serctl("db", "init", url)
    _serctl("--db", url, "add", "alice@127.0.0.1", "alicepw")
    _serctl("--db", url, "add", "bob@127.0.0.1", "bobpw")
    port = free_port()
    text = with_listen(sqlite_copy(db), port).replace("{", "{{").replace("}", "}}")
    ser = ser_factory(text, args=[*DB_SWITCHES, "-n", "2"], port=port)

    bob_port = free_port()
    users = tmp_path / "users.csv"
    for user, pw, lport in (("alice", "alicepw", 0), ("bob", "bobpw", bob_port)):
        users.write_text(f"SEQUENTIAL\n{user};[authentication username={user} password={pw}]\n")
        cmd = [need("sipp"), "-sf", str(SCEN / "register_auth_local.xml"), "-inf", str(users),
               "-m", "1", "-i", "127.0.0.1", "-nostdin", "-timeout", "20s",
               f"127.0.0.1:{port}"]
        if lport:
            cmd[1:1] = ["-p", str(lport)]
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:] + ser.logtext()[-4000:]
    dump = str(ser.rpc("ul.dump"))
    assert "alice" in dump and f"sip:bob@127.0.0.1:{bob_port}" in dump

    uas = subprocess.Popen([need("sipp"), "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.1",
                            "-p", str(bob_port), "-m", "1", "-nostdin"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        users.write_text("SEQUENTIAL\nalice;\n")
        r = subprocess.run([need("sipp"), "-sf", str(SCEN / "uac_auth_call.xml"), "-inf", str(users),
                            "-i", "127.0.0.1", "-s", "bob", "-au", "alice", "-ap", "alicepw",
                            "-m", "1", "-nostdin", "-timeout", "30s", f"127.0.0.1:{port}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
        text = r.stdout + r.stderr
        assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+1\b", text), \
            text[-3000:] + ser.logtext()[-4000:]
        assert uas.wait(20) == 0
    finally:
        if uas.poll() is None:
            uas.terminate()
            uas.wait(10)
    # the stock config sets its accounting flag on INVITE and BYE: acc logs both
    log = ser.logtext()
    assert re.search(r"ACC: transaction answered: timestamp=\d+;method=INVITE;from_tag=\S+;"
                     r"to_tag=\S+;call_id=\S+;code=200;reason=OK;src_user=alice;"
                     r"src_domain=127\.0\.0\.1;src_ip=127\.0\.0\.1;dst_ouser=bob;dst_user=bob",
                     log), log[-4000:]
    assert re.search(r"ACC: transaction answered: .*method=BYE;.*code=200", log), log[-4000:]
