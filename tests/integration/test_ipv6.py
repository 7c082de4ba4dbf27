"""IPv6 on UDP, TCP and TLS over [::1]; SCTP where the kernel has it."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from ser.core.net import sctp_available

from .conftest import SER, free_port
from .test_tls import Certs, Peer, client_ctx, register, reply_to, request


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs6"))


def free_port6() -> int:
    for _ in range(50):
        t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        t.bind(("::1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            u.bind(("::1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port on ::1")


def _cfg(certs, port: int, tport: int, up: int) -> str:
    return f"""\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
enable_tls=yes
listen=udp:[::1]:{port}
listen=tcp:[::1]:{port}
listen=tls:[::1]:{tport}
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "tls.so"
modparam("tls", "certificate", "{certs.server}")
modparam("tls", "private_key", "{certs.server_key}")
request_route {{{{
    if (af==INET6) {{{{
        xlog("L_INFO", "v6 $rm over $proto from $si\\n");
    }}}}
    if (is_method("REGISTER")) {{{{
        save("location");
        exit;
    }}}}
    if (is_method("OPTIONS")) {{{{
        sl_send_reply("200", "OK");
        exit;
    }}}}
    record_route();
    t_relay_to_udp("::1", "{up}");
}}}}
"""


@pytest.fixture
def v6(ser_factory, certs):
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    port, tport, up = free_port6(), free_port6(), free_port6()
    ser = ser_factory(_cfg(certs, port, tport, up), port=port)
    ser.tport, ser.up = tport, up
    return ser


def _udp6() -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.settimeout(3)
    return s


def test_options_and_register_over_udp6(v6):
    s = _udp6()
    try:
        local = s.getsockname()[:2]
        s.sendto(request("OPTIONS", "sip:ping@[::1]", "UDP", local, "z9hG4bK6u1"),
                 ("::1", v6.port))
        r = s.recv(65535).decode()
        assert r.startswith("SIP/2.0 200")
        assert f"Via: SIP/2.0/UDP [::1]:{local[1]};branch=z9hG4bK6u1;rport={local[1]}" in r
        contact = f"Contact: <sip:alice@[::1]:{local[1]}>\r\nExpires: 300\r\n"
        s.sendto(request("REGISTER", "sip:example.com", "UDP", local, "z9hG4bK6u2", contact),
                 ("::1", v6.port))
        r = s.recv(65535).decode()
        assert r.startswith("SIP/2.0 200")
        assert re.search(rf"^Contact: <sip:alice@\[::1\]:{local[1]}>;expires=\d+", r, re.M)
    finally:
        s.close()
    assert "v6 OPTIONS over udp from ::1" in v6.logtext()


def test_options_and_register_over_tcp6(v6):
    p = Peer.tcp(v6.port, host="::1")
    try:
        p.send(request("OPTIONS", "sip:ping@[::1]", "TCP", p.local, "z9hG4bK6t1"))
        assert p.expect("SIP/2.0 200")
        assert register(p, "TCP", v6.port, "z9hG4bK6t2").startswith("SIP/2.0 200")
    finally:
        p.close()
    assert "v6 REGISTER over tcp from ::1" in v6.logtext()


def test_options_and_register_over_tls6(v6, certs):
    p = Peer.tls(v6.tport, client_ctx(certs), host="::1")
    try:
        p.send(request("OPTIONS", "sip:ping@[::1]", "TLS", p.local, "z9hG4bK6s1"))
        assert p.expect("SIP/2.0 200")
        assert register(p, "TLS", v6.tport, "z9hG4bK6s2").startswith("SIP/2.0 200")
    finally:
        p.close()
    assert "v6 REGISTER over tls from ::1" in v6.logtext()
    assert "[::1]" in str(v6.rpc("ul.dump"))


def test_invite_relayed_with_ipv6_via_and_record_route(v6):
    caller, callee = _udp6(), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    callee.bind(("::1", v6.up))
    callee.settimeout(3)
    try:
        caller.sendto(request("INVITE", "sip:bob@[::1]", "UDP", caller.getsockname()[:2],
                              "z9hG4bK6i1"), ("::1", v6.port))
        fwd, addr = callee.recvfrom(65535)
        fwd = fwd.decode()
        assert re.search(rf"^Via: SIP/2.0/UDP \[::1\]:{v6.port};branch=z9hG4bK", fwd, re.M)
        assert re.search(rf"^Record-Route: <sip:\[::1\]:{v6.port};lr", fwd, re.M)
        callee.sendto(reply_to(fwd, 486, "Busy Here"), addr[:2])
        codes = set()
        for _ in range(3):
            codes.add(caller.recv(65535).decode().split()[1])
            if "486" in codes:
                break
        assert "486" in codes
    finally:
        caller.close()
        callee.close()


def test_sctp_listen_without_kernel_support_fails_at_start(ser_factory, tmp_path):
    why = sctp_available()
    if why is None:
        pytest.skip("this kernel has SCTP: the start-up refusal does not apply")
    port = free_port()
    text = f"#!KAMAILIO\nlisten=sctp:127.0.0.1:{port}\nloadmodule \"sl.so\"\n" \
           "request_route {{\n    sl_send_reply(\"200\", \"OK\");\n}}\n"
    ser = ser_factory(text, port=port, start=False)
    r = subprocess.run(ser.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert (f"listen=sctp:127.0.0.1:{port}: SCTP is not supported by this kernel "
            f"(socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) failed: {why})") in r.stderr
    # the check of the config alone passes: the kernel is asked at start
    ok = subprocess.run([SER, "-c", "-f", str(ser.cfg)], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr


def test_sctp_transport_where_the_kernel_has_it():
    why = sctp_available()
    if why is not None:
        print(f"SKIP reason: this kernel has no SCTP ({why})")
        pytest.skip(f"this kernel has no SCTP: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) "
                    f"failed: {why}")
    pytest.skip("SCTP kernel present but ser's SCTP transport (pysctp) is not implemented")
