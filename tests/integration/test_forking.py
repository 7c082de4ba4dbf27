"""Forking to registered contacts: serial by q (t_load_contacts/t_next_contacts in
a failure_route) and parallel (lookup's branches), with raw UDP phones."""

from __future__ import annotations

import re
import socket
import time

import pytest

pytestmark = pytest.mark.integration

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=1
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("tm", "fr_inv_timer", 5000)
request_route {{
    if (is_method("REGISTER")) {{
        save("location");
        exit;
    }}
    if (is_method("ACK|CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    if (is_present_hf("X-Serial")) {{
        t_load_contacts();
        t_next_contacts();
        t_on_failure("NEXT");
    }}
    t_relay();
}}
failure_route[NEXT] {{
    if (t_next_contacts()) {{
        t_on_failure("NEXT");
        t_relay();
    }}
}}
"""


def udp(timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def register(ser_port: int, phone: socket.socket, q: str) -> None:
    p = phone.getsockname()[1]
    phone.sendto((f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bKreg{p};rport\r\n"
                  f"From: <sip:bob@127.0.0.1>;tag=r{p}\r\nTo: <sip:bob@127.0.0.1>\r\n"
                  f"Call-ID: reg{p}\r\nCSeq: 1 REGISTER\r\n"
                  f"Contact: <sip:bob@127.0.0.1:{p}>;q={q}\r\nExpires: 60\r\n"
                  f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", ser_port))
    assert phone.recv(65535).startswith(b"SIP/2.0 200 OK")


def recv_request(s: socket.socket, method: str) -> tuple[str, tuple[str, int]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data, addr = s.recvfrom(65535)
        text = data.decode()
        if text.startswith(method + " "):
            return text, addr
    raise AssertionError(f"no {method}")


def answer(s: socket.socket, req: str, addr: tuple[str, int], code: int, reason: str) -> None:
    """A reply built the RFC 3261 way: Vias, From, To (+tag), Call-ID, CSeq copied."""
    keep = [ln for ln in req.split("\r\n") if re.match(r"(Via|From|To|Call-ID|CSeq):", ln)]
    keep = [ln + ";tag=uas" if ln.startswith("To:") else ln for ln in keep]
    s.sendto(("\r\n".join([f"SIP/2.0 {code} {reason}", *keep, "Content-Length: 0", "", ""]))
             .encode(), addr)


def invite(ser_port: int, caller: socket.socket, call_id: str, serial: bool) -> None:
    p = caller.getsockname()[1]
    extra = "X-Serial: 1\r\n" if serial else ""
    caller.sendto((f"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bK{call_id};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a\r\n"
                   f"To: <sip:bob@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                   f"Contact: <sip:alice@127.0.0.1:{p}>\r\n{extra}"
                   f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", ser_port))


def final(caller: socket.socket) -> str:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        text = caller.recv(65535).decode()
        if not text.startswith("SIP/2.0 1"):
            return text
    raise AssertionError("no final reply")


def test_serial_forking_by_q_after_a_486(ser_factory):
    ser = ser_factory(CFG)
    first, second, caller = udp(), udp(), udp()
    register(ser.port, first, "1.0")
    register(ser.port, second, "0.5")
    invite(ser.port, caller, "serial1", serial=True)
    req, addr = recv_request(first, "INVITE")
    assert req.startswith(f"INVITE sip:bob@127.0.0.1:{first.getsockname()[1]} ")
    second.settimeout(0.5)
    with pytest.raises(TimeoutError):          # not yet: serial, q=0.5 comes second
        second.recv(65535)
    second.settimeout(5)
    answer(first, req, addr, 486, "Busy Here")
    ack, _ = recv_request(first, "ACK")        # the 486 is acknowledged hop by hop
    assert "CSeq: 1 ACK" in ack
    req2, addr2 = recv_request(second, "INVITE")
    assert req2.startswith(f"INVITE sip:bob@127.0.0.1:{second.getsockname()[1]} ")
    answer(second, req2, addr2, 200, "OK")
    assert final(caller).startswith("SIP/2.0 200 OK")
    for s in (first, second, caller):
        s.close()


def test_parallel_forking_to_every_contact(ser_factory):
    ser = ser_factory(CFG)
    first, second, caller = udp(), udp(), udp()
    register(ser.port, first, "1.0")
    register(ser.port, second, "0.5")
    invite(ser.port, caller, "parallel1", serial=False)
    req1, addr1 = recv_request(first, "INVITE")
    req2, addr2 = recv_request(second, "INVITE")
    branch1 = re.search(r"branch=([^;\r]+)", req1).group(1)
    branch2 = re.search(r"branch=([^;\r]+)", req2).group(1)
    assert branch1 != branch2
    answer(first, req1, addr1, 180, "Ringing")  # RFC 3261 9.1: CANCEL needs a provisional
    answer(second, req2, addr2, 200, "OK")
    assert final(caller).startswith("SIP/2.0 200 OK")
    cancel, _ = recv_request(first, "CANCEL")   # the other branch is cancelled
    assert f"branch={branch1}" in cancel
    for s in (first, second, caller):
        s.close()
