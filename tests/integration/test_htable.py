"""htable on the wire: $sht/$shtinc/$shtex across workers, the RPC methods,
autoexpire, dbmode=1 with SQLite, and the seed's brute-force block (09) against
svcrack."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ser.core.db import Db
from ser.core.db.schema import init_db
from tests.integration.conftest import free_port, need

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
SEED09 = ROOT / "tests" / "data" / "seed-snippets" / "09-htable-bruteforce.cfg"
SER = str(Path(sys.executable).with_name("ser"))
HAVE_AUTH = (ROOT / "ser" / "mods" / "auth.py").exists()

HT_CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=3
disable_tcp=yes
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
loadmodule "db_sqlite.so"
loadmodule "htable.so"
modparam("htable", "htable", "t=>size=8;")
modparam("htable", "htable", "c->size=4;initval=0")
modparam("htable", "htable", "ban=>size=6;autoexpire=2;")
modparam("htable", "htable", "d=>size=4;dbtable=htable;dbmode=1")
modparam("htable", "db_url", "sqlite://{db}")

request_route {{
    if ($sht(ban=>$si) != $null) {{
        sl_send_reply("403", "Banned");
        exit;
    }}
    switch ($rU) {{
        case "count":
            $var(n) = $shtinc(c=>$fU);
            sl_send_reply("200", "n=$var(n)");
            exit;
        case "get":
            sl_send_reply("200", "v=$sht(t=>$hdr(X-Key))");
            exit;
        case "put":
            $sht(t=>$hdr(X-Key)) = $hdr(X-Value);
            $shtex(t=>$hdr(X-Key)) = 100;
            sl_send_reply("200", "stored ex=$shtex(t=>$hdr(X-Key))");
            exit;
        case "del":
            $sht(t=>$hdr(X-Key)) = $null;
            sl_send_reply("200", "deleted");
            exit;
        case "rmre":
            sht_rm_name_re("t=>$hdr(X-Key)");
            sl_send_reply("200", "removed");
            exit;
        case "has":
            if (sht_has_name("t", "sw", "$hdr(X-Key)")) {{
                sl_send_reply("200", "yes");
            }} else {{
                sl_send_reply("404", "no");
            }}
            exit;
        case "ban":
            sht_lock("ban=>$si");
            $sht(ban=>$si) = 1;
            sht_unlock("ban=>$si");
            sl_send_reply("200", "banned");
            exit;
    }}
    sl_send_reply("200", "OK");
}}
"""


