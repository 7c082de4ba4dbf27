"""nathelper (NAT detection, Contact fixing, aliases), rr add_rr_param,
siputils is_first_hop and the rtpproxy stand-in, through compiled scripts."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import PROTO_TCP, Context, Runtime
from ser.core.parser import parse_message

HEAD = ('loadmodule "sl.so"\nloadmodule "pv.so"\nloadmodule "rr.so"\n'
        'loadmodule "siputils.so"\nloadmodule "nathelper.so"\n'
        'modparam("nathelper", "received_avp", "$avp(RECEIVED)")\n'
        'listen=udp:127.0.0.1:5060\n')


def invite(contact: str = "<sip:alice@10.1.2.3:5062>", via: str = "10.1.2.3:5062",
           ruri: str = "sip:bob@127.0.0.1", sdp: str | None = None, extra: str = "",
           method: str = "INVITE") -> bytes:
    body = sdp or ""
    ctype = "Content-Type: application/sdp\r\n" if sdp else ""
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via};branch=z9hG4bKnh1;rport\r\n"
            f"{extra}"
            "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=f1\r\n"
            "To: <sip:bob@127.0.0.1>\r\nCall-ID: nh1\r\n"
            f"CSeq: 1 {method}\r\nContact: {contact}\r\n{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def run(body: str, raw: bytes, src: tuple[str, int] = ("127.0.0.7", 40000),
        proto: int = 1, head: str = HEAD) -> Context:
    cfg = check_text(head + "request_route {\n" + body + "\n}\n", "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    assert cfg.routes is not None
    ctx = Context(parse_message(raw), Runtime(cfg.settings, cfg.modules), src_ip=src[0],
                  src_port=src[1], proto=proto)
    cfg.routes.request(ctx)
    return ctx


SDP_PRIVATE = "v=0\r\no=- 1 1 IN IP4 10.1.2.3\r\ns=-\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\n"
SDP_PUBLIC = SDP_PRIVATE.replace("10.1.2.3", "127.0.0.7")


@pytest.mark.parametrize("flags,raw,src,expected", [
    (1, invite(), ("127.0.0.7", 40000), True),
    (1, invite("<sip:alice@127.0.0.7:40000>"), ("127.0.0.7", 40000), False),
    (1, invite("<sip:alice@100.64.0.9>"), ("127.0.0.7", 40000), True),      # RFC 6598
    (1, invite("<sip:alice@172.32.0.1>"), ("127.0.0.7", 40000), False),     # not 172.16/12
    (2, invite(via="127.0.0.7:40000"), ("127.0.0.7", 40000), False),
    (2, invite(via="127.0.0.7:5062"), ("127.0.0.8", 5062), True),
    (4, invite(via="192.168.1.5"), ("127.0.0.7", 40000), True),
    (4, invite(via="127.0.0.7:40000"), ("127.0.0.7", 40000), False),
    (8, invite(sdp=SDP_PRIVATE), ("127.0.0.7", 40000), True),
    (8, invite(sdp=SDP_PUBLIC), ("127.0.0.7", 40000), False),
    (16, invite(via="127.0.0.7:5062"), ("127.0.0.7", 40000), True),
    (16, invite(via="127.0.0.7:40000"), ("127.0.0.7", 40000), False),
    (32, invite(), ("192.168.0.2", 5060), True),
    (32, invite(), ("127.0.0.7", 5060), False),
    (64, invite(), ("127.0.0.7", 5060), False),
    (128, invite("<sip:alice@127.0.0.7:5062>"), ("127.0.0.7", 40000), True),
    (128, invite("<sip:alice@127.0.0.7:40000>"), ("127.0.0.7", 40000), False),
    (256, invite(sdp=SDP_PUBLIC), ("127.0.0.8", 40000), True),
    (256, invite(sdp=SDP_PUBLIC), ("127.0.0.7", 40000), False),
    (19, invite("<sip:alice@127.0.0.7:40000>", via="127.0.0.7:40000"), ("127.0.0.7", 40000),
     False),
    (19, invite(via="127.0.0.7:40000"), ("127.0.0.7", 40000), True),     # only the Contact
])
def test_nat_uac_test(flags, raw, src, expected):
    ctx = run(f'if (nat_uac_test("{flags}")) {{ $var(r) = 1; }} else {{ $var(r) = 2; }}', raw,
              src)
    assert ctx.rt.vars["r"] == (1 if expected else 2)


def test_nat_uac_test_flags_are_checked_at_load():
    cfg = check_text(HEAD + 'request_route {\n nat_uac_test("1024");\n}\n', "t.cfg")
    assert any("t.cfg:9:" in str(e) and "flags" in str(e) for e in cfg.errors), cfg.errors


def test_fix_nated_register_sets_received_avp():
    ctx = run("fix_nated_register();", invite(method="REGISTER"))
    assert ctx.avps["RECEIVED"] == ["sip:127.0.0.7:40000"]
    ctx = run("fix_nated_register();", invite(method="REGISTER"), proto=PROTO_TCP)
    assert ctx.avps["RECEIVED"] == ["sip:127.0.0.7:40000;transport=tcp"]
    ctx = run("if (!fix_nated_register()) { $var(r) = 2; }", invite())    # not a REGISTER
    assert "RECEIVED" not in ctx.avps and ctx.rt.vars["r"] == 2


def test_fix_nated_contact_rewrites_host_and_port():
    ctx = run("fix_nated_contact();", invite('"Al" <sip:alice@10.1.2.3:5062;ob>;expires=60'))
    out = ctx.msg.serialize().decode()
    assert 'Contact: "Al" <sip:alice@127.0.0.7:40000;ob>;expires=60\r\n' in out


def test_set_contact_alias_adds_the_source_once():
    ctx = run("set_contact_alias(); set_contact_alias();", invite())
    out = ctx.msg.serialize().decode()
    assert out.count("alias=") == 1
    assert "Contact: <sip:alice@10.1.2.3:5062;alias=127.0.0.7~40000~1>\r\n" in out
    # a Contact that already is the source address gets no alias
    ctx = run("set_contact_alias();", invite("<sip:alice@127.0.0.7:40000>"))
    assert "alias" not in ctx.msg.serialize().decode()


def test_handle_ruri_alias_sets_du():
    ruri = "sip:alice@10.1.2.3:5062;alias=127.0.0.7~40000~1;ob"
    ctx = run("handle_ruri_alias(); $var(r) = $rc;", invite(ruri=ruri))
    assert ctx.dst_uri == "sip:127.0.0.7:40000" and ctx.rt.vars["r"] == 1
    assert ctx.msg.serialize().startswith(b"INVITE sip:alice@10.1.2.3:5062;ob SIP/2.0\r\n")
    ctx = run("handle_ruri_alias(); $var(r) = $rc;",
              invite(ruri="sip:alice@10.1.2.3:5062;alias=127.0.0.7~5070~2"))
    assert ctx.dst_uri == "sip:127.0.0.7:5070;transport=tcp"
    ctx = run("handle_ruri_alias(); $var(r) = $rc;", invite())
    assert ctx.dst_uri is None and ctx.rt.vars["r"] == 2


def test_add_rr_param_before_and_after_record_route():
    ctx = run('add_rr_param(";nat=yes"); record_route();', invite())
    assert "Record-Route: <sip:127.0.0.1:5060;lr;nat=yes>\r\n" in ctx.msg.serialize().decode()
    ctx = run('record_route(); add_rr_param("nat=yes"); add_rr_param(";x=1");', invite())
    assert "Record-Route: <sip:127.0.0.1:5060;lr;nat=yes;x=1>\r\n" \
        in ctx.msg.serialize().decode()


def test_check_route_param_after_loose_route():
    raw = invite(extra="Route: <sip:127.0.0.1:5060;lr;nat=yes>\r\n").replace(
        b"To: <sip:bob@127.0.0.1>", b"To: <sip:bob@127.0.0.1>;tag=t9")
    ctx = run('loose_route(); if (check_route_param("nat=yes")) { $var(r) = 1; }', raw)
    assert ctx.rt.vars.get("r") == 1


def test_is_first_hop_of_requests():
    ctx = run("if (is_first_hop()) { $var(r) = 1; } else { $var(r) = 2; }", invite())
    assert ctx.rt.vars["r"] == 1
    two = invite(extra="Via: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx\r\n")
    ctx = run("if (is_first_hop()) { $var(r) = 1; } else { $var(r) = 2; }", two)
    assert ctx.rt.vars["r"] == 2


def test_stock_nat_routes_compile():
    # check_route_param/add_rr_param in a route[] that onreply/failure/branch
    # routes call, as Kamailio's stock kamailio.cfg does
    text = HEAD + ('loadmodule "tm.so"\nrequest_route {\n route(NATMANAGE);\n}\n'
                   'route[NATMANAGE] {\n if (is_request() && has_totag() && '
                   'check_route_param("nat=yes")) { setbflag(6); }\n'
                   ' if (is_request() && !has_totag()) { add_rr_param(";nat=yes"); }\n'
                   ' if (is_reply() && is_first_hop()) { set_contact_alias(); }\n}\n'
                   'onreply_route[R] {\n route(NATMANAGE);\n}\n'
                   'failure_route[F] {\n route(NATMANAGE);\n}\n'
                   'branch_route[B] {\n route(NATMANAGE);\n}\n')
    cfg = check_text(text, "t.cfg")
    assert [str(e) for e in cfg.errors] == []


def test_rtpproxy_is_accepted_with_a_warning():
    text = HEAD + ('loadmodule "rtpproxy.so"\n'
                   'modparam("rtpproxy", "rtpproxy_sock", "udp:127.0.0.1:7722")\n'
                   'request_route {\n if (!rtpproxy_manage("co")) { $var(r) = 2; }\n}\n')
    cfg = check_text(text, "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    warn = [w for w in cfg.warnings if "rtpproxy" in w and "media (RTP) is NOT relayed" in w]
    assert warn and warn[0].startswith("t.cfg:8:")
