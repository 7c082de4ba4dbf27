"""registrar + usrloc on the wire: sipp REGISTERs, calls routed by lookup(),
expiry, RFC 3261 10.3 rules, restarts with db_mode 1/2, two nodes on one
PostgreSQL (db_mode 3), a PostgreSQL outage, SQL injection attempts."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ser.core.db import Db
from tests.integration.conftest import free_port, need

pytestmark = pytest.mark.integration
SCEN = Path(__file__).parents[2] / "bench" / "scenarios"

REG_CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:{host}:{{port}}
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "db_sqlite.so"
loadmodule "db_postgres.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", {db_mode})
modparam("usrloc", "db_url", "{db_url}")
modparam("usrloc", "timer_interval", 1)
modparam("registrar", "min_expires", 1)
modparam("registrar", "max_contacts", 3)
request_route {{{{
    if (is_method("REGISTER")) {{{{
        save("location");
        exit;
    }}}}
    if (uri == myself) {{{{
        $var(rc) = lookup("location");
        if ($var(rc) == -1) {{{{
            sl_send_reply("404", "Not Found");
            exit;
        }}}}
        if ($var(rc) < 0) {{{{
            sl_send_reply("500", "Lookup Failed");
            exit;
        }}}}
    }}}}
    forward();
}}}}
"""


def cfg(db_mode: int = 0, db_url: str = "", host: str = "127.0.0.1") -> str:
    return REG_CFG.format(db_mode=db_mode, db_url=db_url, host=host)


