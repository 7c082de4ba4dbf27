"""topoh on the wire: sipp UAC -> ser (the seed's 10-topoh.cfg) -> a raw UAS.

The UAS (a Python UDP peer on 127.0.0.2) records every message it receives and
answers INVITE and BYE. The caller (sipp) and ser both live on 127.0.0.1, so no
Via, Contact, Record-Route or Route line at the UAS may name 127.0.0.1.
"""

from __future__ import annotations

import re
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
    """Answers INVITE (180, 200) and BYE (200); keeps every message it got."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
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
            text = data.decode("utf-8", "replace")
            self.got.append(text)
            method = text.split(" ", 1)[0]
            if method == "INVITE":
                for code, reason in ((180, "Ringing"), (200, "OK")):
                    self.s.sendto(self.reply(text, code, reason), addr)
            elif method in ("BYE", "OPTIONS", "CANCEL"):
                self.s.sendto(self.reply(text, 200, "OK"), addr)

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
        contact = [f"Contact: <sip:uas@127.0.0.2:{self.port}>"] if "INVITE" in head[0] else []
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


@pytest.fixture
def uas():
    u = Uas(free_port("127.0.0.2"))
    u.start()
    yield u
    u.close()


def _sipp(ser_port: int, tmp_path: Path, pause_ms: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", "-sf", str(SCEN / "uac_call.xml"), "-i", "127.0.0.1", "-m", "1",
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
