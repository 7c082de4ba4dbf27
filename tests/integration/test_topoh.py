"""topoh on the wire: sipp UAC -> ser (the seed's 10-topoh.cfg) -> a raw UAS.

The UAS (a Python UDP peer on 127.0.0.2) records every message it receives and
answers INVITE and BYE. The caller (sipp) and ser both live on 127.0.0.1, so no
Via, Contact, Record-Route or Route line at the UAS may name 127.0.0.1.
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, need

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
SEED = ROOT / "tests" / "data" / "seed-snippets" / "10-topoh.cfg"
SCEN = ROOT / "bench" / "scenarios"
SER = str(Path(sys.executable).with_name("ser"))
MASK_IP = "10.1.1.10"
HIDING = re.compile(r"^(via|v|contact|m|record-route|route)\s*:", re.I)


def seed_cfg(uas_port: int, extra: str = "") -> str:
    """The seed as written, with a listen line and a fixed destination."""
    text = SEED.read_text().replace("{", "{{").replace("}", "}}") + extra
    text = text.replace("#!KAMAILIO\n", "#!KAMAILIO\nlisten=udp:127.0.0.1:{port}\n"
                        "children=2\nloadmodule \"pv.so\"\n", 1)
    text = text.replace("    record_route();\n    t_relay();",
                        f"    record_route();\n    $du = \"sip:127.0.0.2:{uas_port}\";\n"
                        "    t_relay();")
    assert "$du" in text
    return text


class Uas(threading.Thread):
    """Answers INVITE (180, then 200 after ``answer_delay``; with ``ring`` only
    180, and a CANCEL gets 200 and the INVITE 487) and BYE (200); keeps every
    message it got."""

    def __init__(self, port: int, ring: bool = False, answer_delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.ring = ring
        self.answer_delay = answer_delay
        self.invite = ""
        self.tcp = False
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.2", port))
        self.s.settimeout(0.2)
        self.port = port
        self.got: list[str] = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.s.recvfrom(65535)
            except TimeoutError:
                continue
            self.handle(data.decode("utf-8", "replace"), lambda b, a=addr: self.s.sendto(b, a))

    def handle(self, text: str, send) -> None:
        self.got.append(text)
        method = text.split(" ", 1)[0]
        if method == "INVITE":
            self.invite = text
            send(self.reply(text, 180, "Ringing"))
            if not self.ring:
                time.sleep(self.answer_delay)
                send(self.reply(text, 200, "OK"))
        elif method == "CANCEL":
            send(self.reply(text, 200, "OK"))
            if self.ring and self.invite:
                send(self.reply(self.invite, 487, "Request Terminated"))
        elif method in ("BYE", "OPTIONS"):
            send(self.reply(text, 200, "OK"))

    def reply(self, req: str, code: int, reason: str) -> bytes:
        head = req.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = [ln for ln in head[1:] if re.match(
            r"(via|v|from|f|to|t|call-id|i|cseq|record-route)\s*:", ln, re.I)]
        out = []
        for ln in keep:
            if re.match(r"(to|t)\s*:", ln, re.I) and ";tag=" not in ln:
                ln += ";tag=uas1"
            if re.match(r"(via|v)\s*:", ln, re.I) and not out:
                ln += ";received=127.0.0.1"
            out.append(ln)
        tp = ";transport=tcp" if self.tcp else ""
        contact = [f"Contact: <sip:uas@127.0.0.2:{self.port}{tp}>"] if "INVITE" in head[0] \
            else []
        return "\r\n".join([f"SIP/2.0 {code} {reason}", *out, *contact,
                            "Content-Length: 0", "", ""]).encode()

    def methods(self) -> list[str]:
        return [m.split(" ", 1)[0] for m in self.got]

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while method not in self.methods():
            if time.monotonic() > deadline:
                raise AssertionError(f"UAS never got {method}: {self.methods()}")
            time.sleep(0.05)

    def close(self) -> None:
        self.stopping = True
        self.join(2)
        self.s.close()


class TcpUas(Uas):
    """The same callee over TCP: it listens, and answers on the connection a
    request came in on; ``accepted`` counts the connections ser opened."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.s.close()
        self.tcp = True
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.2", port))
        self.s.listen(8)
        self.accepted = 0

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.s, selectors.EVENT_READ, None)
        bufs: dict[socket.socket, bytes] = {}
        try:
            while not self.stopping:
                for key, _ in sel.select(0.2):
                    if key.data is None:
                        conn, _ = self.s.accept()
                        self.accepted += 1
                        bufs[conn] = b""
                        sel.register(conn, selectors.EVENT_READ, conn)
                        continue
                    conn = key.data
                    chunk = conn.recv(65536)
                    if not chunk:
                        sel.unregister(conn)
                        conn.close()
                        del bufs[conn]
                        continue
                    bufs[conn] += chunk
                    while (end := bufs[conn].find(b"\r\n\r\n")) >= 0:
                        m = re.search(rb"\r\n(?:content-length|l)\s*:\s*(\d+)",
                                      bufs[conn][:end], re.I)
                        total = end + 4 + (int(m.group(1)) if m else 0)
                        if len(bufs[conn]) < total:
                            break
                        msg, bufs[conn] = bufs[conn][:total], bufs[conn][total:]
                        self.handle(msg.decode("utf-8", "replace"), conn.sendall)
        finally:
            for conn in bufs:
                conn.close()
            sel.close()


