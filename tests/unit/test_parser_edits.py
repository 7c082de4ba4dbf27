"""Edits are recorded and applied once; replies are built from requests."""

from __future__ import annotations

import pytest

from ser.core.parser import ProtocolError, build_reply, parse_message
from ser.core.parser.reply import default_to_tag

REQ = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK999\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@example.com>;tag=a1\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: c1@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"X-Custom: one\r\n"
    b"x-custom: two\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def test_no_edit_serializes_the_received_bytes():
    assert parse_message(REQ).serialize() == REQ


def test_edits_do_not_change_the_view():
    m = parse_message(REQ)
    m.add_header("X-New", "1")
    m.remove_header("X-Custom")
    assert m.header("x-new") is None
    assert m.headers("x-custom") == ["one", "two"]
    assert m.changed


def test_add_remove_replace_headers():
    m = parse_message(REQ)
    m.add_header("X-New", "1")
    m.add_header("X-First", "0", first=True)
    assert m.remove_header("x-CUSTOM") == 2
    m.replace_header("Max-Forwards", "69")
    out = parse_message(m.serialize(), strict=True)
    assert out.fields()[0] == ("X-First", "0")
    assert out.fields()[-1] == ("X-New", "1") or out.header("x-new") == "1"
    assert out.headers("x-custom") == []
    assert out.max_forwards == 69 and out.count("max-forwards") == 1
    assert out.body == b"hello"


def test_remove_header_ignores_whitespace_and_case_of_the_name():
    """CVE-2020-28361: a header must be removable whatever its name's spelling."""
    raw = REQ.replace(b"X-Custom: one", b"x-cUsToM   : one")
    m = parse_message(raw)
    assert m.count("X-Custom") == 2
    m.remove_header("X-Custom")
    assert b"one" not in m.serialize() and b"two" not in m.serialize()


def test_ruri_via_and_body_edits():
    m = parse_message(REQ)
    m.set_ruri("sip:bob@192.0.2.50:5070")
    m.add_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnew")
    m.set_body(b"a longer body", "text/x-test")
    out = parse_message(m.serialize(), strict=True)
    assert out.ruri == "sip:bob@192.0.2.50:5070"
    assert [v.branch for v in out.vias] == ["z9hG4bKnew", "z9hG4bK111", "z9hG4bK999"]
    assert out.body == b"a longer body"
    assert out.header("content-length") == "13"
    assert out.header("content-type") == "text/x-test" and out.count("content-type") == 1


def test_remove_top_via_of_a_reply_with_combined_via_line():
    raw = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n"
           b"Via: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:b@b>;tag=2\r\n"
           b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    m = parse_message(raw)
    assert m.method == "INVITE"
    m.remove_top_via()
    out = parse_message(m.serialize(), strict=True)
    assert [v.host for v in out.vias] == ["b", "c"]
    m2 = parse_message(out.serialize())
    m2.remove_top_via()
    m2.remove_top_via()
    assert [v.host for v in parse_message(m2.serialize()).vias] == []


def test_edit_arguments_are_checked():
    m = parse_message(REQ)
    with pytest.raises(ValueError):
        m.add_header("Bad Name", "x")
    with pytest.raises(ValueError):
        m.add_header("X", "a\r\nInjected: 1")
    with pytest.raises(ValueError):
        m.set_ruri("sip:a b")


def test_reply_copies_via_from_to_callid_cseq_in_order():
    m = parse_message(REQ)
    raw = build_reply(m, 404, "Not Found", server="ser 0.1")
    r = parse_message(raw, strict=True)
    assert (r.status, r.reason) == (404, "Not Found")
    assert [v.branch for v in r.vias] == ["z9hG4bK111", "z9hG4bK999"]
    assert r.from_.tag == "a1" and r.call_id == "c1@192.0.2.1"
    assert (r.cseq.num, r.cseq.method) == (1, "INVITE")
    assert r.to.tag == default_to_tag(m)
    assert r.header("server") == "ser 0.1"
    assert r.header("record-route") is None        # not on a failure reply
    assert r.header("content-length") == "0" and r.body == b""
    assert r.header("x-custom") is None


