"""siputils: URI comparison (RFC 3261 19.1.4), R-URI parameters, options_reply."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message
from ser.mods.siputils import aor_equal, options_headers, uri_equal


@pytest.mark.parametrize("a,b,equal", [
    # RFC 3261 19.1.4's own examples of equal URIs
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", True),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", True),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5", True),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com", True),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x", True),
    # ... and of different ones
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp", False),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp", False),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting", False),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4", False),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off", False),
    ("sips:a@b.com", "sip:a@b.com", False),
    ("sip:a@b.com;user=phone", "sip:a@b.com", False),
    ("tel:+1-201-555-0123", "tel:+12015550123", True),
])
def test_rfc3261_uri_comparison(a, b, equal):
    assert uri_equal(a, b) is equal
    assert uri_equal(b, a) is equal


def test_uri_comparison_of_garbage():
    assert uri_equal("sip:@@", "sip:a@b") is None


@pytest.mark.parametrize("a,b,equal", [
    ("sip:bob@biloxi.com", "sip:bob@BILOXI.com:5060;transport=udp", True),
    ("sips:bob@biloxi.com", "sip:bob@biloxi.com", True),
    ("bob@biloxi.com", "sip:bob@biloxi.com", True),        # as Kamailio's example writes it
    ("sip:%62ob@biloxi.com", "sip:bob@biloxi.com", True),
    ("sip:Bob@biloxi.com", "sip:bob@biloxi.com", False),
    ("sip:bob@biloxi.com:5070", "sip:bob@biloxi.com", False),
])
def test_aor_comparison(a, b, equal):
    assert aor_equal(a, b) is equal


HEAD = 'loadmodule "sl.so"\nloadmodule "siputils.so"\nlisten=udp:127.0.0.1:5060\n'
REQ = ("{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n"
       "From: <sip:a@b>;tag=1\r\nTo: <sip:u@example.com>{totag}\r\nCall-ID: c\r\n"
       "CSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n")


def run(body: str, ruri: str = "sip:127.0.0.1", method: str = "OPTIONS",
        totag: str = "") -> Context:
    cfg = check_text(HEAD + "request_route {\n" + body + "\n}\n", "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    raw = REQ.format(m=method, ruri=ruri, totag=totag).encode()
    ctx = Context(parse_message(raw), Runtime(cfg.settings, cfg.modules))
    cfg.routes.request(ctx)
    return ctx


@pytest.mark.parametrize("ruri,method,answered", [
    ("sip:127.0.0.1", "OPTIONS", True),
    ("sip:127.0.0.1:5060;transport=udp", "OPTIONS", True),
    ("sip:alice@127.0.0.1", "OPTIONS", False),
    ("sip:example.com", "OPTIONS", False),
    ("sip:127.0.0.1", "INFO", False),
])
def test_options_reply(ruri, method, answered):
    ctx = run('if (!options_reply()) { $var(no) = 1; }', ruri, method)
    assert (ctx.actions == [("reply", 200, "OK")]) is answered
    assert ("no" in ctx.rt.vars) is not answered


def test_options_headers_follow_the_parameters():
    hs = options_headers({"options_accept": "application/sdp", "options_allow": ""})
    assert hs == ["Accept: application/sdp", "Accept-Encoding: ", "Accept-Language: en",
                  "Supported: "]


def test_uri_params_and_add():
    ctx = run('if (uri_param("lr")) { $var(a) = 1; }'
              'if (uri_param("LR")) { $var(b) = 1; }'
              'if (uri_param("x", "1")) { $var(c) = 1; }'
              'if (!uri_param("x")) { $var(d) = 1; }'
              'if (uri_param_any("x")) { $var(e) = 1; }'
              'add_uri_param("nat=yes");',
              ruri="sip:u@127.0.0.1;lr;x=1?h=v")
    assert sorted(ctx.rt.vars) == ["a", "b", "c", "d", "e"]
    assert ctx.ruri == "sip:u@127.0.0.1;lr;x=1;nat=yes?h=v"
    assert parse_message(ctx.msg.serialize()).ruri == ctx.ruri


def test_tags_kind_and_e164():
    ctx = run('if (has_totag()) { $var(t) = 1; }'
              'if (is_request() && !is_reply()) { $var(r) = 1; }'
              'if (is_uri_user_e164("sip:+4930123456@x")) { $var(e) = 1; }'
              'if (is_uri_user_e164("sip:4930123456@x")) { $var(f) = 1; }',
              totag=";tag=abc")
    assert sorted(ctx.rt.vars) == ["e", "r", "t"]