@pytest.fixture
def uas():
    u = Uas(free_port("127.0.0.2"))
    u.start()
    yield u
    u.close()


def _sipp(ser_port: int, tmp_path: Path, pause_ms: int, tcp: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", "-sf", str(SCEN / "uac_call.xml"), "-i", "127.0.0.1", "-m", "1",
         *(["-t", "t1"] if tcp else []),
         "-d", str(pause_ms), "-nostdin", "-s", "bob", "-timeout", "30s", "-trace_err",
         f"127.0.0.1:{ser_port}"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def _check_hidden(uas: Uas) -> None:
    for text in uas.got:
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        for ln in head[1:]:
            if HIDING.match(ln):
                assert "127.0.0.1" not in ln, f"{ln!r} leaks an address in\n{text}"
        vias = [ln for ln in head if re.match(r"(via|v)\s*:", ln, re.I)]
        assert len(vias) == 1 and MASK_IP in vias[0], text
        if head[0].startswith("INVITE"):
            assert any(ln.lower().startswith("record-route:") and MASK_IP in ln
                       for ln in head), text
            assert any(ln.lower().startswith("contact:") and MASK_IP in ln for ln in head), text


def test_seed_10_passes_check():
    r = subprocess.run([SER, "-c", "-f", str(SEED)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("mask_callid", [False, True])
def test_call_through_topoh_hides_addresses(ser_factory, uas, tmp_path, mask_callid):
    need("sipp")
    extra = 'modparam("topoh", "mask_callid", 1)\n' if mask_callid else ""
    ser = ser_factory(seed_cfg(uas.port, extra))
    uac = _sipp(ser.port, tmp_path, 200)
    out, _ = uac.communicate(timeout=60)
    assert uac.returncode == 0, out[-3000:] + ser.logtext()[-3000:]
    assert uas.methods() == ["INVITE", "ACK", "BYE"], uas.got
    _check_hidden(uas)
    cids = {re.search(r"^Call-ID:\s*(\S+)", m, re.M | re.I).group(1) for m in uas.got}
    assert len(cids) == 1
    assert cids.pop().startswith("!!:") is mask_callid


def test_restart_between_200_and_bye(ser_factory, uas, tmp_path):
    need("sipp")
    ser = ser_factory(seed_cfg(uas.port))
    uac = _sipp(ser.port, tmp_path, 4000)
    try:
        uas.wait_for("ACK", 10)
        ser.stop()
        ser.start()
        out, _ = uac.communicate(timeout=60)
    finally:
        if uac.poll() is None:
            uac.kill()
            uac.wait()
    assert uac.returncode == 0, out[-3000:] + ser.logtext()[-3000:]
    assert uas.methods() == ["INVITE", "ACK", "BYE"], uas.got
    _check_hidden(uas)


@pytest.mark.parametrize(("callee_proto", "mask_callid"),
                         [("udp", False), ("tcp", False), ("tcp", True)])
def test_call_from_a_tcp_caller_through_topoh(ser_factory, tmp_path, callee_proto,
                                              mask_callid):
    """The caller speaks TCP (sipp -t t1), the callee UDP or TCP: the callee
    sees only masked addresses, the caller's ACK and BYE find their way back
    through the masked Record-Route and Contact (over the callee's one TCP
    connection when it is TCP)."""
    need("sipp")
    port = free_port("127.0.0.2")
    uas = TcpUas(port) if callee_proto == "tcp" else Uas(port)
    uas.start()
    text = seed_cfg(uas.port).replace("listen=udp:127.0.0.1:{port}\n",
                                      "listen=udp:127.0.0.1:{port}\n"
                                      "listen=tcp:127.0.0.1:{port}\ntcp_children=2\n")
    if mask_callid:
        text += 'modparam("topoh", "mask_callid", 1)\n'
    text = text.replace(f'$du = "sip:127.0.0.2:{uas.port}"',
                        f'$du = "sip:127.0.0.2:{uas.port};transport={callee_proto}"')
    try:
        ser = ser_factory(text)
        uac = _sipp(ser.port, tmp_path, 200, tcp=True)
        out, _ = uac.communicate(timeout=60)
        assert uac.returncode == 0, out[-3000:] + ser.logtext()[-3000:]
    finally:
        uas.close()
    assert uas.methods() == ["INVITE", "ACK", "BYE"], uas.got
    _check_hidden(uas)
    # the caller's transport is hidden too: the one Via names the callee's
    want = rf"^Via: SIP/2.0/{callee_proto.upper()} 10\.1\.1\.10;"
    assert all(re.search(want, m, re.M) for m in uas.got), uas.got
    if callee_proto == "tcp":
        assert uas.accepted == 1
    assert all(_header(m, "Call-ID").startswith("!!:") is mask_callid for m in uas.got)


def _caller_request(method: str, local: tuple[str, int], ser_port: int, branch: str,
                    to_tag: str = "", cseq_method: str = "") -> bytes:
    to = f"<sip:bob@127.0.0.1:{ser_port}>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:bob@127.0.0.1:{ser_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=caller1\r\nTo: {to}\r\n"
            f"Call-ID: cancel-{branch}@127.0.0.1\r\n"
            f"CSeq: 1 {cseq_method or method}\r\n"
            f"Contact: <sip:alice@{local[0]}:{local[1]}>\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _recv_final(sock: socket.socket, method: str, timeout: float = 5.0) -> str:
    """The first final reply to ``method`` (by CSeq) the caller receives."""
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            text = sock.recv(65535).decode()
        except TimeoutError:
            raise AssertionError(f"no final reply to {method}") from None
        code = int(text.split(" ", 2)[1])
        if code >= 200 and re.search(rf"^CSeq:\s*1 {method}\r$", text, re.M | re.I):
            return text


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*)\r$", msg, re.M | re.I)
    assert m, f"no {name} in\n{msg}"
    return m.group(1)


@pytest.mark.parametrize("mask_callid", [False, True])
def test_cancel_through_topoh(ser_factory, tmp_path, mask_callid):
    """A CANCEL matches its INVITE through topoh: the callee gets a masked
    CANCEL of the INVITE it has (same branch, same Call-ID as it saw), the
    caller gets 200 for the CANCEL and 487 for the INVITE."""
    callee = Uas(free_port("127.0.0.2"), ring=True)
    callee.start()
    extra = 'modparam("topoh", "mask_callid", 1)\n' if mask_callid else ""
    ser = ser_factory(seed_cfg(callee.port, extra))
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    local = caller.getsockname()
    try:
        caller.sendto(_caller_request("INVITE", local, ser.port, "z9hG4bKcx1"),
                      ("127.0.0.1", ser.port))
        callee.wait_for("INVITE", 5)
        time.sleep(0.2)                 # the 180 is on its way back
        caller.sendto(_caller_request("CANCEL", local, ser.port, "z9hG4bKcx1"),
                      ("127.0.0.1", ser.port))
        assert _recv_final(caller, "CANCEL").startswith("SIP/2.0 200")
        final = _recv_final(caller, "INVITE")
        assert final.startswith("SIP/2.0 487"), final
        to_tag = re.search(r";tag=([^;\s]+)", _header(final, "To")).group(1)
        caller.sendto(_caller_request("ACK", local, ser.port, "z9hG4bKcx1", to_tag),
                      ("127.0.0.1", ser.port))
        callee.wait_for("ACK", 5)
    finally:
        caller.close()
        callee.close()
    assert callee.methods() == ["INVITE", "CANCEL", "ACK"], callee.got
    _check_hidden(callee)
    inv, cancel, ack = callee.got
    branch = re.compile(r";branch=([^;,\s]+)")
    assert branch.search(_header(cancel, "Via")).group(1) == \
        branch.search(_header(inv, "Via")).group(1) == branch.search(_header(ack, "Via")).group(1)
    assert _header(cancel, "Call-ID") == _header(inv, "Call-ID")
    assert _header(inv, "Call-ID").startswith("!!:") is mask_callid
    assert _header(cancel, "CSeq") == "1 CANCEL"
    assert cancel.split(" ", 2)[1] == inv.split(" ", 2)[1]   # the same Request-URI


@pytest.mark.parametrize("mask_callid", [False, True])
def test_forked_call_through_topoh(ser_factory, tmp_path, mask_callid):
    """Two branches (append_branch): one rings, the other answers; the
    ringing one gets a masked CANCEL, the answered call completes and every
    message at both callees is masked."""
    need("sipp")
    ringing = Uas(free_port("127.0.0.2"), ring=True)
    answering = Uas(free_port("127.0.0.2"), answer_delay=0.5)
    for u in (ringing, answering):
        u.start()
    text = seed_cfg(ringing.port).replace(
        f'    $du = "sip:127.0.0.2:{ringing.port}";\n',
        f'    $ru = "sip:bob1@127.0.0.2:{ringing.port}";\n'
        f'    append_branch("sip:bob2@127.0.0.2:{answering.port}");\n')
    assert "append_branch" in text
    if mask_callid:
        text += 'modparam("topoh", "mask_callid", 1)\n'
    try:
        ser = ser_factory(text)
        uac = _sipp(ser.port, tmp_path, 200)
        out, _ = uac.communicate(timeout=60)
        assert uac.returncode == 0, out[-3000:] + ser.logtext()[-3000:]
        ringing.wait_for("ACK", 5)
    finally:
        ringing.close()
        answering.close()
    assert ringing.methods() == ["INVITE", "CANCEL", "ACK"], ringing.got
    assert answering.methods() == ["INVITE", "ACK", "BYE"], answering.got
    for u in (ringing, answering):
        _check_hidden(u)
        assert all(_header(m, "Call-ID").startswith("!!:") is mask_callid for m in u.got)
    assert ringing.got[0].startswith(f"INVITE sip:bob1@127.0.0.2:{ringing.port} ")
    assert answering.got[0].startswith(f"INVITE sip:bob2@127.0.0.2:{answering.port} ")
    # the two branches differ; each callee's CANCEL/ACK carry its own
    b = [re.search(r";branch=([^;,\s]+)", _header(u.got[0], "Via")).group(1)
         for u in (ringing, answering)]
    assert b[0] != b[1]
