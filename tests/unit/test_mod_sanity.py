"""sanity: every check on crafted messages and the RFC 4475 corpus, through
check_message() and through a compiled script (no sockets: replies are recorded)."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message
from ser.mods import sanity
from ser.mods.sanity import Opts, check_message, parse_supported
from tests.conftest import rfc4475

BASE = ("OPTIONS sip:u@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:u@example.com>\r\n"
        "Call-ID: c1@x\r\n"
        "CSeq: 1 OPTIONS\r\n")


def msg(extra: str = "", *, base: str = BASE, body: bytes = b"", cl: int | None = None,
        replace: tuple[str, str] | None = None) -> object:
    text = base + extra + f"Content-Length: {len(body) if cl is None else cl}\r\n\r\n"
    if replace:
        text = text.replace(*replace)
    return parse_message(text.encode() + body)


def fails(m, checks: int, uri_checks: int = 7, supported: str = "") -> tuple | None:
    found = check_message(m, checks, Opts(uri_checks, parse_supported(supported)))
    if found is None:
        return None
    name, f = found
    return name, f.status, f.reason


@pytest.mark.parametrize("checks,uris,kw,want", [
    (1, 7, {"replace": ("SIP/2.0\r\nVia", "SIP/2.0 \r\nVia")}, (400, "Bad Request Line")),
    (2, 7, {"replace": ("sip:u@example.com SIP", "im:u@example.com SIP")},
     (416, "Unsupported URI Scheme in Request URI")),
    (2, 7, {"replace": ("sip:u@example.com SIP", "urn:service:sos SIP")}, None),
    (2, 7, {"replace": ("sip:u@example.com SIP", "sip:u@x?a=b SIP")}, (400, "Bad Request URI")),
    (4, 7, {"replace": ("Call-ID: c1@x\r\n", "")}, (400, "Missing Required Header in Request")),
    (4, 7, {"extra": "Call-ID: c2@x\r\n"}, (400, "Duplicate Call-ID Header")),
    (4, 7, {"replace": ("To: <sip:u@example.com>", "To: <sip:u@example.com")},
     (400, "Bad To Header")),
    (4, 7, {"replace": ("CSeq: 1 OPTIONS", "CSeq: OPTIONS")}, (400, "Bad CSeq Header")),
    (4, 7, {"replace": ("SIP/2.0/UDP 10.0.0.1", "SIP/2.0/UDP")}, (None, "")),
    (32, 7, {"replace": ("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")},
     (400, "CSeq method does not match request method")),
    (64, 7, {"replace": ("CSeq: 1 OPTIONS", "CSeq: 4294967296 OPTIONS")},
     (400, "CSeq number is illegal")),
    (64, 7, {"replace": ("CSeq: 1 OPTIONS", "CSeq: 4294967295 OPTIONS")}, None),
    (128, 7, {"body": b"abc", "cl": 1}, (400, "Content-Length mis-match")),
    (128, 7, {"body": b"abc"}, None),
    (256, 7, {"extra": "Expires: -1\r\n"}, (400, "Expires value is illegal")),
    (256, 7, {"extra": "Expires: 0\r\n"}, None),
    (512, 7, {"extra": "Proxy-Require: foo\r\n"}, (420, "Bad Proxy Require Extension")),
    (512, 7, {"extra": "Proxy-Require: bar\r\nProxy-Require: bar\r\n"}, None),
    (1024, 1, {"replace": ("sip:u@example.com SIP", "sip:u@[::1 SIP")},
     (400, "Bad Request URI")),
    (1024, 2, {"replace": ("From: <sip:a@example.com>", "From: <http://a/>")},
     (400, "Invalid From Header")),
    (1024, 8, {"extra": "Contact: <sip:c@x>, <data:x>\r\n"}, (400, "Bad Contact URI")),
    (1024, 8, {"extra": "Contact: *\r\n"}, None),
    (2048, 7, {"extra": 'Proxy-Authorization: Digest username="a", realm="r", nonce="n", '
                        'uri="sip:x", response="r", qop=auth\r\n'},
     (400, "Bad Auth Credentials")),
    (2048, 7, {"extra": "Authorization: Bearer abc\r\n"}, (None, "")),
    (8192, 7, {"extra": "Authorization: Bearer abc\r\n"}, None),
    (4096, 7, {"replace": ("tag=1", "tag=1;TAG=2")}, (400, "Many From Tag Params")),
    (16384, 7, {"replace": ("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n", "")}, (None, "")),
    (8 | 16, 7, {"replace": ("SIP/2.0/UDP", "SIP/3.0/UDP")}, None),      # disabled
])
def test_each_check(checks, uris, kw, want):
    got = fails(msg(**kw), checks, uris, "foo-not, bar")
    assert (got[1:] if got else None) == want


def test_default_checks_are_kamailios():
    assert sanity.DEFAULT_CHECKS == 1 + 2 + 4 + 32 + 64 + 128 + 256 + 512 + 2048 == 3047
    assert fails(msg(), sanity.ALL_CHECKS, 15) is None


def test_unsupported_lists_every_unknown_tag():
    name, f = check_message(msg("Proxy-Require: a, foo, b, a\r\n"), 512,
                            Opts(supported=parse_supported(" foo ,bar")))
    assert (name, f.headers) == ("proxy_require", ("Unsupported: a, b",))


def test_checks_run_in_bit_order():
    m = msg("Proxy-Require: x\r\n", replace=("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"))
    assert fails(m, 3047)[0] == "cseq_method"


def test_replies_skip_request_only_checks():
    reply = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n"
                          b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
                          b"CSeq: 1 FOO\r\nProxy-Require: nope\r\nContent-Length: 0\r\n\r\n")
    assert fails(reply, sanity.ALL_CHECKS, 15) is None
    bad = parse_message(reply.raw.replace(b"CSeq: 1 FOO", b"CSeq: x FOO"))
    assert fails(bad, 64)[:2] == ("cseq_value", 400)


@pytest.mark.parametrize("name,want", [
    ("wsinv", None), ("intmeth", None), ("esc02", None), ("longreq", None),
    ("bext01", 420), ("unkscm", 416), ("novelsc", 416), ("mismatch01", 400),
    ("scalar02", 400), ("insuf", 400), ("multi01", 400), ("trws", 400), ("lwsstart", 400),
    ("escruri", 400), ("badaspec", 400), ("regaut01", "drop"), ("badinv01", "drop"),
])
def test_rfc4475_default_checks(name, want):
    found = check_message(parse_message(rfc4475(name)))
    if want is None:
        assert found is None, found
    else:
        assert found is not None
        assert found[1].status == (None if want == "drop" else want), found


HEAD = 'loadmodule "sl.so"\nloadmodule "sanity.so"\n'


def run(body: str, raw: bytes, params: str = "", kind: str = "request") -> tuple[Context, int]:
    cfg = check_text(HEAD + params + f"{kind}_route {{\n{body}\n}}\n", "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    ctx = Context(parse_message(raw), Runtime(cfg.settings, cfg.modules))
    rc = cfg.routes.run(kind, "", ctx)
    return ctx, rc


BAD = msg(replace=("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")).raw


def test_script_autodrop_answers_and_stops():
    ctx, rc = run('sanity_check(); sl_send_reply("200", "OK");', BAD)
    assert rc == 0 and ctx.actions == [("reply", 400, "CSeq method does not match request method")]


def test_script_no_autodrop_returns_false_and_noreply():
    params = 'modparam("sanity", "autodrop", 0)\nmodparam("sanity", "noreply", 1)\n'
    ctx, _ = run('if (!sanity_check("32")) { sanity_reply(); exit; }\n'
                 'sl_send_reply("200", "OK");', BAD, params)
    assert ctx.actions == [("reply", 400, "CSeq method does not match request method")]
    ctx, _ = run('if (!sanity_check("64")) { exit; } sl_send_reply("200", "OK");', BAD, params)
    assert ctx.actions == [("reply", 200, "OK")]


def test_script_reply_is_dropped_never_answered():
    reply = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\nCSeq: 1 X\r\n\r\n"
    ctx, rc = run("sanity_check();", reply, kind="reply")
    assert rc == 0 and ctx.dropped and ctx.actions == []


def test_bad_parameters_are_refused():
    cfg = check_text(HEAD + 'modparam("sanity", "default_checks", 40000)\n'
                     'request_route { sanity_check(); }\n', "t.cfg")
    assert any("default_checks" in str(e) for e in cfg.errors)
