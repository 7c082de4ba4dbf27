"""URI parsing (RFC 3261 19.1, RFC 3966)."""

from __future__ import annotations

import pytest

from ser.core.parser import AbsoluteURI, ProtocolError, SipURI, TelURI, parse_uri
from ser.core.parser.abnf import unescape


def test_full_sip_uri():
    u = parse_uri("sips:alice:secret@[2001:db8::10]:5061;transport=tls;lr;maddr=10.0.0.1?subject=x&priority=urgent")
    assert isinstance(u, SipURI)
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips", "alice", "secret", "[2001:db8::10]", 5061)
    assert u.params == {"transport": "tls", "lr": None, "maddr": "10.0.0.1"}
    assert u.headers == {"subject": "x", "priority": "urgent"}
    assert u.transport == "tls" and u.param("LR") == "" and u.param("x") is None
    assert u.hostport == "[2001:db8::10]:5061"
    assert str(u).startswith("sips:alice")


def test_build_round_trip():
    u = parse_uri("sip:bob:pw@example.com:5070;user=phone;lr?h=v")
    assert u.build() == "sip:bob:pw@example.com:5070;user=phone;lr?h=v"
    v = parse_uri(u.build())
    assert (v.user, v.password, v.host, v.port, v.params, v.headers) == (
        "bob", "pw", "example.com", 5070, {"user": "phone", "lr": None}, {"h": "v"})


def test_host_only_and_case():
    u = parse_uri("SIP:Example.COM")
    assert (u.scheme, u.user, u.host, u.port) == ("sip", None, "Example.COM", None)


def test_tel_and_absolute():
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(t, TelURI) and t.number == "+1-201-555-0123"
    assert t.param("phone-context") == "example.com"
    a = parse_uri("urn:service:sos")
    assert isinstance(a, AbsoluteURI) and (a.scheme, a.opaque) == ("urn", "service:sos")


@pytest.mark.parametrize("text", [
    "", "sip:", "sip:@example.com", "sip:a@", "sip:a@exa mple.com", "sip:a@b:99999",
    "sip:a@b;", "sip:a@b?x", "sip:a b@c", "<sip:a@b>", "tel:abc$", "1sip:a@b", "mailto:",
    "sip:a@[::1", "sip:a%zz@b",
])
def test_bad_uris(text):
    with pytest.raises(ProtocolError) as e:
        parse_uri(text)
    assert e.value.status == 400


def test_unescape():
    assert unescape("%41%42c") == "ABc"
    assert unescape("caf%C3%A9") == "caf\u00e9"
    assert unescape("no-escapes") == "no-escapes"
