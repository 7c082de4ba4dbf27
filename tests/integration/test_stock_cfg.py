"""Kamailio's own stock kamailio.cfg (Debian's /etc/kamailio/kamailio.cfg) under ser.

The file is used as shipped, except what a test run must change: the listen
lines (127.0.0.1, a free port) and, with the DB switches on, the driver line
``loadmodule "db_mysql.so"`` -> ``db_sqlite.so`` and the DBURL to a SQLite
file. As in Kamailio, the DB features need ``WITH_MYSQL`` too: it is what
defines ``DBURL`` and loads the driver.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import SER, free_port, need, sip_options, udp_exchange
from tests.integration.natua import NatUA, reply_to

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


def _subscribers(tmp_path: Path) -> Path:
    """A SQLite DB with Kamailio's tables and the subscribers alice and bob."""
    db = tmp_path / "ser.db"
    url = f"sqlite://{db}"
    _serctl("db", "init", url)
    _serctl("--db", url, "add", "alice@127.0.0.1", "alicepw")
    _serctl("--db", url, "add", "bob@127.0.0.1", "bobpw")
    return db


def test_stock_cfg_registers_and_calls(ser_factory, tmp_path):
    need("sipp")
    db = _subscribers(tmp_path)
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


# ---------------------------------------------------------------- WITH_NAT

NAT_SWITCHES = ["-A", "WITH_NAT", *DB_SWITCHES]


