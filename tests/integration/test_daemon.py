"""The ser daemon on the wire: real sipsak and sipp, signals, the control socket."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    SER,
    SERCTL,
    free_port,
    need,
    shm_segments,
    sip_options,
    udp_exchange,
)

pytestmark = pytest.mark.integration
SCENARIOS = Path(__file__).parents[2] / "bench" / "scenarios"


def sipp_run(port: int, tmp: Path, calls: int, rate: int, transport: str = "u1",
             timeout: int = 60) -> dict[str, int]:
    """Run the OPTIONS scenario; returns sipp's successful/failed counts."""
    sipp = need("sipp")
    cmd = [sipp, "-sf", str(SCENARIOS / "options.xml"), "-m", str(calls), "-r", str(rate),
           "-i", "127.0.0.1", "-t", transport, "-nostdin", "-timeout", f"{timeout}s",
           "-trace_stat", "-stf", str(tmp / "sipp.csv"), f"127.0.0.1:{port}"]
    out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout + 30)
    text = out.stdout + out.stderr
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    assert ok and failed, text[-2000:]
    return {"ok": int(ok.group(1)), "failed": int(failed.group(1))}


def test_sipsak_options_udp_and_tcp(ser_factory):
    ser = ser_factory()
    sipsak = need("sipsak")
    for transport in ("udp", "tcp"):
        out = subprocess.run([sipsak, "-v", "-s", f"sip:ping@127.0.0.1:{ser.port}",
                              "--transport", transport], capture_output=True, text=True,
                             timeout=20)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SIP/2.0 200 OK" in out.stdout
        assert "Server: ser" in out.stdout


def test_reply_headers_on_the_wire(ser_factory):
    ser = ser_factory()
    raw = udp_exchange(sip_options(ser.port, branch="z9hG4bKwire"), ser.port)
    assert raw is not None
    head = raw.decode()
    assert head.startswith("SIP/2.0 200 OK\r\n")
    assert re.search(r"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKwire;rport=\d+;"
                     r"received=127.0.0.1\r\n", head), head
    assert "To: <sip:ping@127.0.0.1>;tag=" in head
    assert "Content-Length: 0\r\n\r\n" in head
    # not OPTIONS: the script's 404 with its reason
    inv = sip_options(ser.port).replace(b"OPTIONS", b"MESSAGE")
    assert udp_exchange(inv, ser.port).startswith(b"SIP/2.0 404 Not Here\r\n")


def test_sipp_options_10000_at_1000_per_second_udp_and_tcp(ser_factory, tmp_path):
    ser = ser_factory()
    for transport in ("u1", "t1"):
        res = sipp_run(ser.port, tmp_path, 10000, 1000, transport)
        assert res == {"ok": 10000, "failed": 0}, transport
    stats = ser.rpc("stats.get_statistics", "core:rcv_requests", "sl:2xx_replies")
    assert "core:rcv_requests = 20000" in stats
    assert "sl:2xx_replies = 20000" in stats


def test_killed_udp_worker_is_reforked_during_a_run(ser_factory, tmp_path):
    ser = ser_factory()
    before = {p["DSC"]: p["PID"] for p in ser.rpc("core.ps")}
    victim_desc = next(d for d in before if d.startswith("receiver child=0"))
    victim = before[victim_desc]
    sipp = need("sipp")
    proc = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "options.xml"), "-m", "4000", "-r", "400", "-i",
         "127.0.0.1", "-nostdin", "-timeout", "60s", f"127.0.0.1:{ser.port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    ok = int(re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", out).group(1))
    assert ok + failed == 4000
    assert failed < 40, out[-1500:]
    after = {p["DSC"]: p["PID"] for p in ser.rpc("core.ps")}
    assert set(after) == set(before)
    assert after[victim_desc] != victim and Path(f"/proc/{after[victim_desc]}").exists()
    assert f"child {victim} " in ser.logtext() and "SIGKILL" in ser.logtext()


def test_sigterm_reaps_children_and_removes_shm_fifo_socket(ser_factory):
    ser = ser_factory()
    kids = ser.children()
    assert len(kids) == 2 + 2 + 1 + 1
    mine = {f"ser-{ser.pid}-main"}
    assert mine <= shm_segments()
    assert Path(ser.fifo_path).exists() and Path(ser.sock_path).exists()
    assert ser.stop() == 0
    for k in kids:
        assert not Path(f"/proc/{k}").exists()
    assert not (shm_segments() & mine)
    assert not Path(ser.fifo_path).exists() and not Path(ser.sock_path).exists()
    assert not ser.pid_file.exists()


