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


def _mutants(bases: list[str], alphabet: str, n: int, seed: int):
    """Random small edits (insert, delete, replace) of the base strings."""
    import random
    rnd = random.Random(seed)
    for _ in range(n):
        b = list(rnd.choice(bases))
        for _ in range(rnd.randint(0, 3)):
            i = rnd.randint(0, len(b))
            op = rnd.random()
            if op < 0.4:
                b.insert(i, rnd.choice(alphabet))
            elif b:
                j = min(i, len(b) - 1)
                if op < 0.7:
                    del b[j]
                else:
                    b[j] = rnd.choice(alphabet)
        yield "".join(b)


def _outcome(fn, *args):
    try:
        return fn(*args)
    except ProtocolError:
        return "error"


def test_one_rule_sip_uri_agrees_with_the_rule_by_rule_parse():
    # SIP_URI_SIMPLE takes the common spelling in one match; it must accept
    # nothing the part-by-part parse rejects and give the same parts
    from ser.core.parser.uri import _parse_sip
    bases = ["sip:user@host", "sip:u@1.2.3.4:5060;transport=udp", "sips:a@[::1]:5061;lr",
             "sip:h", "sip:u;x@h;a=b;c", "sip:%41b@h.", "SIP:a@b", "sip:a:pw@h?x=y"]
    accepted = 0
    for text in _mutants(bases, "sip:uUa1@.-_;=%2F[]:?&+$,!~*'()/b5 0x", 30000, 7):
        colon = text.find(":")
        if colon <= 0 or text[:colon].lower() not in ("sip", "sips"):
            continue
        want = _outcome(_parse_sip, text, text[:colon].lower(), colon + 1, 400)
        assert _outcome(parse_uri, text) == want, text
        accepted += want != "error"
    assert accepted > 5000


def test_one_rule_params_agree_with_the_generic_parse():
    from ser.core.parser.hdrs import _parse_params_generic, parse_params
    bases = [";tag=1SIPpTag01", ";expires=3600;q=0.5", ';a="x y";b', ";lr",
             ';+sip.instance="<urn:x>";reg-id=1', " ; a = b"]
    accepted = 0
    for tail in _mutants(bases, ';=aB1-." ,\t%x', 30000, 3):
        text = "<sip:x@y>" + tail
        want = _outcome(_parse_params_generic, text, 9, "header")
        assert _outcome(parse_params, text, 9, "header") == want, text
        accepted += want != "error"
    assert accepted > 5000


def test_quoted_string_rule_matches_what_the_per_character_rule_matched():
    # abnf.QUOTED takes runs of qdtext possessively; same language, same spans
    import random
    import re

    from ser.core.parser import abnf
    per_char = re.compile(rf'"(?:{abnf.QDTEXT}|{abnf.QUOTED_PAIR})*"')
    quoted = re.compile(abnf.QUOTED)
    rnd = random.Random(5)
    for _ in range(50000):
        s = "".join(rnd.choice('a "\\\t\x7f\xe9\udc80\r\n,') for _ in range(rnd.randint(0, 8)))
        for how in ("match", "fullmatch"):
            a, b = getattr(per_char, how)(s), getattr(quoted, how)(s)
            assert (a and a.span()) == (b and b.span()), repr(s)


def test_possessive_via_rule_matches_what_the_backtracking_rule_matched():
    import re

    from ser.core.parser import abnf
    t = abnf.TOKEN
    backtracking = re.compile(
        rf"SIP/2\.0/({t}) ([A-Za-z0-9.\-_]+)(?::({abnf.PORT}))?"
        rf"((?:;{t}(?:=[{abnf.TOKEN_CHARS}:\[\]]+)?)*)")
    bases = ["SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1;rport", "SIP/2.0/TCP h;received=[::1]",
             "SIP/2.0/UDP a.b:123456;x=y=z", "SIP/2.0/TLS h:5061;maddr=1.2.3.4;ttl=1;lr"]
    matched = 0
    for text in _mutants(bases, ";=:a1.-[] \"", 30000, 11):
        a, b = backtracking.fullmatch(text), abnf.VIA_SIMPLE.fullmatch(text)
        assert (a and a.groups()) == (b and b.groups()), text
        matched += a is not None
    assert matched > 5000