def register(port: int, user: str, contact: str, *, cseq: int = 1, callid: str = "cid1",
             expires: int | None = None, host: str = "127.0.0.1", extra: str = "",
             domain: str = "127.0.0.1") -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        lp = s.getsockname()[1]
        exp = f"Expires: {expires}\r\n" if expires is not None else ""
        msg = (f"REGISTER sip:{host} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{callid}{cseq};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=f1\r\n"
               f"To: <sip:{user}@{domain}>\r\nCall-ID: {callid}\r\nCSeq: {cseq} REGISTER\r\n"
               f"Contact: {contact}\r\n{exp}{extra}Content-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), (host, port))
        return s.recv(65535).decode()
    finally:
        s.close()


def status(reply: str) -> int:
    return int(reply.split(" ", 2)[1])


def contacts(ser, aor: str) -> list[str]:
    try:
        got = ser.rpc("ul.lookup", "location", aor)
    except AssertionError:
        return []
    return [c["Contact"]["Address"] for c in got["Contacts"]]


def dump_aors(ser) -> list[str]:
    d = ser.rpc("ul.dump")["Domains"][0]["Domain"]
    return [a["Info"]["AoR"] for a in d["AoRs"]]


def test_sipp_registers_many_users(ser_factory, tmp_path):
    need("sipp")
    ser = ser_factory(cfg())
    n = 200
    r = subprocess.run([need("sipp"), "-sf", str(SCEN / "register.xml"), "-m", str(n),
                        "-r", "200", "-i", "127.0.0.1", "-p", str(free_port()),
                        f"127.0.0.1:{ser.port}", "-timeout", "30", "-trace_err",
                        "-error_file", str(tmp_path / "err.log")],
                       capture_output=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:]
    aors = dump_aors(ser)
    assert len(aors) == n and "user1" in aors and f"user{n}" in aors
    assert contacts(ser, "user7")[0].startswith("sip:user7@127.0.0.1:")
    stats = ser.rpc("stats.get_statistics", "registrar:accepted_regs")
    assert stats == [f"registrar:accepted_regs = {n}"]


def test_call_through_lookup_and_unknown_user(ser_factory, tmp_path):
    sipp = need("sipp")
    ser = ser_factory(cfg())
    uas_port = free_port()
    rep = register(ser.port, "bob", f"<sip:bob@127.0.0.1:{uas_port}>", expires=60)
    assert status(rep) == 200
    assert f"Contact: <sip:bob@127.0.0.1:{uas_port}>;expires=60\r\n" in rep
    uas = subprocess.Popen([sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                            "-m", "1", "-timeout", "20"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        time.sleep(0.5)
        uac = subprocess.run([sipp, "-sn", "uac", "-s", "bob", "-i", "127.0.0.1",
                              "-p", str(free_port()), "-m", "1", "-timeout", "20",
                              f"127.0.0.1:{ser.port}"], capture_output=True, timeout=40,
                             cwd=tmp_path)
        assert uac.returncode == 0, uac.stdout[-2000:]
        assert uas.wait(30) == 0
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    # an unknown user: lookup returned -1, the script answers 404
    uac = subprocess.run([sipp, "-sn", "uac", "-s", "nobody", "-i", "127.0.0.1",
                          "-p", str(free_port()), "-m", "1", "-timeout", "10",
                          f"127.0.0.1:{ser.port}"], capture_output=True, timeout=30,
                         cwd=tmp_path)
    assert uac.returncode != 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    lp = s.getsockname()[1]
    s.sendto((f"MESSAGE sip:nobody@127.0.0.1:{ser.port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKm1;rport\r\nMax-Forwards: 70\r\n"
              "From: <sip:a@x>;tag=1\r\nTo: <sip:nobody@127.0.0.1>\r\nCall-ID: m1\r\n"
              "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", ser.port))
    assert s.recv(65535).decode().startswith("SIP/2.0 404 Not Found")
    s.close()


def test_q_values_pick_the_best_contact(ser_factory):
    ser = ser_factory(cfg())
    low, high = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (low, high):
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
    lp, hp = low.getsockname()[1], high.getsockname()[1]
    assert status(register(ser.port, "carol", f"<sip:carol@127.0.0.1:{lp}>;q=0.1",
                           callid="a")) == 200
    rep = register(ser.port, "carol", f"<sip:carol@127.0.0.1:{hp}>;q=0.9", callid="b")
    # the 200 lists every binding, best first
    assert re.findall(r"^Contact: (.*)\r$", rep, re.M) == [
        f"<sip:carol@127.0.0.1:{hp}>;expires=3600;q=0.9",
        f"<sip:carol@127.0.0.1:{lp}>;expires=3600;q=0.1"]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.sendto((f"MESSAGE sip:carol@127.0.0.1:{ser.port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP 127.0.0.1:{c.getsockname()[1]};branch=z9hG4bKq1;rport\r\n"
              "Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:carol@127.0.0.1>\r\n"
              "Call-ID: q1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n").encode(),
             ("127.0.0.1", ser.port))
    got = high.recv(65535).decode()
    assert got.startswith(f"MESSAGE sip:carol@127.0.0.1:{hp} SIP/2.0\r\n")
    for s in (low, high, c):
        s.close()


def test_expiry_star_cseq_and_limits(ser_factory):
    ser = ser_factory(cfg())
    assert status(register(ser.port, "dave", "<sip:dave@127.0.0.1:7001>", expires=3)) == 200
    assert contacts(ser, "dave") == ["sip:dave@127.0.0.1:7001"]
    time.sleep(4.2)
    assert "dave" not in dump_aors(ser)
    # several contacts, an older CSeq of the same Call-ID is rejected
    assert status(register(ser.port, "erin", "<sip:e@127.0.0.1:1>", cseq=5, callid="x")) == 200
    assert status(register(ser.port, "erin", "<sip:e@127.0.0.1:2>", cseq=1, callid="y")) == 200
    rep = register(ser.port, "erin", "<sip:e@127.0.0.1:1>", cseq=4, callid="x")
    assert rep.startswith("SIP/2.0 400 Invalid CSeq number")
    assert len(contacts(ser, "erin")) == 2
    # max_contacts 3 -> the fourth is refused with 503
    assert status(register(ser.port, "erin", "<sip:e@127.0.0.1:3>", callid="z")) == 200
    assert status(register(ser.port, "erin", "<sip:e@127.0.0.1:4>", callid="w")) == 503
    # Contact: * needs Expires: 0
    assert status(register(ser.port, "erin", "*", cseq=9, callid="x", expires=5)) == 400
    rep = register(ser.port, "erin", "*", cseq=9, callid="x", expires=0)
    assert status(rep) == 200 and "Contact:" not in rep
    assert contacts(ser, "erin") == []
    # a query (no Contact) lists the bindings; expires=0 on one removes it
    register(ser.port, "fay", "<sip:f@127.0.0.1:1>", callid="f")
    register(ser.port, "fay", "<sip:f@127.0.0.1:2>;expires=0", callid="g")
    assert contacts(ser, "fay") == ["sip:f@127.0.0.1:1"]


def _stat(ser, name: str) -> int:
    got = ser.rpc("stats.get_statistics", name)
    m = re.search(rf"{re.escape(name)} = (-?\d+)", "\n".join(got))
    return int(m.group(1)) if m else 0


def test_timer_expires_single_contacts_within_the_interval(ser_factory):
    """timer_interval 3: the timer sweeps a third of the table a second; each
    AoR's short-lived contact goes (counted), its long-lived one stays."""
    ser = ser_factory(cfg().replace('"timer_interval", 1', '"timer_interval", 3'))
    users = [f"exp{i}" for i in range(30)]
    for u in users:
        rep = register(ser.port, u, f"<sip:{u}@127.0.0.1:7001>;expires=2, "
                       f"<sip:{u}@127.0.0.1:7002>", expires=600, callid=f"c-{u}")
        assert status(rep) == 200, rep
    assert _stat(ser, "usrloc:location-contacts") == 60
    start = time.monotonic()
    while _stat(ser, "usrloc:expired_contacts") < 30:
        assert time.monotonic() - start < 2 + 3 + 3, _stat(ser, "usrloc:expired_contacts")
        time.sleep(0.2)
    assert _stat(ser, "usrloc:location-contacts") == 30
    assert all(contacts(ser, u) == [f"sip:{u}@127.0.0.1:7002"] for u in users)


def test_path_and_rpc(ser_factory):
    text = cfg().replace('modparam("registrar", "min_expires", 1)',
                         'modparam("registrar", "min_expires", 1)\n'
                         'modparam("registrar", "use_path", 1)\n'
                         'modparam("registrar", "path_mode", 2)')
    ser = ser_factory(text)
    rep = register(ser.port, "gil", "<sip:g@10.0.0.1:5060>", extra="Path: <sip:edge@127.0.0.1;lr>\r\n")
    assert rep.startswith("SIP/2.0 420 ") and "Unsupported: path" in rep
    rep = register(ser.port, "gil", "<sip:g@10.0.0.1:5060>",
                   extra="Path: <sip:edge@127.0.0.1;lr>\r\nSupported: path\r\n")
    assert status(rep) == 200 and "Path: <sip:edge@127.0.0.1;lr>\r\n" in rep
    got = ser.rpc("ul.lookup", "location", "gil")["Contacts"][0]["Contact"]
    assert got["Path"] == "<sip:edge@127.0.0.1;lr>"
    assert ser.rpc("ul.add", "location", "hal", "sip:h@127.0.0.1:9", 60, 0.5) == "OK"
    assert contacts(ser, "hal") == ["sip:h@127.0.0.1:9"]
    assert ser.rpc("ul.rm_contact", "location", "hal", "sip:h@127.0.0.1:9") == "OK"
    assert contacts(ser, "hal") == []
    assert ser.rpc("ul.rm", "location", "gil") == "OK"
    assert dump_aors(ser) == []
    out = subprocess.run([str(Path(__import__("sys").executable).with_name("serctl")),
                          "-s", ser.sock_path, "ul", "show"], capture_output=True, text=True)
    assert out.returncode == 0 and '"Domain": "location"' in out.stdout


@pytest.mark.parametrize("db_mode", [1, 2])
def test_restart_keeps_registrations(ser_factory, tmp_path, db_mode):
    url = f"sqlite://{tmp_path}/ser.db"
    ser = ser_factory(cfg(db_mode, url))
    for i in range(5):
        assert status(register(ser.port, f"u{i}", f"<sip:u{i}@127.0.0.1:{7000 + i}>",
                               expires=600)) == 200
    ser.stop()
    rows = Db(url).query("SELECT username FROM location ORDER BY username")
    assert rows == [(f"u{i}",) for i in range(5)]
    ser2 = ser_factory(cfg(db_mode, url), port=ser.port)
    assert sorted(dump_aors(ser2)) == [f"u{i}" for i in range(5)]
    assert contacts(ser2, "u3") == ["sip:u3@127.0.0.1:7003"]


def test_db_only_mode_two_nodes_share_postgres(ser_factory, pg_db):
    a = ser_factory(cfg(3, pg_db, "127.0.0.1"))
    b = ser_factory(cfg(3, pg_db, "127.0.0.2"), port=free_port("127.0.0.2"))
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(3)
    up = uas.getsockname()[1]
    assert status(register(a.port, "ivy", f"<sip:ivy@127.0.0.1:{up}>", host="127.0.0.1")) == 200
    assert contacts(b, "ivy") == [f"sip:ivy@127.0.0.1:{up}"]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.sendto((f"MESSAGE sip:ivy@127.0.0.2:{b.port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP 127.0.0.1:{c.getsockname()[1]};branch=z9hG4bKd3;rport\r\n"
              "Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:ivy@127.0.0.2>\r\n"
              "Call-ID: d3\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n").encode(),
             ("127.0.0.2", b.port))
    assert uas.recv(65535).decode().startswith(f"MESSAGE sip:ivy@127.0.0.1:{up} SIP/2.0")
    uas.close()
    c.close()


def test_postgres_outage(ser_factory, private_pg):
    ser = ser_factory(cfg(1, private_pg.url))
    assert status(register(ser.port, "jo", "<sip:jo@127.0.0.1:1>")) == 200
    private_pg.stop()
    try:
        codes = [status(register(ser.port, "kim", "<sip:kim@127.0.0.1:2>", callid=f"k{i}"))
                 for i in range(3)]
        assert codes == [500, 500, 500]
        assert contacts(ser, "jo") == ["sip:jo@127.0.0.1:1"]      # nothing stored is lost
        errors = [ln for ln in ser.logtext().splitlines() if "unavailable" in ln]
        # once per interval and process (2 workers and the timer)
        assert 1 <= len(errors) <= 3, errors
    finally:
        private_pg.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if status(register(ser.port, "lee", "<sip:lee@127.0.0.1:3>")) == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("no 200 after PostgreSQL came back")
    # the timer writes what was kept in memory meanwhile
    db = Db(private_pg.url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        users = {r[0] for r in db.query("SELECT username FROM location")}
        if users >= {"jo", "kim", "lee"}:
            break
        time.sleep(0.5)
    assert users >= {"jo", "kim", "lee"}
    db.close()


EVIL_USERS = ["o'neil", "x';DROP%20TABLE%20location;--", "a%00b';--", "semi;colon=1"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_sql_injection_attempts(ser_factory, tmp_path, engine, request):
    url = f"sqlite://{tmp_path}/inj.db" if engine == "sqlite" else request.getfixturevalue("pg_db")
    text = cfg(3, url).replace('loadmodule "registrar.so"',
                               'loadmodule "registrar.so"\nmodparam("usrloc", "use_domain", 1)')
    ser = ser_factory(text)
    for i, u in enumerate(EVIL_USERS):
        rep = register(ser.port, u, f"<sip:{u}@127.0.0.1:{8000 + i};x='1;DROP>", callid=f"e{i}",
                       domain=f"drop-table-{i}.example")
        assert status(rep) == 200, rep
    # a quote or semicolon in a host is not SIP: refused before any SQL
    rep = register(ser.port, "q", "<sip:q@127.0.0.1:1>", callid="q", domain="d'x")
    assert status(rep) == 400
    db = Db(url)
    rows = db.query("SELECT username, domain, contact FROM location ORDER BY domain")
    assert [(r[0], r[1]) for r in rows] == [(u.lower(), f"drop-table-{i}.example")
                                            for i, u in enumerate(EVIL_USERS)]
    assert rows[1][2] == f"sip:{EVIL_USERS[1]}@127.0.0.1:8001;x='1;DROP"
    # a raw NUL byte in the request never reaches SQL: the parser refuses it
    rep = register(ser.port, "nul\0user", "<sip:n@127.0.0.1:1>", callid="nul")
    assert status(rep) in (400, 500)
    assert len(db.query("SELECT * FROM location")) == len(EVIL_USERS)
    db.close()
