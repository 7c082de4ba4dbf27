"""rr on the wire: double Record-Route when a request changes transport,
loose_route() over both of them, Route headers naming us, a strict router
before us (RFC 3261 16.4), and is_direction() with append_fromtag."""

from __future__ import annotations

import re
import socket

import pytest

from tests.integration.test_tls import Peer as StreamPeer
from tests.integration.test_tm import Peer, invite, reply_to

pytestmark = pytest.mark.integration

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
modparam("rr", "append_fromtag", 1)
DOUBLE
modparam("tm", "fr_timer", 2000)
modparam("tm", "wt_timer", 500)
request_route {{
    if ($tt != $null) {{
        if (loose_route()) {{
            if (is_direction("downstream")) append_hf("X-Dir: down\\r\\n");
            if (is_direction("upstream")) append_hf("X-Dir: up\\r\\n");
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
    if (is_method("CANCEL|ACK")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    record_route();
    if ($rU == "tcp") add_rr_param(";x=1");
    FOUR
    if ($rU == "tcp") $du = "sip:127.0.0.2:TCPUAS;transport=tcp";
    else $du = "sip:127.0.0.2:UDPUAS";
    t_relay();
}}
"""


def _cfg(tcp_uas: int, udp_uas: int, double: str = "") -> str:
    return (CFG.replace("TCPUAS", str(tcp_uas)).replace("UDPUAS", str(udp_uas))
            .replace("DOUBLE", double).replace("FOUR", ""))


def _two_udp_cfg(udp_uas: int) -> str:
    """UDP on 127.0.0.1 and on 127.0.0.4 (same port); user "four" is sent
    out from 127.0.0.4 by set_send_socket()."""
    return (CFG.replace("TCPUAS", "9").replace("UDPUAS", str(udp_uas)).replace("DOUBLE", "")
            .replace("listen=tcp:127.0.0.1:{port}", "listen=udp:127.0.0.4:{port}")
            .replace('loadmodule "sl.so"', 'loadmodule "sl.so"\nloadmodule "corex.so"')
            .replace("FOUR", 'if ($rU == "four") set_send_socket("udp:127.0.0.4:{port}");\n'
                     f'    if ($rU == "stateless") {{{{ $du = "sip:127.0.0.2:{udp_uas}"; '
                     'forward(); exit; }}\n'
                     '    if ($rU == "retry") t_on_failure("RETRY");\n'
                     '    if ($rU == "again") {{ set_send_socket("udp:127.0.0.4:{port}"); '
                     't_on_failure("AGAIN"); }}')
            + 'failure_route[RETRY] {{\n    set_send_socket("udp:127.0.0.4:{port}");\n'
              f'    $du = "sip:127.0.0.2:{udp_uas}";\n    t_relay();\n}}}}\n'
              f'failure_route[AGAIN] {{{{\n    $du = "sip:127.0.0.2:{udp_uas}";\n'
              '    t_relay();\n}}\n')


def _hdr(msg: str, name: str) -> list[str]:
    return re.findall(rf"^{name}: (.*)\r$", msg, re.M | re.I)


@pytest.fixture
def udp_peers():
    made: list[Peer] = []

    def make(host: str) -> Peer:
        p = Peer(host)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


@pytest.fixture
def tcp_listener():
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.2", 0))
    lsock.listen(4)
    lsock.settimeout(5)
    yield lsock
    lsock.close()


def _in_dialog(method: str, ruri: str, via: str, frm: str, to: str, routes: list[str],
               callid: str, cseq: int) -> str:
    route = "".join(f"Route: {r}\r\n" for r in routes)
    return (f"{method} {ruri} SIP/2.0\r\nVia: {via}\r\n{route}"
            f"From: {frm}\r\nTo: {to}\r\nCall-ID: {callid}\r\nCSeq: {cseq} {method}\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def test_udp_in_tcp_out_double_record_route_and_both_consumed(ser_factory, udp_peers,
                                                              tcp_listener):
    tport = tcp_listener.getsockname()[1]
    uac = udp_peers("127.0.0.1")
    ser = ser_factory(_cfg(tport, 9))
    p = ser.port
    uac.send(invite(uac, p, user="tcp", callid="drr1"), ("127.0.0.1", p))
    conn, _ = tcp_listener.accept()
    callee = StreamPeer(conn)
    try:
        fwd = callee.expect("INVITE ")
        # add_rr_param() after record_route() reaches both headers
        out_rr = f"<sip:127.0.0.1:{p};transport=tcp;r2=on;lr;ftag=ft1;x=1>"
        in_rr = f"<sip:127.0.0.1:{p};r2=on;lr;ftag=ft1;x=1>"
        # the top one faces the callee (TCP), the second the caller (UDP)
        assert _hdr(fwd, "Record-Route") == [out_rr, in_rr]
        assert re.search(rf"^Via: SIP/2.0/TCP 127\.0\.0\.1:{p};branch=", fwd, re.M)
        contact = f"<sip:callee@127.0.0.2:{tport};transport=tcp>"
        ok = reply_to(fwd, 200, "OK").replace("Contact: <sip:callee@127.0.0.2>",
                                              f"Contact: {contact}")
        assert "tag=" in ok
        callee.send(ok.encode())
        got, _ = uac.expect("SIP/2.0 200")
        assert _hdr(got, "Record-Route") == [out_rr, in_rr]
        to = _hdr(got, "To")[0]
        # the caller's route set is the Record-Routes reversed: both are ours
        uac.send(_in_dialog("ACK", f"sip:callee@127.0.0.2:{tport};transport=tcp",
                            f"SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bKack1",
                            "<sip:alice@127.0.0.1>;tag=ft1", to, [in_rr, out_rr], "drr1", 1),
                 ("127.0.0.1", p))
        ack = callee.expect("ACK ")
        assert _hdr(ack, "Route") == []
        assert _hdr(ack, "X-Dir") == ["down"]
        # the callee's BYE comes in over TCP and leaves over UDP
        callee.send(_in_dialog("BYE", f"sip:alice@127.0.0.1:{uac.port}",
                               f"SIP/2.0/TCP 127.0.0.2:{tport};branch=z9hG4bKbye1",
                               to.replace("To:", "").strip(), "<sip:alice@127.0.0.1>;tag=ft1",
                               [out_rr, in_rr], "drr1", 2).encode())
        bye, addr = uac.expect("BYE ")
        assert addr == ("127.0.0.1", p)
        assert _hdr(bye, "Route") == []
        assert _hdr(bye, "X-Dir") == ["up"]
        uac.send(reply_to(bye, 200, "OK"), addr)
        assert callee.expect("SIP/2.0 200").find("CSeq: 2 BYE") > 0
    finally:
        callee.close()


@pytest.mark.parametrize("double,want", [("", 1), ('modparam("rr", "enable_double_rr", 0)', 1),
                                         ('modparam("rr", "enable_double_rr", 2)', 2)])
def test_same_socket_one_record_route(ser_factory, udp_peers, double, want):
    uac, uas = udp_peers("127.0.0.1"), udp_peers("127.0.0.2")
    ser = ser_factory(_cfg(9, uas.port, double))
    uac.send(invite(uac, ser.port, callid="srr1"), ("127.0.0.1", ser.port))
    fwd, _ = uas.expect("INVITE ")
    rr = _hdr(fwd, "Record-Route")
    assert len(rr) == want, rr
    if want == 1:
        assert rr == [f"<sip:127.0.0.1:{ser.port};lr;ftag=ft1>"]
    else:
        assert rr == [f"<sip:127.0.0.1:{ser.port};r2=on;lr;ftag=ft1>"] * 2


def test_double_rr_off_keeps_one_header_across_transports(ser_factory, udp_peers,
                                                          tcp_listener):
    tport = tcp_listener.getsockname()[1]
    uac = udp_peers("127.0.0.1")
    ser = ser_factory(_cfg(tport, 9, 'modparam("rr", "enable_double_rr", 0)'))
    uac.send(invite(uac, ser.port, user="tcp", callid="drr0"), ("127.0.0.1", ser.port))
    conn, _ = tcp_listener.accept()
    callee = StreamPeer(conn)
    try:
        fwd = callee.expect("INVITE ")
        assert _hdr(fwd, "Record-Route") == [f"<sip:127.0.0.1:{ser.port};lr;ftag=ft1;x=1>"]
    finally:
        callee.close()


def test_routes_naming_us_and_a_strict_router_before_us(ser_factory, udp_peers):
    uac, uas1, uas2 = udp_peers("127.0.0.1"), udp_peers("127.0.0.2"), udp_peers("127.0.0.3")
    ser = ser_factory(_cfg(9, uas1.port))
    p = ser.port
    me = f"<sip:127.0.0.1:{p};lr;ftag=ft1>"
    callee = f"sip:callee@127.0.0.2:{uas1.port}"
    caller_from = "<sip:alice@127.0.0.1>;tag=ft1"
    callee_to = "<sip:bob@127.0.0.1>;tag=tt1"
    via = f"SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK"
    cases = [
        # (R-URI, Route headers sent, who gets it, R-URI and Routes it gets)
        (callee, [me], uas1, callee, []),
        (callee, [me, f"<sip:127.0.0.3:{uas2.port};lr>"], uas2, callee,
         [f"<sip:127.0.0.3:{uas2.port};lr>"]),
        # a strict router put our Record-Route (without lr) in the R-URI: the
        # last Route is the real target (RFC 3261 16.4)
        (f"sip:127.0.0.1:{p};ftag=ft1", [f"<{callee}>"], uas1, callee, []),
        (f"sip:127.0.0.1:{p};ftag=ft1", [f"<sip:127.0.0.3:{uas2.port};lr>", f"<{callee}>"],
         uas2, callee, [f"<sip:127.0.0.3:{uas2.port};lr>"]),
        # the next hop is a strict router: it gets the request as its R-URI,
        # the R-URI goes to the end of the Route set (RFC 3261 16.6 step 6)
        (callee, [me, f"<sip:127.0.0.3:{uas2.port}>"], uas2, f"sip:127.0.0.3:{uas2.port}",
         [f"<{callee}>"]),
    ]
    for i, (ruri, routes, dest, want_ruri, want_routes) in enumerate(cases):
        uac.send(_in_dialog("INFO", ruri, f"{via}sr{i}", caller_from, callee_to, routes,
                            f"sr{i}", 2), ("127.0.0.1", p))
        got, addr = dest.expect("INFO ")
        assert got.startswith(f"INFO {want_ruri} SIP/2.0\r\n"), (i, got)
        assert _hdr(got, "Route") == want_routes, (i, got)
        assert _hdr(got, "X-Dir") == ["down"], (i, got)
        dest.send(reply_to(got, 200, "OK"), addr)
        rep, _ = uac.expect("SIP/2.0 200")
        assert "CSeq: 2 INFO" in rep and f"sr{i}" in rep


def test_is_direction_upstream_for_the_callee(ser_factory, udp_peers):
    uac, uas1 = udp_peers("127.0.0.1"), udp_peers("127.0.0.2")
    ser = ser_factory(_cfg(9, uas1.port))
    p = ser.port
    me = f"<sip:127.0.0.1:{p};lr;ftag=ft1>"
    uas1.send(_in_dialog("BYE", f"sip:alice@127.0.0.1:{uac.port}",
                         f"SIP/2.0/UDP 127.0.0.2:{uas1.port};branch=z9hG4bKup1",
                         "<sip:bob@127.0.0.1>;tag=tt1", "<sip:alice@127.0.0.1>;tag=ft1", [me],
                         "up1", 5), ("127.0.0.1", p))
    bye, addr = uac.expect("BYE ")
    assert _hdr(bye, "X-Dir") == ["up"]
    assert _hdr(bye, "Route") == []
    uac.send(reply_to(bye, 200, "OK"), addr)
    uas1.expect("SIP/2.0 200")


@pytest.mark.parametrize("to,user,leaves", [("127.0.0.4", "bob", "127.0.0.1"),
                                            ("127.0.0.1", "four", "127.0.0.4"),
                                            ("127.0.0.4", "stateless", "127.0.0.1")])
def test_two_listen_addresses_double_record_route(ser_factory, udp_peers, to, user, leaves):
    """In on one address, out on the other (the default socket, or the one
    set_send_socket() forces; statefully or by forward()): two
    Record-Routes, and the callee's BYE to the one facing it gets through
    with both removed."""
    uac, uas = udp_peers("127.0.0.1"), udp_peers("127.0.0.2")
    ser = ser_factory(_two_udp_cfg(uas.port))
    p = ser.port
    uac.send(invite(uac, p, user=user, callid=f"two{user}").replace(
        f"@127.0.0.1:{p} SIP", f"@{to}:{p} SIP"), (to, p))
    fwd, addr = uas.expect("INVITE ")
    assert addr == (leaves, p)
    kind = "z9hG4bKsl" if user == "stateless" else "z9hG4bK[0-9a-f]{16}[.]0"
    assert re.search(rf"^Via: SIP/2.0/UDP {leaves}:{p};branch={kind}", fwd, re.M)
    rr = [f"<sip:{leaves}:{p};r2=on;lr;ftag=ft1>", f"<sip:{to}:{p};r2=on;lr;ftag=ft1>"]
    assert _hdr(fwd, "Record-Route") == rr
    uas.send(reply_to(fwd, 200, "OK"), addr)
    ok, _ = uac.expect("SIP/2.0 200")
    assert _hdr(ok, "Record-Route") == rr
    uas.send(_in_dialog("BYE", f"sip:alice@127.0.0.1:{uac.port}",
                        f"SIP/2.0/UDP 127.0.0.2:{uas.port};branch=z9hG4bKtwo{user}",
                        "<sip:bob@127.0.0.1>;tag=tt1", "<sip:alice@127.0.0.1>;tag=ft1", rr,
                        f"two{user}", 2), (leaves, p))
    bye, _ = uac.expect("BYE ")
    assert _hdr(bye, "Route") == [] and _hdr(bye, "X-Dir") == ["up"]


@pytest.mark.parametrize("user", ["retry", "again"])
def test_double_record_route_on_a_branch_added_in_failure_route(ser_factory, udp_peers,
                                                                 user):
    """retry: the first branch leaves by the socket it came in on (one
    header), the failure_route sends the next one out of the other address
    (two); again: set_send_socket() in request_route holds for both."""
    uac, uas = udp_peers("127.0.0.1"), udp_peers("127.0.0.2")
    ser = ser_factory(_two_udp_cfg(uas.port))
    p = ser.port
    uac.send(invite(uac, p, user=user, callid=f"{user}1"), ("127.0.0.1", p))
    fwd, addr = uas.expect("INVITE ")
    if user == "retry":
        assert addr == ("127.0.0.1", p)
        assert _hdr(fwd, "Record-Route") == [f"<sip:127.0.0.1:{p};lr;ftag=ft1>"]
    else:
        assert addr == ("127.0.0.4", p)
        assert len(_hdr(fwd, "Record-Route")) == 2
    uas.send(reply_to(fwd, 486, "Busy Here"), addr)
    uas.expect("ACK ")
    again, addr2 = uas.expect("INVITE ")
    assert addr2 == ("127.0.0.4", p)
    assert _hdr(again, "Record-Route") == [f"<sip:127.0.0.4:{p};r2=on;lr;ftag=ft1>",
                                           f"<sip:127.0.0.1:{p};r2=on;lr;ftag=ft1>"]
