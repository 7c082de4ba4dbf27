"""TCP end to end: sipp over TCP, outgoing connections, hand-off between
processes, connection reuse, keep-alives and hostile clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import SERCTL, free_port, need
from .test_tls import Peer, register, reply_to, request

ROOT = Path(__file__).resolve().parents[2]
SCEN = ROOT / "bench" / "scenarios"

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
tcp_connection_lifetime=600
tcp_max_connections_per_ip=1024
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "rr.so"
loadmodule "siputils.so"
loadmodule "jsonrpcs.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
DBMODS

request_route {{
    if (is_method("OPTIONS") && $rU == "ping") {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("REGISTER")) {{
AUTH
        save("location");
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
    }}
    if ($rU == "tcpup") {{
        t_relay_to_tcp("127.0.0.1", "UPPORT");
        exit;
    }}
    if ($rU == "tcpto") {{
        t_relay_to("tcp:127.0.0.1:UPPORT");
        exit;
    }}
    if ($rU == "bob") {{
        t_relay_to_udp("127.0.0.2", "UPPORT");
        exit;
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Here");
        exit;
    }}
    t_relay();
}}
"""

AUTH = """\
        if (!www_authorize("example.com", "subscriber")) {{
            www_challenge("example.com", "0");
            exit;
        }}"""


def cfg(up_port: int = 9, auth_db: str = "") -> str:
    text = CFG.replace("UPPORT", str(up_port))
    if auth_db:
        return text.replace("DBMODS", f'loadmodule "db_sqlite.so"\nloadmodule "auth.so"\n'
                            f'loadmodule "auth_db.so"\n'
                            f'modparam("auth_db", "db_url", "sqlite://{auth_db}")\n'
                            f'modparam("auth_db", "calculate_ha1", 1)\n'
                            f'modparam("auth_db", "password_column", "password")') \
            .replace("AUTH", AUTH)
    return text.replace("DBMODS", "").replace("AUTH\n", "")