def test_stock_cfg_checks_with_nat(tmp_path):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(sqlite_copy(tmp_path / "ser.db"))
    for extra in ([], ["-A", "WITH_NATSIPPING"]):
        r = check(cfg, *NAT_SWITCHES, *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        # ser has no media relay: loading rtpproxy says so on every check and start
        assert re.search(r"WARNING: .*kamailio\.cfg:\d+: module 'rtpproxy': ser has no media "
                         r"relay.*media \(RTP\) is NOT relayed", r.stderr), r.stderr


def test_stock_cfg_nat_register_and_call(ser_factory, tmp_path):
    db = _subscribers(tmp_path)
    port = free_port()
    text = with_listen(sqlite_copy(db), port)
    # ping every second instead of every 30, so the test sees the pings
    text, n = re.subn(r'modparam\("nathelper", "natping_interval", 30\)',
                      'modparam("nathelper", "natping_interval", 1)', text)
    assert n == 1
    ser = ser_factory(text.replace("{", "{{").replace("}", "}}"),
                      args=[*NAT_SWITCHES, "-A", "WITH_NATSIPPING", "-n", "2"], port=port)
    assert "media (RTP) is NOT relayed" in ser.logtext()
    bob = NatUA("bob", "bobpw", "127.0.0.5", port)
    alice = NatUA("alice", "alicepw", "127.0.0.6", port)
    try:
        ok = bob.register()
        assert ok.startswith("SIP/2.0 200"), ok + ser.logtext()[-3000:]
        # the registrar keeps where the REGISTER really came from (fix_nated_register)
        recv = f"sip:{bob.addr[0]}:{bob.addr[1]}"
        assert f'received="{recv}"' in ok, ok
        dump = str(ser.rpc("ul.dump"))
        assert recv in dump and "sip:bob@10.0.0.99:5060" in dump

        # NAT pinging from the timer process: SIP OPTIONS (WITH_NATSIPPING) to
        # the real address, not to the 10.0.0.99 of the Contact
        ping = bob.wait_for(lambda d: d.startswith("OPTIONS "), timeout=10)
        assert ping.startswith("OPTIONS sip:bob@10.0.0.99:5060 SIP/2.0\r\n")
        assert "From: <sip:pinger@kamailio.org>;tag=" in ping

        # alice (behind a NAT too) calls bob: the INVITE reaches bob's real address
        sdp = ("v=0\r\no=alice 1 1 IN IP4 10.0.0.98\r\ns=-\r\nc=IN IP4 10.0.0.98\r\n"
               "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
        alice.private = "10.0.0.98:5060"
        ruri = "sip:bob@127.0.0.1"
        alice.invite(ruri, "natcall", body=sdp)
        inv = bob.wait_for(lambda d: d.startswith("INVITE "), timeout=10)
        # the R-URI is bob's registered Contact; the caller's Contact got the
        # alias of its real address (set_contact_alias, nat_uac_test found it)
        assert inv.startswith("INVITE sip:bob@10.0.0.99:5060 SIP/2.0\r\n"), inv
        a_addr = f"{alice.addr[0]}~{alice.addr[1]}~1"
        assert re.search(rf"^Contact: <sip:alice@10\.0\.0\.98:5060;alias={a_addr}>\r$", inv,
                         re.M), inv
        assert re.search(r"^Record-Route: <sip:127\.0\.0\.1:\d+;lr", inv, re.M), inv
        # bob answers from behind its NAT: the 200 OK's Contact gets bob's real
        # address as alias (onreply_route: the contact's nat_bflag, is_first_hop)
        bob.sock.sendto(reply_to(inv, "200 OK", f"sip:bob@{bob.private}", "bobtag")
                        .encode(), ("127.0.0.1", port))
        ok = alice.wait_for(lambda d: d.startswith("SIP/2.0 200") and "INVITE" in d)
        b_addr = f"{bob.addr[0]}~{bob.addr[1]}~1"
        m = re.search(r"^Contact: <([^>]*)>\r$", ok, re.M)
        assert m and m.group(1) == f"sip:bob@10.0.0.99:5060;alias={b_addr}", ok
        # in-dialog: alice's ACK and BYE target that Contact through our
        # Record-Route; handle_ruri_alias sends them to bob's real address
        for method in ("ACK", "BYE"):
            alice.in_dialog(method, ok, ruri, "natcall", "bobtag")
            got = bob.wait_for(lambda d, m=method: d.startswith(f"{m} "), timeout=10)
            assert got.startswith(f"{method} sip:bob@10.0.0.99:5060 SIP/2.0\r\n"), got
        bye = got
        bob.sock.sendto(reply_to(bye, "200 OK", f"sip:bob@{bob.private}", "bobtag")
                        .replace(";tag=bobtag;tag=bobtag", ";tag=bobtag").encode(),
                        ("127.0.0.1", port))
        alice.wait_for(lambda d: d.startswith("SIP/2.0 200") and "BYE" in d)
    finally:
        bob.close()
        alice.close()


# ---------------------------------------------------------------- WITH_JSONRPC

def _http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_stock_cfg_jsonrpc_over_http_on_the_sip_port(ser_factory):
    port = free_port()
    text = with_listen(STOCK.read_text(), port).replace("{", "{{").replace("}", "}}")
    ser = ser_factory(text, args=["-A", "WITH_JSONRPC", "-n", "1"], port=port)
    req = json.dumps({"jsonrpc": "2.0", "method": "core.version", "id": 7}).encode()
    status, headers, body = _http(port, "POST", "/RPC", req)
    assert status == 200, ser.logtext()[-3000:]
    assert headers["content-type"] == "application/json"
    assert headers.get("connection") == "close"        # set_reply_close()
    resp = json.loads(body)
    assert resp["id"] == 7 and resp["result"].startswith("ser "), resp
    # a method of a module, and an unknown one
    status, _, body = _http(port, "POST", "/RPC", json.dumps(
        {"jsonrpc": "2.0", "method": "ul.dump", "id": 8}).encode())
    assert status == 200 and "result" in json.loads(body)
    status, _, body = _http(port, "POST", "/RPC", json.dumps(
        {"jsonrpc": "2.0", "method": "no.such", "id": 9}).encode())
    assert json.loads(body)["error"]["code"] == -32601
    # a GET has no Content-Length: tcp_accept_no_cl lets it through; $hu is the URL
    status, headers, body = _http(port, "GET", "/nothing/here")
    assert status == 200 and headers["content-type"] == "text/html"
    assert body == b"<html><body>Wrong URL /nothing/here</body></html>"
    # the raw bytes: one HTTP/1.1 answer, then the connection is closed
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
        else:
            raise AssertionError(f"connection not closed; got {data!r}")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"Wrong URL /x</body></html>")
    # SIP on the same TCP port still goes to request_route (whose answer to
    # sipsak's OPTIONS is this 403, from Kamailio as from ser)
    r = subprocess.run([need("sipsak"), "-E", "tcp", "-s", f"sip:127.0.0.1:{port}", "-v"],
                       capture_output=True, text=True, timeout=20)
    assert "SIP/2.0 403 Not relaying" in r.stdout + r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------- WITH_DEBUG

def test_stock_cfg_checks_with_debug(tmp_path):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(sqlite_copy(tmp_path / "ser.db"))
    for extra in ([], DB_SWITCHES):
        r = check(cfg, "-A", "WITH_DEBUG", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "debugger" not in r.stderr, r.stderr       # no parameter of it is ignored


def _line_of(text: str, after: str, statement: str) -> int:
    """The line number of the first ``statement`` after the line ``after``."""
    lines = text.splitlines()
    start = lines.index(after)
    return next(i + 1 for i in range(start, len(lines)) if lines[i].strip() == statement)


def test_stock_cfg_debug_traces_every_action_with_its_line(ser_factory, tmp_path):
    port = free_port()
    text = STOCK.read_text()
    # one listen line for the commented one, the DB lines changed in place:
    # the line numbers stay the stock file's
    run, n = re.subn(r"^# listen=udp:10\.0\.0\.10:5060$", f"listen=udp:127.0.0.1:{port}",
                     sqlite_copy(tmp_path / "ser.db"), flags=re.M)
    assert n == 1 and len(run.splitlines()) == len(text.splitlines())
    ser = ser_factory(run.replace("{", "{{").replace("}", "}}"),
                      args=["-A", "WITH_DEBUG", *DB_SWITCHES, "-n", "1"], port=port)

    def options(branch: str) -> bytes:      # to the server itself: REQINIT's keepalive
        return sip_options(port, branch=branch).replace(b"sip:ping@", b"sip:")

    reply = udp_exchange(options("z9hG4bKtest1"), port)
    assert reply and reply.startswith(b"SIP/2.0 200 Keepalive"), reply
    cfg = str(ser.cfg)

    def trace(route: str, line: int, name: str) -> str:
        return (rf"exec: \*\*\* cfgtrace:request_route=\[{route}\] c=\[{re.escape(cfg)}\] "
                rf"l={line} n={name}$")

    reqinit = "route[REQINIT] {"
    want = [
        trace("DEFAULT_ROUTE", _line_of(text, "request_route {", "route(REQINIT);"), "route"),
        trace("REQINIT", _line_of(text, reqinit, "set_reply_no_connect();"),
              "set_reply_no_connect"),
        trace("REQINIT", _line_of(text, reqinit, "force_rport();"), "force_rport"),
        trace("REQINIT", _line_of(text, reqinit, 'if (!mf_process_maxfwd_header("10")) {'),
              "mf_process_maxfwd_header"),
        trace("REQINIT", _line_of(text, reqinit, 'sl_send_reply("200","Keepalive");'),
              "sl_send_reply"),
        trace("REQINIT", _line_of(text, reqinit, 'sl_send_reply("200","Keepalive");') + 1,
              "exit"),
    ]
    deadline = time.monotonic() + 10
    while True:
        lines = [ln for ln in ser.logtext().splitlines() if "cfgtrace:" in ln]
        if (lines and lines[-1].endswith(" n=exit")) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # in the order they ran, every one of them (ifs and their conditions between)
    i = 0
    for ln in lines:
        if i < len(want) and re.search(want[i], ln):
            i += 1
    assert i == len(want), f"missing {want[i] if i < len(want) else ''}\n" + "\n".join(lines)
    assert lines[-1].endswith(" n=exit"), lines[-1]

    # dbg.trace off in every process: the next request leaves no line
    assert ser.rpc("dbg.trace", "off") == "200 ok"
    assert all(p["set"] == 0 for p in ser.rpc("dbg.ls"))
    udp_exchange(options("z9hG4bKtest2"), port)
    assert len([ln for ln in ser.logtext().splitlines() if "cfgtrace:" in ln]) == len(lines)
    # on for one process only (the UDP receiver), as dbg.ls shows
    procs = ser.rpc("dbg.ls")
    pid = next(p["PID"] for p in ser.rpc("core.ps") if str(p["DSC"]).startswith("receiver"))
    ser.rpc("dbg.trace", "on", pid)
    assert [p["pid"] for p in ser.rpc("dbg.ls") if p["set"]] == [pid], procs
    udp_exchange(options("z9hG4bKtest3"), port)
    deadline = time.monotonic() + 10
    while len([ln for ln in ser.logtext().splitlines() if "cfgtrace:" in ln]) == len(lines):
        assert time.monotonic() < deadline, ser.logtext()[-3000:]
        time.sleep(0.2)
