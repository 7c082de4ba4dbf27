"""Stateless forwarding (core forward()) and replies relayed by Via; the shipped config."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, need, sip_options, udp_exchange

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]

FWD_CFG = """\
#!KAMAILIO
debug=2
children=2
tcp_children=1
listen=udp:127.0.0.1:{{port}}
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "xlog.so"
request_route {{{{
    if (is_method("OPTIONS") && uri==myself) {{{{
        sl_send_reply("200", "OK");
        exit;
    }}}}
    xlog("L_INFO", "forwarding $rm $ru from $si:$sp\\n");
    forward("127.0.0.1", "{uas}");
}}}}
"""


def test_forward_adds_via_and_relays_the_reply(ser_factory):
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    uas.settimeout(5)
    uas_port = uas.getsockname()[1]
    ser = ser_factory(FWD_CFG.format(uas=uas_port))
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind(("127.0.0.1", 0))
    uac.settimeout(5)
    uac_port = uac.getsockname()[1]
    req = (f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{uac_port};branch=z9hG4bKfwd1;rport\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\n"
           f"To: <sip:bob@example.com>\r\nCall-ID: fwd1\r\nCSeq: 1 MESSAGE\r\n"
           f"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello").encode()
    uac.sendto(req, ("127.0.0.1", ser.port))
    got, addr = uas.recvfrom(65535)
    text = got.decode()
    vias = re.findall(r"^Via: (.*)\r$", text, re.M)
    assert len(vias) == 2
    assert re.fullmatch(rf"SIP/2.0/UDP 127.0.0.1:{ser.port};branch=z9hG4bKsl[0-9a-f]+", vias[0])
    assert vias[1] == (f"SIP/2.0/UDP 127.0.0.1:{uac_port};branch=z9hG4bKfwd1;"
                       f"rport={uac_port};received=127.0.0.1")
    assert text.startswith("MESSAGE sip:bob@example.com SIP/2.0\r\n")
    assert text.endswith("\r\n\r\nhello") and "Content-Length: 5\r\n" in text
    # the UAS answers to the top Via; ser relays it to the UAC with its Via removed
    reply = ("SIP/2.0 202 Accepted\r\n" + "".join(f"Via: {v}\r\n" for v in vias)
             + "From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\n"
             "Call-ID: fwd1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    uas.sendto(reply.encode(), addr)
    relayed = uac.recv(65535).decode()
    assert relayed.startswith("SIP/2.0 202 Accepted\r\n")
    assert re.findall(r"^Via: (.*)\r$", relayed, re.M) == [vias[1]]
    # a retransmission is forwarded with the same branch (stateless, RFC 3261 16.11)
    uac.sendto(req, ("127.0.0.1", ser.port))
    again = uas.recv(65535).decode()
    assert re.findall(r"^Via: (.*)\r$", again, re.M)[0] == vias[0]
    # the worker counts a forward after sending it: give it that moment
    deadline = time.monotonic() + 5
    while True:
        stats = ser.rpc("stats.get_statistics", "core:fwd_requests", "core:fwd_replies")
        if stats == ["core:fwd_replies = 1", "core:fwd_requests = 2"] or \
                time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stats == ["core:fwd_replies = 1", "core:fwd_requests = 2"]
    assert "forwarding MESSAGE sip:bob@example.com from 127.0.0.1:" in ser.logtext()
    # a reply whose top Via is not ours is dropped
    stray = reply.replace(vias[0], "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKstray")
    uas.sendto(stray.encode(), ("127.0.0.1", ser.port))
    uac.settimeout(0.5)
    with pytest.raises(TimeoutError):
        uac.recv(65535)
    uac.close()
    uas.close()


def test_sipp_call_through_stateless_forward(ser_factory, tmp_path):
    sipp = need("sipp")
    uas_port = free_port()
    uas = subprocess.Popen([sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                            "-nostdin", "-timeout", "60s", "-bg"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = uas.communicate(timeout=20)[0]
    pid = int(re.search(r"PID=\[(\d+)\]", out).group(1))
    try:
        ser = ser_factory(FWD_CFG.format(uas=uas_port))
        res = subprocess.run([sipp, "-sn", "uac", "-m", "20", "-r", "10", "-i", "127.0.0.1",
                              "-nostdin", "-timeout", "60s", f"127.0.0.1:{ser.port}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=90)
        ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", res.stdout)
        assert ok and int(ok.group(1)) == 20, res.stdout[-1500:]
    finally:
        import os
        import signal
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_shipped_config(ser_factory):
    """cfg/ser.cfg with no switch: keepalive OPTIONS answered, no open relay,
    unknown local users not found (tests/integration/test_default_cfg.py has the rest)."""
    text = (ROOT / "cfg" / "ser.cfg").read_text()
    port = free_port()
    text = text.replace("#!trydef SIP_PORT 5060", f"#!trydef SIP_PORT {port}")
    ser_factory(text.replace("{", "{{").replace("}", "}}"), port=port)
    ping = sip_options(port).replace(b"OPTIONS sip:ping@127.0.0.1", b"OPTIONS sip:127.0.0.1")
    assert udp_exchange(ping, port).startswith(b"SIP/2.0 200 Keepalive")
    foreign = sip_options(port).replace(b"OPTIONS", b"MESSAGE") \
        .replace(b"MESSAGE sip:ping@127.0.0.1", b"MESSAGE sip:a@example.org")
    assert udp_exchange(foreign, port).startswith(b"SIP/2.0 403 Not relaying")
    local = sip_options(port).replace(b"OPTIONS", b"MESSAGE")
    assert udp_exchange(local, port).startswith(b"SIP/2.0 404 Not Found")


def test_statistics_reset(ser_factory):
    ser = ser_factory()
    for i in range(3):
        udp_exchange(sip_options(ser.port, branch=f"z9hG4bKs{i}"), ser.port)
    assert ser.rpc("stats.get_statistics", "sl:2xx_replies") == ["sl:2xx_replies = 3"]
    assert ser.rpc("stats.reset_statistics", "sl:") == [
        "sl:1xx_replies", "sl:2xx_replies", "sl:3xx_replies", "sl:4xx_replies",
        "sl:5xx_replies", "sl:6xx_replies", "sl:failures", "sl:sent_replies"]
    assert ser.rpc("stats.get_statistics", "sl:2xx_replies") == ["sl:2xx_replies = 0"]
    assert "core:rcv_requests = 3" in ser.rpc("stats.get_statistics", "all")