def test_reply_tags_and_record_route():
    m = parse_message(REQ)
    assert parse_message(build_reply(m, 100, "Trying")).to.tag is None
    r = parse_message(build_reply(m, 200, "OK", to_tag="xyz", headers=["Contact: <sip:b@h>"]))
    assert r.to.tag == "xyz"
    assert r.header("record-route") == "<sip:p1.example.com;lr>"
    assert r.header("contact") == "<sip:b@h>"
    # the same request (a retransmission) gets the same generated tag
    assert default_to_tag(parse_message(REQ)) == default_to_tag(m)
    tagged = parse_message(REQ.replace(b"To: Bob <sip:bob@example.com>",
                                       b"To: Bob <sip:bob@example.com>;tag=dialog"))
    assert parse_message(build_reply(tagged, 486, "Busy Here")).to.tag == "dialog"


def test_reply_received_and_rport():
    m = parse_message(REQ)
    r = parse_message(build_reply(m, 200, "OK", received="198.51.100.7", rport=40000))
    top = r.vias[0]
    assert (top.received, top.rport) == ("198.51.100.7", "40000")
    assert r.vias[1].received is None
    # no rport requested and the source equals sent-by: nothing added
    raw = REQ.replace(b";rport", b"")
    r = parse_message(build_reply(parse_message(raw), 200, "OK", received="192.0.2.1",
                                  rport=5060))
    assert r.vias[0].received is None and r.vias[0].rport is None


def test_reply_body():
    r = parse_message(build_reply(parse_message(REQ), 200, "OK", body=b"v=0\r\n",
                                  headers=["Content-Type: application/sdp"]))
    assert r.body == b"v=0\r\n" and r.header("content-length") == "5"


def test_reply_to_a_reply_is_refused():
    reply = parse_message(build_reply(parse_message(REQ), 200, "OK"))
    with pytest.raises(TypeError):
        build_reply(reply, 200, "OK")


@pytest.mark.parametrize("raw,status", [
    (b"", None),
    (b"\x00\x01\x02garbage", None),
    (b"INVITE sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n", 400),
    (b"INVITE sip:a@b SIP/3.0\r\nVia: SIP/3.0/UDP h\r\n\r\n", 505),
    (b"INVITE sip:" + b"a" * 9000 + b"@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", 414),
    (b"SIP/2.0 2000 OK\r\n\r\n", None),
    (b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 20000 + b"\r\n", 513),
])
def test_protocol_errors_carry_their_status(raw, status):
    with pytest.raises(ProtocolError) as e:
        parse_message(raw)
    assert e.value.status == status


def test_bare_lf_line_ends_are_accepted():
    m = parse_message(REQ.replace(b"\r\n", b"\n"), strict=True)
    assert m.call_id == "c1@192.0.2.1" and m.body == b"hello"


def test_reply_rport_in_the_middle_and_combined_via_lines():
    raw = REQ.replace(b"branch=z9hG4bK111;rport", b"rport;branch=z9hG4bK111;alias")
    r = parse_message(build_reply(parse_message(raw), 200, "OK", received="198.51.100.7",
                                  rport=40000))
    top = r.vias[0]
    assert (top.rport, top.received, top.branch) == ("40000", "198.51.100.7", "z9hG4bK111")
    assert "alias" in top.params
    raw = REQ.replace(b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111;rport\r\n"
                      b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK999\r\n",
                      b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK111;rport, "
                      b"SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK999\r\n")
    r = parse_message(build_reply(parse_message(raw), 200, "OK", received="198.51.100.7",
                                  rport=40000))
    assert [(v.rport, v.received) for v in r.vias] == [("40000", "198.51.100.7"), (None, None)]