def test_daemon_mode_pid_file_and_rpc_over_socket_and_fifo(ser_factory):
    ser = ser_factory(start=False)
    with open(ser.log_path, "wb") as logf:   # the daemon keeps stderr: log_stderror=yes
        out = subprocess.run(ser.command(foreground=False), stdout=logf, stderr=logf,
                             timeout=30)
    assert out.returncode == 0, ser.logtext()
    pid = int(ser.pid_file.read_text())
    ser.pid = pid
    assert Path(f"/proc/{pid}").exists()
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[1] != str(os.getpid())   # detached
    up = subprocess.run([SERCTL, "-s", ser.sock_path, "rpc", "core.uptime"],
                        capture_output=True, text=True, timeout=10)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["uptime"] >= 0
    up = subprocess.run([SERCTL, "--fifo", ser.fifo_path, "rpc", "core.uptime"],
                        capture_output=True, text=True, timeout=10)
    assert up.returncode == 0, up.stderr
    assert "up_since" in json.loads(up.stdout)
    assert ser.rpc("core.echo", "a", 1, fifo=True) == ["a", 1]
    methods = ser.rpc("system.listMethods")
    assert {"core.ps", "core.psx", "core.shmmem", "stats.get_statistics"} <= set(methods)
    mem = ser.rpc("core.shmmem")
    assert mem["total"] > 0 and mem["free"] > 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_bad_config_fails_before_starting(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('loadmodule "sl.so"\nrequest_route {\n  sl_send_reply("200");\n}\n')
    out = subprocess.run([SER, "-DD", "-E", "-f", str(cfg), "-Y", str(tmp_path)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert f"{cfg}:3:3:" in out.stderr
    assert "nothing started" in out.stderr


def test_port_in_use_is_reported(tmp_path, ser_factory):
    port = free_port()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))
    try:
        ser = ser_factory(port=port, start=False)
        out = subprocess.run(ser.command(), capture_output=True, text=True, timeout=20)
        assert out.returncode == 1
        assert f"cannot bind udp:127.0.0.1:{port}" in out.stderr
    finally:
        blocker.close()


def test_rpc_errors(ser_factory):
    ser = ser_factory()
    out = subprocess.run([SERCTL, "-s", ser.sock_path, "rpc", "no.such_method"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and "Method Not Found" in out.stderr
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    me = str(ser.tmp / "c.sock")
    s.bind(me)
    s.settimeout(5)
    s.sendto(b"{not json", ser.sock_path)
    resp = json.loads(s.recv(65535))
    assert resp["error"]["code"] == -32700
    s.close()


def _tcp_options(port: int, branch: str, timeout: float = 5.0) -> tuple[bytes, float]:
    """One OPTIONS over a fresh TCP connection: the reply and the seconds it took."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(sip_options(port, branch=branch, transport="TCP"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return data, time.monotonic() - t0


def test_slow_tcp_clients_do_not_hold_the_workers(ser_factory):
    ser = ser_factory()
    slow = []
    try:
        for _ in range(200):
            c = socket.create_connection(("127.0.0.1", ser.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
            c.sendall(b"O")
            slow.append(c)
        worst = 0.0
        for round_ in range(3):
            for c in slow:
                try:
                    c.sendall(b"P")
                except OSError:
                    pass
            for i in range(5):
                reply, took = _tcp_options(ser.port, f"z9hG4bKfast{round_}{i}")
                assert reply.startswith(b"SIP/2.0 200 OK"), reply
                worst = max(worst, took)
            time.sleep(1)
        assert worst < 0.1, f"a normal client waited {worst * 1000:.0f} ms"
        raw = udp_exchange(sip_options(ser.port, branch="z9hG4bKudp"), ser.port)
        assert raw.startswith(b"SIP/2.0 200 OK")
    finally:
        for c in slow:
            c.close()


@pytest.mark.parametrize("payload", [
    b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Long: " + b"a" * 65536 + b"\r\n\r\n",
    b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n"
    + b"Via: SIP/2.0/TCP 127.0.0.9:5060;branch=z9hG4bKvv\r\n" * 10000
    + b"Content-Length: 0\r\n\r\n",
], ids=["64k-header-line", "10000-vias"])
def test_oversized_tcp_message_closes_the_connection(ser_factory, payload):
    ser = ser_factory()
    s = socket.create_connection(("127.0.0.1", ser.port), timeout=10)
    closed = False
    try:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            try:
                closed = s.recv(65535) == b""
            except ConnectionResetError:
                closed = True
    finally:
        s.close()
    assert closed
    reply, took = _tcp_options(ser.port, "z9hG4bKafter")
    assert reply.startswith(b"SIP/2.0 200 OK")
    assert ser.rpc("stats.get_statistics", "core:err_requests") == ["core:err_requests = 1"]


def test_malformed_datagrams_get_400_or_nothing(ser_factory):
    ser = ser_factory()
    bad_via_ok = sip_options(ser.port, branch="z9hG4bKbad1").replace(
        b"CSeq: 1 OPTIONS\r\n", b"CSeq: 1 OPTIONS\r\nContent-Length: 5\r\nContent-Length: 7\r\n")
    reply = udp_exchange(bad_via_ok, ser.port)
    assert reply is not None and reply.startswith(b"SIP/2.0 400 Bad Request (more than one")
    assert b"branch=z9hG4bKbad1" in reply
    # nothing usable to answer: dropped
    assert udp_exchange(b"\x00\x01garbage that is not SIP\r\n\r\n", ser.port, 0.5) is None
    no_via = b"OPTIONS sip:x@y SIP/2.0\r\nCSeq: 1 OPTIONS\r\nX: y\r\nbroken line\r\n\r\n"
    assert udp_exchange(no_via, ser.port, 0.5) is None
    # a response is never answered, even a broken one
    assert udp_exchange(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5999\r\nCSeq: x\r\n"
                        b"Content-Length: 9\r\n\r\n", ser.port, 0.5) is None
    # the workers go on
    assert udp_exchange(sip_options(ser.port), ser.port).startswith(b"SIP/2.0 200 OK")
    stats = ser.rpc("stats.get_statistics", "core:err_requests")
    assert stats == ["core:err_requests = 4"]
    assert "malformed message from udp:127.0.0.1" in ser.logtext()


def test_worker_killed_holding_a_shm_lock_does_not_wedge_the_others(ser_factory, tmp_path,
                                                                     monkeypatch):
    pidfile = tmp_path / "holder.pid"
    monkeypatch.setenv("SER_TEST_HOOKS", "1")
    monkeypatch.setenv("SER_TEST_HOOKS_PIDFILE", str(pidfile))
    ser = ser_factory()
    hold = sip_options(ser.port, branch="z9hG4bKhold").replace(b"OPTIONS", b"X-HOLD-LOCK")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(hold, ("127.0.0.1", ser.port))
    s.close()
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    holder = int(pidfile.read_text())
    assert holder in ser.children()
    time.sleep(0.2)
    os.kill(holder, signal.SIGKILL)
    time.sleep(0.5)
    for i in range(6):          # every worker, the re-forked one too, can take the lock
        touch = sip_options(ser.port, branch=f"z9hG4bKt{i}").replace(b"OPTIONS", b"X-SHM-TOUCH")
        reply = udp_exchange(touch, ser.port, timeout=3)
        assert reply is not None and reply.startswith(b"SIP/2.0 200 Touched"), reply
    assert udp_exchange(sip_options(ser.port), ser.port).startswith(b"SIP/2.0 200 OK")
    assert f"child {holder} " in ser.logtext()


def test_privileges_dropped_after_binding(ser_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to change user (the test runs as root in CI)")
    import pwd
    nobody = pwd.getpwnam("nobody")
    ser = ser_factory(args=["-u", "nobody", "-g", str(nobody.pw_gid)], start=False)
    os.chmod(ser.tmp, 0o777)
    os.chmod(tmp_path, 0o755)
    ser.start()
    for pid in ser.children():
        with open(f"/proc/{pid}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        assert uid_line.split()[1:3] == [str(nobody.pw_uid)] * 2
    assert udp_exchange(sip_options(ser.port), ser.port).startswith(b"SIP/2.0 200 OK")
    assert ser.rpc("core.uptime")["uptime"] >= 0
    assert ser.rpc("core.uptime", fifo=True)["uptime"] >= 0