def request(port: int, user: str, src: str = "127.0.0.1", headers: str = "",
            method: str = "OPTIONS", branch: str | None = None, timeout: float = 2.0,
            sock: socket.socket | None = None) -> str | None:
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sock is None:
            s.bind((src, 0))
        lp = s.getsockname()[1]
        branch = branch or f"z9hG4bK{time.monotonic_ns()}"
        msg = (f"{method} sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {src}:{lp};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=f{lp}\r\n"
               f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: {branch}@x\r\n"
               f"CSeq: 1 {method}\r\n{headers}Content-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        s.sendto(msg.encode(), ("127.0.0.1", port))
        try:
            return s.recv(65535).decode(errors="replace")
        except TimeoutError:
            return None
    finally:
        if sock is None:
            s.close()


def status(reply: str | None) -> str:
    assert reply is not None, "no reply"
    return reply.split("\r\n", 1)[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "ht.db"
    db = Db(f"sqlite://{path}")
    init_db(db)
    db.execute("INSERT INTO htable (key_name, key_type, value_type, key_value, expires) "
               "VALUES ('preloaded', 0, 1, '42', 0), ('name', 0, 0, 'alice', 0)")
    db.close()
    return path



def test_items_on_the_wire_and_rpc(ser_factory, db_path):
    ser = ser_factory(HT_CFG.replace("{db}", str(db_path)))
    port = ser.port
    # $shtinc from many sources, served by several workers: one shared counter
    seen = [status(request(port, "count", f"127.0.0.{10 + i % 5}")) for i in range(20)]
    assert seen[-1] == "SIP/2.0 200 n=20" and len(set(seen)) == 20
    assert ser.rpc("htable.get", "c", "count") == {"item": {"name": "count", "value": 20}}
    # script writes, RPC reads; RPC writes, script reads
    assert status(request(port, "put", headers="X-Key: k1\r\nX-Value: hello\r\n")) == \
        "SIP/2.0 200 stored ex=100"
    assert ser.rpc("htable.get", "t", "k1")["item"]["value"] == "hello"
    ser.rpc("htable.sets", "t", "k2", "from-rpc")
    ser.rpc("htable.seti", "t", "k3", "7")
    assert status(request(port, "get", headers="X-Key: k2\r\n")) == "SIP/2.0 200 v=from-rpc"
    assert status(request(port, "get", headers="X-Key: k3\r\n")) == "SIP/2.0 200 v=7"
    assert status(request(port, "has", headers="X-Key: k\r\n")) == "SIP/2.0 200 yes"
    dump = ser.rpc("htable.dump", "t")
    items = {i["name"]: i for e in dump for i in e["slot"]}
    assert items["k3"] == {"name": "k3", "value": 7, "type": "int"}
    assert items["k1"]["type"] == "str" and 95 <= items["k1"]["expires"] <= 100
    assert sum(e["size"] for e in dump) == 3
    ser.rpc("htable.delete", "t", "k2")
    assert status(request(port, "get", headers="X-Key: k2\r\n")) == "SIP/2.0 200 v=<null>"
    assert status(request(port, "del", headers="X-Key: k3\r\n")) == "SIP/2.0 200 deleted"
    assert status(request(port, "rmre", headers="X-Key: ^k\r\n")) == "SIP/2.0 200 removed"
    assert ser.rpc("htable.dump", "t") == []
    assert status(request(port, "has", headers="X-Key: k\r\n")) == "SIP/2.0 404 no"
    tables = {t["name"]: t for t in ser.rpc("htable.listTables")}
    assert tables["t"]["size"] == 8 and tables["ban"]["expire"] == 2
    assert tables["d"]["dbtable"] == "htable" and tables["d"]["dbmode"] == 1
    st = {s["name"]: s for s in ser.rpc("htable.stats")}
    assert st["c"] == {"name": "c", "slots": 16, "all": 1, "min": 0, "max": 1}
    # dbmode=1: loaded at start
    assert ser.rpc("htable.get", "d", "preloaded")["item"]["value"] == 42
    assert ser.stop() == 0


def test_autoexpire_in_the_timer_process(ser_factory, db_path):
    ser = ser_factory(HT_CFG.replace("{db}", str(db_path)))
    port = ser.port
    assert status(request(port, "ban", "127.0.0.20")) == "SIP/2.0 200 banned"
    assert status(request(port, "x", "127.0.0.20")) == "SIP/2.0 403 Banned"
    assert status(request(port, "x", "127.0.0.21")) == "SIP/2.0 200 OK"
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        if ser.rpc("htable.stats")[2]["all"] == 0:       # swept by the timer
            break
        time.sleep(0.2)
    assert [s["all"] for s in ser.rpc("htable.stats") if s["name"] == "ban"] == [0]
    assert status(request(port, "x", "127.0.0.20")) == "SIP/2.0 200 OK"


def test_dbmode_saves_at_shutdown_and_reloads(ser_factory, db_path):
    ser = ser_factory(HT_CFG.replace("{db}", str(db_path)))
    ser.rpc("htable.sets", "d", "added", "v1")
    ser.rpc("htable.delete", "d", "name")
    assert ser.stop() == 0
    db = Db(f"sqlite://{db_path}")
    rows = sorted(db.query("SELECT key_name, value_type, key_value FROM htable"))
    assert rows == [("added", 0, "v1"), ("preloaded", 1, "42")]
    ser2 = ser_factory(HT_CFG.replace("{db}", str(db_path)))
    assert ser2.rpc("htable.get", "d", "added")["item"]["value"] == "v1"
    db.execute("INSERT INTO htable (key_name, key_type, value_type, key_value, expires) "
               "VALUES ('fresh', 0, 1, '5', 0)")
    db.close()
    assert ser2.rpc("htable.reload", "d").startswith("Ok")
    assert ser2.rpc("htable.get", "d", "fresh")["item"]["value"] == 5
    with pytest.raises(AssertionError, match="no dbtable"):
        ser2.rpc("htable.reload", "t")
    with pytest.raises(AssertionError, match="no such htable"):
        ser2.rpc("htable.dump", "nosuch")


# ---------------------------------------------------------------- the seed's 09

needs_auth = pytest.mark.skipif(not HAVE_AUTH, reason="auth module not available yet")


@needs_auth
def test_seed_09_passes_check():
    r = subprocess.run([SER, "-c", "-f", str(SEED09)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


BLOCK = 4


def seed09(db: Path, qop: bool, block: int = BLOCK) -> str:
    text = SEED09.read_text().replace("{", "{{").replace("}", "}}")
    assert 'www_challenge("$td", "0")' in text and "$Ts - 900" in text
    if qop:
        text = text.replace('www_challenge("$td", "0")', 'www_challenge("$td", "1")')
    text = text.replace("$Ts - 900", "$Ts - BLOCK_WINDOW")
    text = text.replace("sqlite:///var/lib/ser/ser.db", f"sqlite://{db}")
    first, rest = text.split("\n", 1)
    head = (f"#!define BLOCK_WINDOW {block}\ndebug=2\nlog_stderror=yes\nchildren=2\n"
            "disable_tcp=yes\nlisten=udp:127.0.0.1:{port}\nloadmodule \"jsonrpcs.so\"\n")
    return f"{first}\n{head}{rest}"


def subscriber_db(tmp_path: Path) -> Path:
    path = tmp_path / "auth.db"
    db = Db(f"sqlite://{path}")
    init_db(db)
    # calculate_ha1 with the default password_column (ha1): the plaintext is there
    db.execute("INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
               "VALUES ('alice', '127.0.0.1', 'wonderland', 'wonderland', '')")
    db.close()
    return path


def _param(header: str, name: str) -> str | None:
    m = re.search(rf'{name}="?([^",]+)"?', header)
    return m.group(1) if m else None


def register_with(port: int, src: str, user: str, password: str) -> str:
    """REGISTER, answer the challenge with ``password`` (qop=auth when offered);
    returns the status line of the final answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    try:
        first = request(port, user, method="REGISTER", sock=s, src=src)
        assert first is not None
        if not first.startswith("SIP/2.0 401"):
            return status(first)
        chal = re.search(r"WWW-Authenticate: *Digest (.*)", first, re.I)
        assert chal, first
        realm, nonce, qop = (_param(chal.group(1), k) for k in ("realm", "nonce", "qop"))
        uri = f"sip:{user}@127.0.0.1:{port}"
        ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        extra = ""
        if qop:
            cnonce, nc = "0a4f113b", "00000001"
            resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
            extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        else:
            resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        auth = (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{resp}", algorithm=MD5{extra}\r\n')
        return status(request(port, user, method="REGISTER", sock=s, src=src, headers=auth))
    finally:
        s.close()


@needs_auth
def test_seed_09_as_written_without_qop(ser_factory, tmp_path):
    ser = ser_factory(seed09(subscriber_db(tmp_path), qop=False))
    assert register_with(ser.port, "127.0.0.30", "alice", "wonderland") == "SIP/2.0 200 OK"
    for _ in range(3):
        register_with(ser.port, "127.0.0.30", "alice", "wrong")
    assert register_with(ser.port, "127.0.0.30", "alice", "wonderland") == \
        "SIP/2.0 403 Try later"
    time.sleep(BLOCK + 1.5)
    assert register_with(ser.port, "127.0.0.30", "alice", "wonderland") == "SIP/2.0 200 OK"


@needs_auth
def test_svcrack_never_finds_the_password(ser_factory, tmp_path):
    block = 25                    # longer than svcrack runs (it waits for silence)
    ser = ser_factory(seed09(subscriber_db(tmp_path), qop=True, block=block))
    started = time.monotonic()
    words = tmp_path / "words.txt"
    words.write_text("\n".join(["123456", "password", "alice", "secret", "letmein",
                                "qwerty", "wonderland", "admin", "1234", "sip"]) + "\n")
    r = subprocess.run([need("svcrack"), "-u", "alice", "-d", str(words), "-b", "127.0.0.31",
                        "-P", str(free_port("127.0.0.31")), "-p", str(ser.port), "127.0.0.1"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert "wonderland" not in out and "The password for" not in out, out
    assert ser.rpc("htable.get", "a", "alice::auth_count")["item"]["value"] == 3
    assert time.monotonic() - started < block - 2, "svcrack ran longer than the window"
    # the right password is refused too while the window lasts
    assert register_with(ser.port, "127.0.0.32", "alice", "wonderland") == \
        "SIP/2.0 403 Try later"
    time.sleep(max(0.0, started + block + 1.5 - time.monotonic()))
    assert register_with(ser.port, "127.0.0.32", "alice", "wonderland") == "SIP/2.0 200 OK"