def test_reply_to_a_request_without_via_is_a_protocol_error_without_status():
    raw = b"OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\n" \
          b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ProtocolError) as e:
        build_reply(parse_message(raw), 200, "OK", received="127.0.0.1", rport=5060)
    assert e.value.status is None


def test_content_length_with_odd_whitespace_is_read_as_checked():
    raw = REQ.replace(b"Content-Length: 5", b"Content-Length: 5\x1d")
    m = parse_message(raw)
    assert m.content_length == 5 and m.body == b"hello"


_SHAPES = [
    REQ,
    # folded To line, compact Content-Length with a leading zero (rewritten to 0)
    b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
    b"To: <sip:bob@example.com>\r\n  ;tag=5\r\nl: 00\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
    # bare LF line ends, no Content-Length (one is appended)
    b"BYE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\n"
    b"t: <sip:bob@example.com>;tag=9\nCall-ID: x\nCSeq: 2 BYE\n\n",
    # three Via lines, the first with three values
    b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1 , SIP/2.0/UDP 192.0.2.2,SIP/2.0/UDP 192.0.2.6\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.3\r\nVia: SIP/2.0/TCP 192.0.2.4\r\nTo: <sip:b@example.com>;tag=2\r\n"
    b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    # a reply with a Content-Length smaller than what was received
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.9\r\n"
    b"To: <sip:bob@example.com>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length:  2\r\n\r\nxyz",
]
_EDITS = [
    lambda m: m.add_header("Record-Route", "<sip:192.0.2.5;lr>"),
    lambda m: m.add_via("SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKx"),
    lambda m: m.add_header("X-A", "1", first=True),
    lambda m: m.add_header("X-B", "2"),
    lambda m: m.add_header("content-LENGTH", "7"),
    lambda m: m.add_header("l", "7", first=True),
    lambda m: m.set_ruri("sip:carol@192.0.2.7") if m.is_request else None,
    lambda m: m.remove_header("Call-ID"),
    lambda m: m.remove_header("x-custom"),
    lambda m: m.remove_header("Via"),
    lambda m: m.remove_header("Content-Length"),
    lambda m: m.add_header("X-Custom", "three"),
    lambda m: m.remove_top_via(),
    lambda m: m.remove_top_via(),
    lambda m: m.add_header("Via", "SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKy"),
]


def test_serialize_shortcut_matches_the_general_path(monkeypatch):
    """serialize() joins the received lines when only headers were added and
    the Request-URI set; every edit mix gives the bytes the row-by-row path gives."""
    import random

    from ser.core.parser.msg import SipMessage
    rnd = random.Random(4475)
    cases = []
    for raw in _SHAPES:
        for _ in range(500):
            m = parse_message(raw)
            for edit in rnd.choices(_EDITS, k=rnd.randint(1, 5)):
                edit(m)
            if m.changed:
                cases.append((raw, m, m.serialize()))
    assert sum(SipMessage._serialize_adds(m, m._edits) is not None for _, m, _ in cases) > 100
    monkeypatch.setattr(SipMessage, "_serialize_adds", lambda self, edits: None)
    for raw, m, fast in cases:
        assert fast == m.serialize(), (raw, m._edits)


def test_parsed_uris_and_name_addrs_are_kept_but_errors_are_not():
    from ser.core.parser.hdrs import parse_name_addr
    from ser.core.parser.uri import parse_uri
    a = parse_name_addr('"x;tag=no" <sip:bob@example.com;tag=no>;tag=yes')
    assert a is parse_name_addr('"x;tag=no" <sip:bob@example.com;tag=no>;tag=yes')
    assert a.tag == "yes" and a.display == "x;tag=no"
    assert parse_uri("sip:bob@example.com;transport=tcp") is \
        parse_uri("sip:bob@example.com;transport=tcp")
    for _ in range(2):
        with pytest.raises(ProtocolError):
            parse_name_addr("<sip:bob@exa mple.com>")
        with pytest.raises(ProtocolError) as e:
            parse_uri("sip:", status=416)
        assert e.value.status == 416