def test_sipp_tcp_register_with_auth_and_proxied_call(ser_factory, tmp_path):
    need("sipp")
    db = tmp_path / "ser.db"
    for args in (["db", "init", f"sqlite://{db}"],
                 ["--db", f"sqlite://{db}", "add", "alice@example.com", "secret"]):
        r = subprocess.run([SERCTL, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    uas_port = free_port("127.0.0.2")
    ser = ser_factory(cfg(uas_port, str(db)))
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\nalice;[authentication username=alice password=secret]\n")
    r = subprocess.run(["sipp", "-sf", str(SCEN / "register_auth.xml"), "-inf", str(users),
                        "-t", "t1", "-m", "3", "-r", "10", "-i", "127.0.0.1", "-nostdin",
                        "-timeout", "20s", f"127.0.0.1:{ser.port}"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + ser.logtext()
    assert "alice" in str(ser.rpc("ul.dump"))
    # a call over TCP from the caller, relayed to a UDP callee (sipp uas)
    uas = subprocess.Popen(["sipp", "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.2", "-p",
                            str(uas_port), "-nostdin"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["sipp", "-sf", str(SCEN / "uac_call.xml"), "-t", "t1",
                              "-i", "127.0.0.1", "-m", "3", "-r", "5", "-nostdin", "-s", "bob",
                              "-timeout", "30s", f"127.0.0.1:{ser.port}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+3\b", text), \
            text[-3000:] + ser.logtext()[-3000:]
    finally:
        uas.terminate()
        uas.wait(10)


def _tcp_upstream(port: int, answers: int = 1) -> tuple[socket.socket, list[str]]:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(8)
    lsock.settimeout(15)
    got: list[str] = []

    def serve() -> None:
        try:
            raw, _ = lsock.accept()
            peer = Peer(raw)
            while len(got) < answers:
                m = peer.recv_msg(timeout=10)
                got.append(m)
                peer.send(reply_to(m, 200, "OK"))
            time.sleep(0.5)
            peer.close()
        except (OSError, TimeoutError):
            pass
    threading.Thread(target=serve, daemon=True).start()
    return lsock, got


def test_udp_request_relayed_over_new_outgoing_tcp_connection(ser_factory):
    """A UDP worker has no TCP connections: it hands the request to a TCP
    worker, which connects; the reply comes back over TCP and goes out UDP."""
    up = free_port()
    ser = ser_factory(cfg(up))
    lsock, got = _tcp_upstream(up, answers=2)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(5)
    try:
        for i, user in enumerate(("tcpup", "tcpto")):
            caller.sendto(request("OPTIONS", f"sip:{user}@example.com", "UDP",
                                  caller.getsockname(), f"z9hG4bKup{i}"), ("127.0.0.1", ser.port))
            data = caller.recv(65535).decode()
            assert data.startswith("SIP/2.0 200"), data
    finally:
        caller.close()
        lsock.close()
    assert len(got) == 2
    assert re.search(rf"^Via: SIP/2.0/TCP 127\.0\.0\.1:{ser.port};branch=", got[0], re.M)


def test_ua_registered_over_tcp_gets_invite_over_its_connection(ser_factory):
    ser = ser_factory(cfg())
    alice = Peer.tcp(ser.port)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(3)
    try:
        assert register(alice, "TCP", ser.port, "z9hG4bKtr1").startswith("SIP/2.0 200")
        caller.sendto(request("INVITE", "sip:alice@example.com", "UDP", caller.getsockname(),
                              "z9hG4bKtinv"), ("127.0.0.1", ser.port))
        got = alice.expect("INVITE ", timeout=5)
        assert re.search(rf"^Via: SIP/2.0/TCP 127\.0\.0\.1:{ser.port};", got, re.M)
        alice.send(reply_to(got, 180, "Ringing"))
        assert caller.recv(65535).decode().split()[1] in ("100", "180")
    finally:
        alice.close()
        caller.close()


def test_crlf_keepalive_gets_a_pong(ser_factory):
    ser = ser_factory(cfg())
    s = socket.create_connection(("127.0.0.1", ser.port), timeout=3)
    try:
        s.sendall(b"\r\n\r\n")
        assert s.recv(16) == b"\r\n"
        # the connection still carries SIP afterwards
        peer = Peer(s)
        peer.send(request("OPTIONS", "sip:ping@example.com", "TCP", peer.local, "z9hG4bKka"))
        assert peer.expect("SIP/2.0 200").startswith("SIP/2.0 200")
    finally:
        s.close()


def test_slowloris_does_not_hold_other_clients(ser_factory):
    """200 connections dripping one byte a second; another client is served
    within 100 ms throughout."""
    ser = ser_factory(cfg())
    slow = [socket.create_connection(("127.0.0.1", ser.port), timeout=3) for _ in range(200)]
    msg = request("OPTIONS", "sip:ping@example.com", "TCP", ("127.0.0.1", 1), "z9hG4bKslow")
    worst = 0.0
    try:
        for sec in range(4):
            for s in slow:
                s.send(msg[sec:sec + 1])
            t0 = time.monotonic()
            fast = Peer.tcp(ser.port)
            try:
                fast.send(request("OPTIONS", "sip:ping@example.com", "TCP", fast.local,
                                  f"z9hG4bKfast{sec}"))
                assert fast.expect("SIP/2.0 200", timeout=2)
            finally:
                fast.close()
            worst = max(worst, time.monotonic() - t0)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    finally:
        for s in slow:
            s.close()
    assert worst < 0.1, f"a normal client waited {worst * 1000:.0f} ms"


def _ping(p: Peer, branch: str) -> bool:
    """True if ser answers an OPTIONS on this connection (it was accepted)."""
    try:
        p.send(request("OPTIONS", "sip:ping@example.com", "TCP", p.local, branch))
        return p.expect("SIP/2.0 200", timeout=2).startswith("SIP/2.0 200")
    except (OSError, TimeoutError, ConnectionError):
        return False


def _connect_until_refused(port: int, n: int, tag: str) -> tuple[list[Peer], int]:
    """Open up to ``n`` connections one by one; (the accepted ones, refused count)."""
    accepted, refused = [], 0
    for i in range(n):
        p = Peer.tcp(port)
        if _ping(p, f"z9hG4bK{tag}{i}"):
            accepted.append(p)
        else:
            refused += 1
            p.close()
    return accepted, refused


def _wait_opened(ser, want: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = ser.rpc("core.tcp_info")["opened_connections"]
        if n == want or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_tcp_max_connections_is_global_over_the_workers(ser_factory):
    # three workers race for accept(); the limit is one shared count, so the
    # 5th connection is refused whichever worker took the first four
    ser = ser_factory(cfg().replace("tcp_connection_lifetime=600",
                                    "tcp_connection_lifetime=600\ntcp_max_connections=4")
                      .replace("tcp_children=2", "tcp_children=3"))
    conns: list[Peer] = []
    try:
        conns, refused = _connect_until_refused(ser.port, 6, "a")
        assert len(conns) == 4 and refused == 2, ser.logtext()[-2000:]
        info = ser.rpc("core.tcp_info")
        assert info["readers"] == 3 and info["max_connections"] == 4
        assert info["opened_connections"] == 4
        assert "refused: limit reached" in ser.logtext()
        # closing one frees its place: exactly one more is accepted
        conns.pop().close()
        assert _wait_opened(ser, 3) == 3
        more, refused = _connect_until_refused(ser.port, 2, "b")
        conns += more
        assert len(more) == 1 and refused == 1
        # the ones kept still work
        assert all(_ping(p, f"z9hG4bKc{i}") for i, p in enumerate(conns))
    finally:
        for p in conns:
            p.close()


def test_killed_tcp_workers_do_not_leak_their_connection_count(ser_factory):
    # neither the total nor the per-address count (both full at 3)
    ser = ser_factory(cfg().replace("tcp_connection_lifetime=600",
                                    "tcp_connection_lifetime=600\ntcp_max_connections=3")
                      .replace("tcp_max_connections_per_ip=1024", "tcp_max_connections_per_ip=3"))
    conns: list[Peer] = []
    try:
        conns, refused = _connect_until_refused(ser.port, 4, "k")
        assert len(conns) == 3 and refused == 1
        tcp = [p for p in ser.rpc("core.psx") if p["ROLE"] == "tcp"]
        assert len(tcp) == 2
        for p in tcp:
            os.kill(p["PID"], signal.SIGKILL)
        # the connections died with their owners; the master gives their places back
        assert _wait_opened(ser, 0) == 0, ser.logtext()[-2000:]
        deadline = time.monotonic() + 15
        while {p["PID"] for p in ser.rpc("core.psx") if p["ROLE"] == "tcp"} & \
                {p["PID"] for p in tcp} or \
                len([p for p in ser.rpc("core.psx") if p["ROLE"] == "tcp"]) < 2:
            assert time.monotonic() < deadline, "tcp workers not re-forked"
            time.sleep(0.1)
        for p in conns:
            p.close()
        conns, refused = _connect_until_refused(ser.port, 4, "r")
        assert len(conns) == 3 and refused == 1, ser.logtext()[-2000:]
    finally:
        for p in conns:
            p.close()


def _peer_from(port: int, src: str) -> Peer:
    return Peer(socket.create_connection(("127.0.0.1", port), timeout=5,
                                         source_address=(src, 0)))


def test_tcp_max_connections_per_ip_is_global_over_the_workers(ser_factory):
    """Each connection is accepted by a different worker (the others are
    stopped): a per-worker count would take the third; the global one refuses
    it, takes another address's, and gives the place back on a close."""
    ser = ser_factory(cfg().replace("tcp_max_connections_per_ip=1024",
                                    "tcp_max_connections_per_ip=2")
                      .replace("tcp_children=2", "tcp_children=3"))
    workers = [p["PID"] for p in ser.rpc("core.psx") if p["ROLE"] == "tcp"]
    assert len(workers) == 3

    def only(pid: int) -> None:
        """Let only worker ``pid`` run (and so accept)."""
        for w in workers:
            os.kill(w, signal.SIGCONT if w == pid else signal.SIGSTOP)

    conns: list[Peer] = []
    try:
        for i, w in enumerate(workers[:2]):
            only(w)
            p = _peer_from(ser.port, "127.0.0.1")
            conns.append(p)
            assert _ping(p, f"z9hG4bKip{i}"), ser.logtext()[-2000:]
        only(workers[2])
        third = _peer_from(ser.port, "127.0.0.1")
        assert not _ping(third, "z9hG4bKip3")
        third.close()
        assert re.search(r"tcp connection from 127\.0\.0\.1:\d+ refused: limit reached "
                         r"\(tcp_max_connections_per_ip\)", ser.logtext())
        other = _peer_from(ser.port, "127.0.0.2")
        conns.append(other)
        assert _ping(other, "z9hG4bKipother")
        for w in workers:
            os.kill(w, signal.SIGCONT)
        assert ser.rpc("core.tcp_info")["max_connections_per_ip"] == 2
        assert _wait_opened(ser, 3) == 3
        # a close gives its place back: exactly one more from 127.0.0.1
        conns.pop(0).close()
        assert _wait_opened(ser, 2) == 2
        got = [_peer_from(ser.port, "127.0.0.1") for _ in range(3)]
        conns += got
        assert [_ping(p, f"z9hG4bKipagain{i}") for i, p in enumerate(got)].count(True) == 1
        assert _ping(conns[0], "z9hG4bKipkept") and _ping(other, "z9hG4bKipotherkept")
    finally:
        for w in workers:
            os.kill(w, signal.SIGCONT)
        for p in conns:
            p.close()


def test_connect_to_a_dead_destination_fails_cleanly(ser_factory):
    dead = free_port()
    ser = ser_factory(cfg(dead))
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(3)
    try:
        caller.sendto(request("OPTIONS", "sip:tcpup@example.com", "UDP", caller.getsockname(),
                              "z9hG4bKdead"), ("127.0.0.1", ser.port))
        time.sleep(1.0)
    finally:
        caller.close()
    assert re.search(rf"tcp connect to 127\.0\.0\.1:{dead} failed: ECONNREFUSED", ser.logtext())
    # the workers are still serving
    p = Peer.tcp(ser.port)
    try:
        p.send(request("OPTIONS", "sip:ping@example.com", "TCP", p.local, "z9hG4bKafter"))
        assert p.expect("SIP/2.0 200")
    finally:
        p.close()


def _alias_cfg(mode: str) -> str:
    text = cfg()
    if mode == "force":
        text = text.replace('    if (is_method("REGISTER")) {{\n',
                            '    if (is_method("REGISTER")) {{\n'
                            '        if (!force_tcp_alias()) {{\n'
                            '            sl_send_reply("500", "No Alias");\n'
                            '            exit;\n'
                            '        }}\n')
    elif mode == "via":
        text = text.replace("tcp_connection_lifetime=600",
                            "tcp_connection_lifetime=600\ntcp_accept_aliases=yes")
    return text


@pytest.mark.parametrize("mode", ["force", "via", "via_ignored", "none"])
def test_tcp_alias_makes_a_request_to_the_via_port_reuse_the_connection(ser_factory, mode):
    # the UA's Via and Contact name a port it does not listen on over a new
    # connection (the test listens there to see a connect); with the alias
    # (force_tcp_alias(), or ;alias with tcp_accept_aliases) the INVITE to
    # its contact comes over the UA's own connection instead
    ser = ser_factory(_alias_cfg(mode))
    aport = free_port()
    trap = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    trap.bind(("127.0.0.1", aport))
    trap.listen(4)
    trap.settimeout(3)
    ua = Peer.tcp(ser.port)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(5)
    try:
        via_alias = ";alias" if mode.startswith("via") else ""
        contact = f"Contact: <sip:carol@127.0.0.1:{aport};transport=tcp>\r\nExpires: 300\r\n"
        reg = request("REGISTER", "sip:example.com", "TCP", ("127.0.0.1", aport),
                      "z9hG4bKreg" + mode, contact, user="carol")
        ua.send(reg.replace(b";rport\r\n", b";rport" + via_alias.encode() + b"\r\n", 1))
        assert ua.expect("SIP/2.0 ").startswith("SIP/2.0 200"), ser.logtext()[-2000:]
        caller.sendto(request("INVITE", "sip:carol@example.com", "UDP", caller.getsockname(),
                              "z9hG4bKinv" + mode), ("127.0.0.1", ser.port))
        if mode in ("none", "via_ignored"):
            # no alias (;alias needs tcp_accept_aliases): ser connects to the Via port
            conn, _ = trap.accept()
            conn.close()
            return
        inv = ua.expect("INVITE ", timeout=5)
        assert f"sip:carol@127.0.0.1:{aport}" in inv
        ua.send(reply_to(inv, 486, "Busy Here"))
        codes = []
        while not codes or codes[-1] < 200:
            codes.append(int(caller.recv(65536).split(b" ", 2)[1]))
        assert codes[-1] == 486
        assert ua.expect("ACK ").startswith("ACK ")
        trap.settimeout(0.3)
        with pytest.raises(TimeoutError):
            trap.accept()
    finally:
        ua.close()
        caller.close()
        trap.close()
