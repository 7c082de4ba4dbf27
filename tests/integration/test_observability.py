"""The HTTP listener of the control process (/RPC, /metrics) and `serctl monitor`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import free_port, need, udp_exchange

SCEN = Path(__file__).resolve().parents[2] / "bench" / "scenarios"

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{port}

loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "pike.so"
loadmodule "jsonrpcs.so"
modparam("jsonrpcs", "http_port", HTTP_PORT)
modparam("pike", "reqs_density_per_unit", 10000)

request_route {{
    if (!pike_check_req()) {{ exit; }}
    if (is_method("REGISTER")) {{ save("location"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ t_relay(); exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    record_route();
    $du = "sip:127.0.0.2:UAS_PORT";
    t_relay();
}}
"""

REGISTER = (b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKobsreg1;rport\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:carol@127.0.0.1>;tag=r1\r\n"
            b"To: <sip:carol@127.0.0.1>\r\nCall-ID: obsreg1@127.0.0.1\r\n"
            b"CSeq: 1 REGISTER\r\nContact: <sip:carol@127.0.0.1:5999>\r\nExpires: 600\r\n"
            b"Content-Length: 0\r\n\r\n")


@pytest.fixture
def server(ser_factory):
    http_port = free_port()
    uas_port = free_port("127.0.0.2")
    cfg = CFG.replace("HTTP_PORT", str(http_port)).replace("UAS_PORT", str(uas_port))
    ser = ser_factory(cfg)
    ser.http = f"http://127.0.0.1:{http_port}"
    ser.uas_port = uas_port
    deadline = time.monotonic() + 10
    while True:                      # the ctl process binds the HTTP port after the fork
        try:
            urllib.request.urlopen(ser.http + "/metrics", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, ser.logtext()
            time.sleep(0.1)
    return ser


def metrics(ser) -> dict[str, tuple[str, float]]:
    with urllib.request.urlopen(ser.http + "/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        assert fam.documentation, fam.name
        for s in fam.samples:
            out[s.name] = (fam.type, s.value)
    return out


def rpc_http(ser, method: str, *params: object, rid: object = 1) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params),
                       "id": rid}).encode()
    req = urllib.request.Request(ser.http + "/RPC", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def sipp_calls(ser, tmp_path: Path, calls: int, rate: int) -> tuple[subprocess.Popen,
                                                                      subprocess.Popen]:
    uas = subprocess.Popen([need("sipp"), "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.2",
                            "-p", str(ser.uas_port), "-nostdin"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    uac = subprocess.Popen([need("sipp"), "-sf", str(SCEN / "uac_call.xml"), "-i", "127.0.0.1",
                            "-m", str(calls), "-r", str(rate), "-nostdin", "-s", "bob",
                            "-timeout", "30s", f"127.0.0.1:{ser.port}"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return uas, uac


def finish(uas: subprocess.Popen, uac: subprocess.Popen) -> str:
    try:
        out, _ = uac.communicate(timeout=60)
    finally:
        for p in (uac, uas):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
    return out


def test_rpc_over_http_is_the_same_registry(server):
    resp = rpc_http(server, "core.uptime", rid=7)
    assert resp["jsonrpc"] == "2.0" and resp["id"] == 7 and resp["result"]["uptime"] >= 0
    assert rpc_http(server, "no.such")["error"]["code"] == -32601
    assert server.rpc("system.listMethods") == rpc_http(server, "system.listMethods")["result"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.http + "/RPC", timeout=5)        # GET
    assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.http + "/nothing", timeout=5)
    assert e.value.code == 404


def test_metrics_parse_and_move_with_traffic(server, tmp_path):
    need("sipp")
    before = metrics(server)
    assert before["ser_tm_transactions_current"][0] == "gauge"
    assert before["ser_usrloc_contacts"] == ("gauge", 0)
    assert before["ser_pike_blocked_sources"] == ("gauge", 0)
    assert before["ser_core_received_requests_total"][0] == "counter"
    assert before["ser_uptime_seconds"][0] == "gauge"

    reply = udp_exchange(REGISTER, server.port)
    assert reply is not None and reply.startswith(b"SIP/2.0 200")
    out = finish(*sipp_calls(server, tmp_path, 5, 10))
    assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+5\b", out), out[-2000:]

    after = metrics(server)
    assert after["ser_usrloc_contacts"][1] == 1
    # 1 REGISTER + 5 x (INVITE, ACK, BYE)
    assert after["ser_core_received_requests_total"][1] - \
        before["ser_core_received_requests_total"][1] >= 16
    assert after["ser_tm_transactions_total"][1] - before["ser_tm_transactions_total"][1] == 10
    assert after["ser_tm_2xx_transactions_total"][1] >= 10


def test_serctl_monitor_under_a_pty(server, tmp_path):
    need("sipp")
    uas, uac = sipp_calls(server, tmp_path, 100, 25)
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, "-m", "ser.serctl", "-s",
                                      server.sock_path, "monitor", "--count", "4"])
        finally:
            os._exit(127)
    buf = b""
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        finish(uas, uac)
    text = buf.decode(errors="replace")
    assert "\x1b[H\x1b[2J" in text                  # a terminal: the screen is redrawn
    screens = text.split("\x1b[H\x1b[2J")[1:]
    assert len(screens) == 4, text
    rates = [float(m) for m in re.findall(r"requests/s\s+([\d.]+)", text)]
    assert rates and max(rates) > 0, text
    assert re.search(r"uptime\s+\d\d:\d\d:\d\d", text)
    assert re.search(r"transactions\s+\d+", text) and re.search(r"contacts\s+\d+", text)
    assert re.search(r"blocked sources\s+0", text)


STATS_CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:{port}
listen=tls:127.0.0.1:TLS_PORT

loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "db_sqlite.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "pike.so"
loadmodule "htable.so"
loadmodule "tls.so"
modparam("auth_db", "db_url", "DBURL")
modparam("htable", "htable", "a=>size=4;")
modparam("tls", "certificate", "CERT")
modparam("tls", "private_key", "KEY")

request_route {{
    if (!pike_check_req()) {{ exit; }}
    $sht(a=>$si) = 1;
    if (!www_authorize("127.0.0.1", "subscriber")) {{
        www_challenge("127.0.0.1", "0");
        exit;
    }}
    save("location");
}}
"""


def test_get_statistics_covers_every_module_group(ser_factory, tmp_path):
    """stats.get_statistics all: core, sl, tm, usrloc, registrar, auth, pike,
    htable and tls counters, each group present and the traffic counted."""
    db = tmp_path / "ser.db"
    serctl = [sys.executable, "-m", "ser.serctl"]
    subprocess.run([*serctl, "db", "init", f"sqlite://{db}"], check=True, capture_output=True)
    subprocess.run([*serctl, "tls", "gencert", "--key", str(tmp_path / "k.pem"), "--cert",
                    str(tmp_path / "c.pem"), "--cn", "127.0.0.1"], check=True,
                   capture_output=True)
    tls_port = free_port()
    cfg = (STATS_CFG.replace("TLS_PORT", str(tls_port)).replace("DBURL", f"sqlite://{db}")
           .replace("CERT", str(tmp_path / "c.pem")).replace("KEY", str(tmp_path / "k.pem")))
    ser = ser_factory(cfg)
    reply = udp_exchange(REGISTER, ser.port)
    assert reply.startswith(b"SIP/2.0 401"), reply
    deadline = time.monotonic() + 5       # the challenge is counted just after it is sent
    while True:
        stats = dict(line.split(" = ", 1) for line in ser.rpc("stats.get_statistics", "all"))
        if stats.get("auth:challenges") == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    groups = {name.split(":", 1)[0] for name in stats}
    assert {"core", "sl", "tm", "usrloc", "registrar", "auth", "pike", "htable", "tls"} <= groups, \
        sorted(groups)
    assert int(stats["core:rcv_requests"]) >= 1
    assert int(stats["auth:challenges"]) == 1
    assert int(stats["auth:authenticated"]) == 0
    assert int(stats["pike:blocked_requests"]) == 0
    assert "usrloc:location-contacts" in stats and "htable:shm_full" in stats
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as conn:
        conn.sendall(REGISTER.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS"))
        assert conn.recv(4096).startswith(b"SIP/2.0 401")
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
        raw.sendall(b"not a TLS hello\r\n" * 20)
        try:
            assert raw.recv(100) == b""            # closed by ser
        except ConnectionResetError:
            pass
    deadline = time.monotonic() + 5
    while True:
        stats = dict(line.split(" = ", 1) for line in ser.rpc("stats.get_statistics", "tls:"))
        if stats.get("tls:handshake_failures") == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stats == {"tls:handshakes": "1", "tls:handshake_failures": "1"}, stats
