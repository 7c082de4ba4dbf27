"""The shipped cfg/ser.cfg, as is, with each WITH_* switch on in turn and all on.

The daemon runs on the real file; only what a test run must change comes
from the command line, as an operator would pass it: ``-A SIP_PORT=...``,
``-A DBURL="sqlite://..."`` and, for TLS, ``-A TLS_PORT/TLS_CERT/TLS_KEY``
(every one a ``#!trydef`` of the file). Every run registers two users with
sipp and makes a call between them (bench/scenarios/register_user.xml,
call_user.xml, uas.xml), then checks what the switch itself changes on the
wire, in the database or in the log.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import SER, SERCTL, free_port, need, wait_udp_bound
from tests.integration.natua import NatUA, reply_to

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "cfg" / "ser.cfg"
SCEN = ROOT / "bench" / "scenarios"
SWITCHES = ("AUTH", "IPAUTH", "USRLOCDB", "ANTIFLOOD", "TLS", "TOPOH", "ACL", "NAT", "DEBUG")
INTL = "0049301234"
PASSWORDS = {"alice": "alicepw", "bob": "bobpw", INTL: "intlpw", "carol": "carolpw",
             "dave": "davepw"}


def _args(on: set[str]) -> list[str]:
    out = []
    for s in sorted(on):
        out += ["-A", f"WITH_{s}"]
    return out


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> list[str]:
    """-A TLS_CERT/TLS_KEY of a pair made by serctl, as the operator makes it."""
    d = tmp_path_factory.mktemp("tls")
    r = subprocess.run([SERCTL, "tls", "gencert", "--key", str(d / "ser.key"),
                        "--cert", str(d / "ser.pem"), "--cn", "127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return ["-A", f'TLS_CERT="{d / "ser.pem"}"', "-A", f'TLS_KEY="{d / "ser.key"}"']


@pytest.mark.parametrize("on", [(), *[(s,) for s in SWITCHES], ("NAT", "NATSIPPING"),
                                (*SWITCHES, "NATSIPPING")],
                         ids=["none", *SWITCHES, "NATSIPPING", "all"])
def test_cfg_checks(on, tls_pair):
    r = subprocess.run([SER, "-c", "-f", str(CFG), *_args(set(on)), *tls_pair],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config file ok" in r.stdout


def test_cfg_check_with_tls_loads_the_certificate(tmp_path):
    """`ser -c` loads TLS_CERT as the start would: the file's default path,
    absent here, is reported at the modparam that names it."""
    r = subprocess.run([SER, "-c", "-f", str(CFG), "-A", "WITH_TLS", "-A",
                        f'TLS_CERT="{tmp_path / "none.pem"}"'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr     # a warning: not installed yet
    line = next(i for i, ln in enumerate(CFG.read_text().splitlines(), 1)
                if 'modparam("tls", "certificate"' in ln)
    assert re.search(rf"^WARNING: {re.escape(str(CFG))}:{line}:\d+: tls profile server:default "
                     rf"\(modparam\): cannot load certificate {re.escape(str(tmp_path))}/none\.pem: "
                     r"no such file \(ser will not start until it exists\)$", r.stderr, re.M), \
        r.stderr


@dataclass
class Run:
    """One daemon on cfg/ser.cfg and what the test knows about it."""
    ser: object
    tmp: Path
    db: Path
    on: set[str]

    @property
    def port(self) -> int:
        return self.ser.port

    def serctl(self, *args: str, ok: bool = True) -> str:
        r = subprocess.run([SERCTL, "-s", self.ser.sock_path, "--db", f"sqlite://{self.db}",
                            *args], capture_output=True, text=True, timeout=30)
        if ok:
            assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def sipp(self, scenario: str, *args: str, port: int = 0,
             timeout: str = "15s") -> tuple[int, str]:
        """sipp -m 1 against the daemon; (exit code, the messages it saw)."""
        trace = self.tmp / f"sipp-{uuid.uuid4().hex[:8]}.msg"
        cmd = [need("sipp"), "-sf", str(SCEN / scenario), *args, "-m", "1", "-i", "127.0.0.1",
               "-nostdin", "-timeout", timeout, "-trace_msg", "-message_file", str(trace),
               f"127.0.0.1:{self.port}"]
        if port:
            cmd[3:3] = ["-p", str(port)]
        r = subprocess.run(cmd, cwd=self.tmp, capture_output=True, text=True, timeout=60)
        return r.returncode, trace.read_text(errors="replace") if trace.exists() else ""

    def register(self, user: str, port: int) -> None:
        rc, msgs = self.sipp("register_user.xml", "-s", user, "-ap", PASSWORDS[user], port=port)
        assert rc == 0, msgs[-3000:] + self.ser.logtext()[-3000:]

    def call(self, callee: str, callee_port: int, caller_port: int, password: str = "alicepw",
             ok: bool = True) -> tuple[int, str, str]:
        """alice calls ``callee`` (a sipp UAS on ``callee_port``); returns
        (caller's exit code, caller's messages, callee's messages)."""
        uas_trace = self.tmp / f"uas-{uuid.uuid4().hex[:8]}.msg"
        uas = subprocess.Popen([need("sipp"), "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.1",
                                "-p", str(callee_port), "-m", "1", "-nostdin", "-trace_msg",
                                "-message_file", str(uas_trace)], cwd=self.tmp,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_udp_bound(callee_port)
            rc, msgs = self.sipp("call_user.xml", "-s", callee, "-key", "caller", "alice",
                                 "-au", "alice", "-ap", password, port=caller_port)
            if ok:
                # the caller's BYE got its 200: the callee answered it (uas.xml then
                # lingers 4 s for retransmissions, not waited for here)
                assert rc == 0, msgs[-3000:] + self.ser.logtext()[-3000:]
        finally:
            if uas.poll() is None:
                uas.terminate()
                uas.wait(10)
        return rc, msgs, uas_trace.read_text(errors="replace") if uas_trace.exists() else ""



def _start(ser_factory, tmp: Path, on: set[str], db: Path, port: int | None = None):
    args = ["-n", "2", "-A", f'DBURL="sqlite://{db}"']
    if "NAT" in on:
        args += ["-A", "NATPING_INTERVAL=1"]      # keep-alives every second, to see them
    if "TLS" in on:
        args += ["-A", f"TLS_PORT={free_port()}", "-A", f'TLS_CERT="{db.parent / "ser.pem"}"',
                 "-A", f'TLS_KEY="{db.parent / "ser.key"}"']
    sp = ser_factory("", args=[*args, *_args(on)], port=port, start=False)
    sp.cfg = CFG
    sp.args = ["-A", f"SIP_PORT={sp.port}", *sp.args]
    sp.start()
    return sp


def _request(method: str, port: int, user: str = "alice", extra: str = "") -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    return (f"{method} sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{user}@127.0.0.1:{port}>;tag={branch[-6:]}\r\n"
            f"To: <sip:{user}@127.0.0.1:{port}>\r\n"
            f"Call-ID: {branch}@test\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:{user}@127.0.0.1:5999>\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def _udp(data: bytes, port: int, src: str = "127.0.0.1", timeout: float = 2.0) -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535).decode(errors="replace")
        except TimeoutError:
            return None
    finally:
        s.close()


def _invite_seen_by_callee(uas_msgs: str) -> str:
    m = re.search(r"^INVITE sip:.*?(?=\n\n|\r\n\r\n)", uas_msgs, re.M | re.S)
    assert m, uas_msgs[-3000:]
    return m.group(0)


@pytest.mark.parametrize("switch", ["none", *SWITCHES, "all"])
def test_switch(switch, ser_factory, tmp_path):
    need("sipp")
    on = set(SWITCHES) if switch == "all" else set() if switch == "none" else {switch}
    if switch == "all":
        on.add("NATSIPPING")                # OPTIONS keep-alives instead of CRLF
    db = tmp_path / "ser.db"
    if "TLS" in on:
        r = subprocess.run([SERCTL, "tls", "gencert", "--key", str(tmp_path / "ser.key"),
                            "--cert", str(tmp_path / "ser.pem"), "--cn", "127.0.0.1"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    sp = _start(ser_factory, tmp_path, on, db)
    if "IPAUTH" in on:
        on.add("AUTH")                      # WITH_IPAUTH turns WITH_AUTH on
    run = Run(sp, tmp_path, db, on)
    uses_db = bool(on & {"AUTH", "USRLOCDB", "ACL"})
    created = [ln for ln in sp.logtext().splitlines() if "db: created" in ln]
    if uses_db:
        # the first start makes the SQLite file with Kamailio's schema, and says so once
        assert len(created) == 1 and f"sqlite://{db}" in created[0], sp.logtext()[-3000:]
        for user, pw in PASSWORDS.items():
            assert f"added {user}@127.0.0.1" in run.serctl("add", f"{user}@127.0.0.1", pw)
    else:
        assert not created and not db.exists()

    if "AUTH" in on:
        # without credentials: 401 with a challenge, nothing registered
        reply = _udp(_request("REGISTER", run.port), run.port)
        assert reply and reply.startswith("SIP/2.0 401 "), reply
        assert 'WWW-Authenticate: Digest realm="127.0.0.1"' in reply, reply
    else:
        reply = _udp(_request("REGISTER", run.port, user="carol"), run.port)
        assert reply and reply.startswith("SIP/2.0 200 "), reply

    alice_port, bob_port = free_port(), free_port()
    run.register("bob", bob_port)
    run.register("alice", alice_port)
    dump = str(sp.rpc("ul.dump"))
    assert f"sip:bob@127.0.0.1:{bob_port}" in dump and f"sip:alice@127.0.0.1:{alice_port}" in dump
    rc, caller, callee = run.call("bob", bob_port, alice_port)
    invite = _invite_seen_by_callee(callee)
    assert "SIP/2.0 200 OK" in caller and "BYE" in callee

    if "AUTH" in on:
        assert "SIP/2.0 407 " in caller and "Proxy-Authorization: Digest" in caller
        # the credentials stay with the proxy
        assert "Authorization" not in invite
    else:
        assert "SIP/2.0 407 " not in caller

    # sipp's UAs are not behind NAT (Contact and Via are where they send from)
    assert "'Received': '[not set]'" in dump
    if "NAT" in on:
        # force_rport: the caller's Via as the callee sees it carries where it came from
        assert re.search(rf"^Via: SIP/2\.0/UDP 127\.0\.0\.1:{alice_port};branch=\S+;"
                         rf"rport={alice_port};received=127\.0\.0\.1\s*$", invite, re.M) \
            or "TOPOH" in on, invite
        _nat_call(run)
    else:
        assert "rport=" not in invite and "received=" not in invite, invite

    if "TOPOH" in on:
        # the callee sees the mask address, never the caller's
        assert "10.1.1.10" in invite, invite
        assert str(alice_port) not in invite, invite
    else:
        assert f"127.0.0.1:{alice_port}" in invite

    if "DEBUG" in on:
        log = sp.logtext()
        assert re.search(r"DEBUG: .*TRACE: request INVITE sip:bob@127\.0\.0\.1:\d+ from "
                         rf"127\.0\.0\.1:{alice_port} \(udp\)", log), log[-3000:]
        assert re.search(r"TRACE: reply 200 OK from 127\.0\.0\.1:" + str(bob_port), log), \
            log[-3000:]
        # the debugger's cfgtrace: each action with its line in this file
        lines = CFG.read_text().splitlines()
        start = lines.index("request_route {")
        line = next(i + 1 for i in range(start, len(lines)) if lines[i].strip() == "route(REQINIT);")
        assert re.search(rf" exec: \*\*\* cfgtrace:request_route=\[DEFAULT_ROUTE\] "
                         rf"c=\[{re.escape(str(CFG))}\] l={line} n=route$", log, re.M), log[-3000:]
        assert re.search(r" exec: \*\*\* cfgtrace:onreply_route=\[MANAGE_REPLY\] .* n=xdbg$",
                         log, re.M), log[-3000:]
    else:
        assert "TRACE:" not in sp.logtext() and "cfgtrace" not in sp.logtext()

    if "ACL" in on:
        intl_port = free_port()
        run.register(INTL, intl_port)
        rc, caller, _ = run.call(INTL, intl_port, alice_port, ok=False)
        assert rc != 0 and "SIP/2.0 403 No permission for international calls" in caller, \
            caller[-3000:]
        assert "granted" in run.serctl("acl", "grant", "alice@127.0.0.1", "international")
        rc, caller, callee = run.call(INTL, intl_port, alice_port)
        assert f"INVITE sip:{INTL}@127.0.0.1:{intl_port}" in callee

    if "IPAUTH" in on:
        # a wrong password fails while 127.0.0.1 is not trusted...
        rc, caller, _ = run.call("bob", bob_port, alice_port, password="wrong", ok=False)
        assert rc != 0, caller[-3000:]
        run.serctl("address", "add", "1", "127.0.0.1/32", "0", "test")
        _address_reload(run)
        # ...and is never asked for once it is
        rc, caller, callee = run.call("bob", bob_port, alice_port, password="wrong")
        assert "SIP/2.0 407 " not in caller

    if "TLS" in on:
        reply = _tls_register(sp, tmp_path)
        want = "SIP/2.0 401 " if "AUTH" in on else "SIP/2.0 200 "
        assert reply.startswith(want), reply

    if "USRLOCDB" in on:
        rows = sqlite3.connect(db).execute(
            "SELECT username, contact FROM location ORDER BY username").fetchall()
        assert ("bob", f"sip:bob@127.0.0.1:{bob_port}") in rows, rows
        port = sp.port
        assert sp.stop() == 0
        sp = _start(ser_factory, tmp_path / "again", on, db, port=port)
        run.ser = sp
        assert "db: created" not in sp.logtext()
        assert f"sip:bob@127.0.0.1:{bob_port}" in str(sp.rpc("ul.dump"))
        run.call("bob", bob_port, alice_port)      # no new REGISTER: bob is found after the restart

    if "ANTIFLOOD" in on:
        _flood(run)
        if "AUTH" in on:
            _brute_force(run)


def _nat_call(run: Run) -> None:
    """UAs behind NAT (each sends from 127.0.0.x but writes 10.0.0.x in Via
    and Contact): carol registers and is kept open with keep-alives; dave
    calls her; every request for her reaches the address she sends from."""
    carol = NatUA("carol", PASSWORDS["carol"], "127.0.0.7", run.port)
    dave = NatUA("dave", PASSWORDS["dave"], "127.0.0.8", run.port)
    dave.private = "10.0.0.98:5060"
    topoh = "TOPOH" in run.on
    try:
        ok = carol.register()
        assert ok.startswith("SIP/2.0 200"), ok + run.ser.logtext()[-3000:]
        # fix_nated_register: the registrar keeps where the REGISTER came from
        recv = f"sip:{carol.addr[0]}:{carol.addr[1]}"
        assert f'received="{recv}"' in ok, ok
        dump = str(run.ser.rpc("ul.dump"))
        assert recv in dump and "sip:carol@10.0.0.99:5060" in dump, dump
        # the contact behind NAT gets keep-alives at its real address: CRLF,
        # or with WITH_NATSIPPING an OPTIONS request to its Contact
        if "NATSIPPING" in run.on:
            ping = carol.wait_for(lambda d: d.startswith("OPTIONS "), timeout=10)
            assert ping.startswith("OPTIONS sip:carol@10.0.0.99:5060 SIP/2.0\r\n"), ping
            assert "From: <sip:pinger@localhost>;tag=" in ping, ping
        else:
            carol.wait_for(lambda d: d == "\r\n\r\n", timeout=10)

        sdp = ("v=0\r\no=dave 1 1 IN IP4 10.0.0.98\r\ns=-\r\nc=IN IP4 10.0.0.98\r\n"
               "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
        ruri = "sip:carol@127.0.0.1"
        dave.invite(ruri, "natcall", body=sdp)
        inv = carol.wait_for(lambda d: d.startswith("INVITE "), timeout=10)
        # the R-URI is carol's registered Contact, sent to where she registered from
        assert inv.startswith("INVITE sip:carol@10.0.0.99:5060 SIP/2.0\r\n"), inv
        # ser relays no media: the SDP is as dave wrote it
        assert inv.endswith(sdp), inv
        if not topoh:
            # dave's Contact carries his real address (set_contact_alias)
            d_alias = f"alias={dave.addr[0]}~{dave.addr[1]}~1"
            assert re.search(rf"^Contact: <sip:dave@10\.0\.0\.98:5060;{d_alias}>\r$", inv,
                             re.M), inv
        # carol answers from behind her NAT: her Contact gets her real address
        carol.sock.sendto(reply_to(inv, "200 OK", f"sip:carol@{carol.private}", "caroltag")
                          .encode(), ("127.0.0.1", run.port))
        ok = dave.wait_for(lambda d: d.startswith("SIP/2.0 200") and "INVITE" in d)
        target = re.search(r"^Contact: <([^>]*)>\r$", ok, re.M).group(1)
        if not topoh:
            assert target == (f"sip:carol@10.0.0.99:5060;"
                              f"alias={carol.addr[0]}~{carol.addr[1]}~1"), ok
        # in-dialog: dave's ACK and BYE reach carol's real address
        for method in ("ACK", "BYE"):
            dave.in_dialog(method, ok, ruri, "natcall", "caroltag")
            got = carol.wait_for(lambda d, m=method: d.startswith(f"{m} "), timeout=10)
            assert got.startswith(f"{method} sip:carol@10.0.0.99:5060 SIP/2.0\r\n"), got
        carol.sock.sendto(reply_to(got, "200 OK", f"sip:carol@{carol.private}", "caroltag")
                          .replace(";tag=caroltag;tag=caroltag", ";tag=caroltag").encode(),
                          ("127.0.0.1", run.port))
        dave.wait_for(lambda d: d.startswith("SIP/2.0 200") and "BYE" in d)
    finally:
        carol.close()
        dave.close()


def _address_reload(run: Run) -> None:
    deadline = time.monotonic() + 10
    while True:
        out = run.serctl("address", "reload", ok=False)
        if "error" not in out.lower():
            return
        assert time.monotonic() < deadline, out
        time.sleep(0.5)


def _tls_register(sp, tmp: Path) -> str:
    tls_port = int(next(a.split("=", 1)[1] for a in sp.args if a.startswith("TLS_PORT=")))
    ctx = ssl.create_default_context(cafile=str(tmp / "ser.pem"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            msg = _request("REGISTER", tls_port, user="tina").decode()
            msg = msg.replace("SIP/2.0/UDP 127.0.0.1:5999", "SIP/2.0/TLS 127.0.0.1:5999")
            s.sendall(msg.encode())
            data = b""
            deadline = time.monotonic() + 5
            while b"\r\n\r\n" not in data and time.monotonic() < deadline:
                chunk = s.recv(65535)
                if not chunk:
                    break
                data += chunk
    return data.decode(errors="replace")


def _flood(run: Run) -> None:
    """A source sending far more than 16 requests in 2 s is cut off; this
    server's own address is never."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.2", 0))
        s.settimeout(0.02)
        answered = 0
        for _ in range(60):
            s.sendto(_options(run.port), ("127.0.0.1", run.port))
            try:
                while s.recv(65535):
                    answered += 1
            except TimeoutError:
                pass
        s.settimeout(0.3)
        for _ in range(20):            # drain late answers
            try:
                s.recv(65535)
            except TimeoutError:
                break
    finally:
        s.close()
    assert 0 < answered < 40, answered
    log = run.ser.logtext()
    assert "ALERT: pike blocking OPTIONS" in log and "IP:127.0.0.2" in log, log[-3000:]
    assert _udp(_options(run.port), run.port, src="127.0.0.2", timeout=1.0) is None
    reply = _udp(_options(run.port), run.port)
    assert reply and reply.startswith("SIP/2.0 200 Keepalive"), reply


def _options(port: int) -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    return (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:5999;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.2>;tag=f\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _brute_force(run: Run) -> None:
    """Three wrong passwords for bob, then "403 Try later" even with the right one."""
    codes = []
    for pw in ("x1", "x2", "x3", PASSWORDS["bob"]):
        rc, msgs = run.sipp("register_user.xml", "-s", "bob", "-ap", pw, port=free_port(),
                            timeout="5s")
        assert rc != 0
        # (a retransmission of the last REGISTER may be answered twice)
        codes.append(sorted(set(re.findall(r"^SIP/2\.0 (\d{3} [^\r\n]*)", msgs, re.M))))
    assert codes[:3] == [["401 Unauthorized"]] * 3, codes
    assert codes[3] == ["401 Unauthorized", "403 Try later"], codes
    assert "auth of bob failed 3rd time" in run.ser.logtext()
