"""The HTTP listener of the control process (/RPC, /metrics) and `serctl monitor`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
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
