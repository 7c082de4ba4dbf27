"""The stateful proxy on the wire: tm transactions, rr, forking, CANCEL, timers.

Callers and callees are raw UDP sockets on 127.0.0.x (for exact assertions on
what each peer receives) or sipp (for whole calls and load).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, need

pytestmark = pytest.mark.integration
SCEN = Path(__file__).parents[2] / "bench" / "scenarios"

CFG = """\
#!KAMAILIO
debug=2
children=CHILDREN
tcp_children=1
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
modparam("rr", "append_fromtag", 1)
modparam("tm", "retr_timer1", 200)
modparam("tm", "fr_timer", FR)
modparam("tm", "fr_inv_timer", FR)
modparam("tm", "wt_timer", 1000)
request_route {{
    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    if ($tt != $null) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    t_check_trans();
    if (is_method("INVITE")) record_route();
    if ($rU == "fork") {{
        append_branch("sip:fork@127.0.0.3:UAS2");
    }}
    $du = "sip:127.0.0.2:UAS1";
    t_on_failure("next");
    t_relay();
}}
failure_route[next] {{
    if (t_is_canceled()) exit;
    if (t_check_status("486")) {{
        $du = "sip:127.0.0.3:UAS2";
        t_relay();
    }}
}}
"""


def _cfg(uas1: int, uas2: int, fr: int = 3000, children: int = 2) -> str:
    return (CFG.replace("UAS1", str(uas1)).replace("UAS2", str(uas2))
            .replace("FR", str(fr)).replace("CHILDREN", str(children)))


def _sock(host: str, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(3)
    return s


class Peer:
    """A raw UDP SIP peer that remembers what it received."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.s = _sock(host, port)
        self.host = host
        self.port = self.s.getsockname()[1]

    def recv(self, timeout: float = 3.0) -> tuple[str, tuple[str, int]]:
        self.s.settimeout(timeout)
        data, addr = self.s.recvfrom(65535)
        return data.decode(), addr

    def expect(self, start: str, timeout: float = 3.0) -> tuple[str, tuple[str, int]]:
        """The next message whose first line starts with ``start`` (others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.host}:{self.port} did not get {start!r}")
            try:
                text, addr = self.recv(left)
            except TimeoutError:
                raise AssertionError(f"{self.host}:{self.port} did not get {start!r}") from None
            if text.startswith(start):
                return text, addr

    def drain(self, wait: float = 0.3) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.recv(wait)[0])
            except TimeoutError:
                return out

    def send(self, text: str, addr: tuple[str, int]) -> None:
        self.s.sendto(text.encode(), addr)

    def close(self) -> None:
        self.s.close()


def invite(uac: Peer, ser_port: int, user: str = "bob", callid: str = "c1",
           branch: str = "z9hG4bKuac1") -> str:
    return (f"INVITE sip:{user}@127.0.0.1:{ser_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{uac.port};branch={branch}\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=ft1\r\nTo: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {callid}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:alice@127.0.0.1:{uac.port}>\r\nContent-Length: 0\r\n\r\n")


def reply_to(req: str, code: int, reason: str, tag: str = "tt1") -> str:
    """A reply of a UAS: Vias, From, Call-ID, CSeq, Record-Route copied."""
    lines = req.split("\r\n")
    keep = [ln for ln in lines if re.match(r"(?i)(via|from|call-id|cseq|record-route):", ln)]
    to = next(ln for ln in lines if ln.lower().startswith("to:"))
    if code > 100 and ";tag=" not in to:
        to += f";tag={tag}"
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(keep) + f"\r\n{to}\r\n"
            f"Contact: <sip:callee@127.0.0.2>\r\nContent-Length: 0\r\n\r\n")


def cancel_of(inv: str) -> str:
    first, rest = inv.split("\r\n", 1)
    uri = first.split(" ")[1]
    lines = [ln for ln in rest.split("\r\n")
             if re.match(r"(?i)(via|from|to|call-id|max-forwards):", ln)]
    return (f"CANCEL {uri} SIP/2.0\r\n" + "\r\n".join(lines) +
            "\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n")


def ack_of(inv: str, reply: str) -> str:
    first, rest = inv.split("\r\n", 1)
    uri = first.split(" ")[1]
    lines = [ln for ln in rest.split("\r\n")
             if re.match(r"(?i)(via|from|call-id|max-forwards):", ln)]
    to = next(ln for ln in reply.split("\r\n") if ln.lower().startswith("to:"))
    return (f"ACK {uri} SIP/2.0\r\n" + "\r\n".join(lines) + f"\r\n{to}\r\n"
            "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")


def arrivals(peer: Peer, start: str, t0: float, seconds: float) -> list[float]:
    """When (seconds after ``t0``) the messages starting with ``start`` came
    to ``peer`` until ``t0 + seconds``."""
    times = []
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        try:
            text, _ = peer.recv(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        if text.startswith(start):
            times.append(time.monotonic() - t0)
    return times


@pytest.fixture
def peers():
    made: list[Peer] = []

    def make(host: str, port: int = 0) -> Peer:
        p = Peer(host, port)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def _setup(ser_factory, peers, fr: int = 3000, children: int = 2):
    uac = peers("127.0.0.1")
    uas1 = peers("127.0.0.2")
    uas2 = peers("127.0.0.3")
    ser = ser_factory(_cfg(uas1.port, uas2.port, fr, children))
    return ser, uac, uas1, uas2


def test_invite_100_relay_and_retransmission_absorbed(ser_factory, peers):
    ser, uac, uas1, _ = _setup(ser_factory, peers)
    inv = invite(uac, ser.port)
    uac.send(inv, ("127.0.0.1", ser.port))
    trying, _ = uac.expect("SIP/2.0 100")
    assert "branch=z9hG4bKuac1" in trying
    fwd, addr = uas1.expect("INVITE ")
    assert addr == ("127.0.0.1", ser.port)
    vias = re.findall(r"^Via: (.*)\r$", fwd, re.M)
    assert re.fullmatch(rf"SIP/2.0/UDP 127.0.0.1:{ser.port};branch=z9hG4bK[0-9a-f]{{16}}\.0",
                        vias[0])
    assert re.search(rf"^Record-Route: <sip:127.0.0.1:{ser.port};lr;ftag=ft1>\r$", fwd, re.M)
    # the caller retransmits: the 100 comes again, the callee sees nothing new
    uac.send(inv, ("127.0.0.1", ser.port))
    uac.expect("SIP/2.0 100")
    uas1.send(reply_to(fwd, 180, "Ringing"), addr)
    ringing, _ = uac.expect("SIP/2.0 180")
    assert len(re.findall(r"^Via:", ringing, re.M)) == 1
    uas1.send(reply_to(fwd, 200, "OK"), addr)
    ok, _ = uac.expect("SIP/2.0 200")
    assert "Record-Route" in ok
    assert [m for m in uas1.drain() if m.startswith("INVITE")] == []
    stats = ser.rpc("tm.stats")
    assert stats["created"] == 1 and stats["2xx"] == 1


def test_sipp_call_through_the_proxy(ser_factory, tmp_path):
    need("sipp")
    uas_port = free_port("127.0.0.2")
    ser = ser_factory(_cfg(uas_port, uas_port))
    uas = subprocess.Popen(["sipp", "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.2", "-p",
                            str(uas_port), "-nostdin"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["sipp", "-sf", str(SCEN / "uac_call.xml"), "-i", "127.0.0.1",
                              "-m", "5", "-r", "10", "-nostdin", "-s", "bob", "-timeout", "30s", "-trace_err",
                              f"127.0.0.1:{ser.port}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        text = out.stdout + out.stderr
        assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+5\b", text), text[-3000:]
    finally:
        uas.terminate()
        uas.wait(10)
    stats = ser.rpc("tm.stats")
    # INVITE and BYE of each call are transactions; ACKs (to 2xx) are not
    assert stats["created"] == 10
    assert stats["2xx"] == 10


def test_cancel_before_answer(ser_factory, peers):
    ser, uac, uas1, _ = _setup(ser_factory, peers)
    inv = invite(uac, ser.port, callid="cancel1")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd, addr = uas1.expect("INVITE ")
    uas1.send(reply_to(fwd, 180, "Ringing"), addr)
    uac.expect("SIP/2.0 180")
    uac.send(cancel_of(inv), ("127.0.0.1", ser.port))
    ok, _ = uac.expect("SIP/2.0 200")
    assert "CSeq: 1 CANCEL" in ok
    cancel, _ = uas1.expect("CANCEL ")
    # the CANCEL has the branch of the INVITE it cancels (RFC 3261 9.1)
    assert re.findall(r"^Via: (.*)\r$", cancel, re.M)[0] == \
        re.findall(r"^Via: (.*)\r$", fwd, re.M)[0]
    uas1.send(reply_to(cancel, 200, "OK"), addr)
    uas1.send(reply_to(fwd, 487, "Request Terminated"), addr)
    terminated, _ = uac.expect("SIP/2.0 487")
    assert "CSeq: 1 INVITE" in terminated
    ack, _ = uas1.expect("ACK ")            # ser's own hop-by-hop ACK for the 487
    assert "CSeq: 1 ACK" in ack
    uac.send(ack_of(inv, terminated), ("127.0.0.1", ser.port))
    assert not [m for m in uas1.drain() if m.startswith("ACK")]    # absorbed
    stats = ser.rpc("tm.stats")
    assert stats["4xx"] == 1


def test_486_failure_route_forks_to_second_callee(ser_factory, peers):
    ser, uac, uas1, uas2 = _setup(ser_factory, peers)
    inv = invite(uac, ser.port, callid="busy1")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd1, addr = uas1.expect("INVITE ")
    uas1.send(reply_to(fwd1, 486, "Busy Here"), addr)
    ack, _ = uas1.expect("ACK ")
    assert ".0\r\n" in ack.split("\r\n", 2)[1] + "\r\n"      # branch 0's Via
    fwd2, addr2 = uas2.expect("INVITE ")
    assert re.search(r"branch=z9hG4bK[0-9a-f]{16}\.1", fwd2)
    uas2.send(reply_to(fwd2, 200, "OK", tag="tt2"), addr2)
    ok, _ = uac.expect("SIP/2.0 200")
    assert "tag=tt2" in ok
    assert not [m for m in uac.drain() if m.startswith("SIP/2.0 486")]


def test_no_answer_gets_408_and_the_invite_is_retransmitted(ser_factory, peers):
    ser, uac, uas1, _ = _setup(ser_factory, peers, fr=1500)
    inv = invite(uac, ser.port, callid="noanswer1")
    t0 = time.monotonic()
    uac.send(inv, ("127.0.0.1", ser.port))
    times = arrivals(uas1, "INVITE", t0, 3)
    # T1 = 200 ms: sent at 0, then about 0.2, 0.6, 1.4 (intervals 0.2, 0.4, 0.8)
    assert len(times) >= 4, times
    gaps = [b - a for a, b in zip(times, times[1:])]
    for want, got in zip((0.2, 0.4, 0.8), gaps):
        assert want - 0.06 <= got <= want + 0.2, (times, gaps)
    timeout, _ = uac.expect("SIP/2.0 408", timeout=3)
    assert "CSeq: 1 INVITE" in timeout
    assert 1.4 <= time.monotonic() - t0 <= 3.5
    stats = ser.rpc("tm.stats")
    assert stats["total_local"] == 1 and stats["4xx"] == 1


def test_final_reply_retransmitted_past_wt_timer_until_the_ack(ser_factory, peers):
    """A non-2xx final reply is re-sent (timer G: T1 doubling) until the ACK
    comes, even when that is later than wt_timer (1 s here); after the ACK
    the transaction lingers wt_timer and is freed."""
    ser, uac, uas1, _ = _setup(ser_factory, peers)
    inv = invite(uac, ser.port, callid="decline1")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd, addr = uas1.expect("INVITE ")
    uas1.send(reply_to(fwd, 603, "Decline"), addr)
    uas1.expect("ACK ")
    times = arrivals(uac, "SIP/2.0 603", time.monotonic(), 4.5)
    # T1 = 200 ms: sent at 0, re-sent about 0.2, 0.6, 1.4 and 3.0 s later
    assert len(times) >= 5, times
    assert times[4] >= 2.6, times
    uac.send(ack_of(inv, "To: <sip:bob@127.0.0.1>;tag=tt1\r\n"), ("127.0.0.1", ser.port))
    deadline = time.monotonic() + 3.0
    while ser.rpc("tm.stats")["current"] != 0:
        assert time.monotonic() < deadline, ser.rpc("tm.stats")
        time.sleep(0.1)
    late = [m for m in uac.drain(0.5) if m.startswith("SIP/2.0 603")]
    assert late == []
    assert ser.rpc("tm.stats")["freed"] == 1


def test_parallel_branches_first_200_wins(ser_factory, peers):
    ser, uac, uas1, uas2 = _setup(ser_factory, peers)
    inv = invite(uac, ser.port, user="fork", callid="fork1")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd1, addr = uas1.expect("INVITE ")
    fwd2, addr2 = uas2.expect("INVITE ")
    uas1.send(reply_to(fwd1, 180, "Ringing"), addr)
    uas2.send(reply_to(fwd2, 180, "Ringing", tag="tt2"), addr2)
    uas1.send(reply_to(fwd1, 200, "OK"), addr)
    ok, _ = uac.expect("SIP/2.0 200")
    assert "tag=tt1" in ok
    cancel, _ = uas2.expect("CANCEL ")
    assert "CSeq: 1 CANCEL" in cancel
    uas2.send(reply_to(cancel, 200, "OK"), addr2)
    uas2.send(reply_to(fwd2, 487, "Request Terminated", tag="tt2"), addr2)
    uas2.expect("ACK ")
    assert not [m for m in uac.drain() if m.startswith("SIP/2.0 487")]
    assert not [m for m in uas1.drain() if m.startswith("CANCEL")]


def _sipp_calls(ser, tmp_path: Path, calls: int, rate: int, workers_kill: bool = False) -> str:
    uas_port = int(ser.cfg.read_text().split("127.0.0.2:")[1].split('"')[0])
    uas = subprocess.Popen(["sipp", "-sf", str(SCEN / "uas.xml"), "-i", "127.0.0.2", "-p",
                            str(uas_port), "-nostdin"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        uac = subprocess.Popen(["sipp", "-sf", str(SCEN / "uac_call.xml"), "-i", "127.0.0.1",
                                "-m", str(calls), "-r", str(rate), "-nostdin", "-s", "bob",
                                "-timeout", "40s", "-recv_timeout", "8000",
                                f"127.0.0.1:{ser.port}"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if workers_kill:
            time.sleep(1.0)
            udp = [int(r["PID"]) for r in ser.rpc("core.ps") if "(udp)" in str(r["DSC"])]
            assert udp
            os.kill(udp[0], signal.SIGKILL)
        out, _ = uac.communicate(timeout=90)
        return out
    finally:
        uas.terminate()
        uas.wait(10)


def _ok_failed(text: str) -> tuple[int, int]:
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    assert ok and failed, text[-2000:]
    return int(ok.group(1)), int(failed.group(1))


def test_four_workers_every_call_completes(ser_factory, tmp_path):
    need("sipp")
    uas_port = free_port("127.0.0.2")
    ser = ser_factory(_cfg(uas_port, uas_port, children=4))
    out = _sipp_calls(ser, tmp_path, 100, 50)
    assert _ok_failed(out) == (100, 0), out[-3000:]
    stats = ser.rpc("tm.stats")
    assert stats["created"] == 200 and stats["2xx"] == 200


def test_kill_a_worker_during_calls(ser_factory, tmp_path):
    need("sipp")
    uas_port = free_port("127.0.0.2")
    ser = ser_factory(_cfg(uas_port, uas_port, children=4))
    ok, failed = _ok_failed(_sipp_calls(ser, tmp_path, 150, 50, workers_kill=True))
    assert ok >= 130, (ok, failed)
    # the table's locks are not wedged: new calls all complete
    ok, failed = _ok_failed(_sipp_calls(ser, tmp_path, 20, 20))
    assert (ok, failed) == (20, 0)
