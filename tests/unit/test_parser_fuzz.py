"""Property-based fuzzing: mutated messages only ever give ProtocolError, and
valid messages survive a serialize/parse round trip."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ser.core.parser import ProtocolError, StreamFramer, build_reply, parse_message
from tests.conftest import RFC4475

SEEDS = [p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))]
ATTRS = ("via", "vias", "from_", "to", "call_id", "cseq", "max_forwards", "expires",
         "contacts", "star_contact", "routes", "record_routes", "paths", "authorization",
         "proxy_authorization", "www_authenticate", "proxy_authenticate", "uri", "date")
SPECIAL = [b"\r\n", b"\r\n ", b":", b";", b",", b"<", b">", b'"', b"\\", b"\x00", b"%",
           b"@", b"=", b" ", b"\xff", b"\xc3", b"SIP/2.0", b"Content-Length: 99\r\n",
           b"Via: SIP/2.0/UDP [::1\r\n", b"l: -1\r\n", b"\r\n\r\n"]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(SPECIAL))
        elif op == 2:
            end = pos + draw(st.integers(1, 40))
            del data[pos:end]
        elif op == 3:
            data = data[:pos]
        else:
            line_start = data.rfind(b"\n", 0, pos) + 1
            line_end = data.find(b"\n", pos)
            if line_end > 0:
                data[line_end + 1:line_end + 1] = data[line_start:line_end + 1]
    return bytes(data)


def _exercise(msg):
    for attr in ATTRS:
        try:
            getattr(msg, attr)
        except ProtocolError:
            pass
    msg.fields()
    msg.header("x-anything")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_mutations_only_raise_protocol_errors(data, strict):
    try:
        msg = parse_message(data, strict=strict)
    except ProtocolError as e:
        assert e.status in (None, 400, 413, 414, 505, 513)
        return
    _exercise(msg)
    if msg.is_request:
        try:
            build_reply(msg, 200, "OK")
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(mutated(), st.integers(1, 64))
def test_framer_only_raises_protocol_errors(data, chunk):
    f = StreamFramer()
    try:
        for i in range(0, len(data), chunk):
            for m in f.feed(data[i:i + chunk]):
                try:
                    parse_message(m)
                except ProtocolError:
                    pass
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                                               exclude_characters=",\"<>"),
                                       min_size=1, max_size=30))
def test_round_trip_of_valid_messages(data, value):
    try:
        msg = parse_message(data, strict=True)
    except ProtocolError:
        return
    msg.add_header("X-Fuzz", value)
    out = parse_message(msg.serialize(), strict=True)
    assert out.header("x-fuzz") == value
    expected = msg.fields() + [("X-Fuzz", value)]
    if not msg.has_header("content-length"):
        expected.append(("Content-Length", str(len(msg.body))))
    assert out.fields() == expected
    assert [v.text for v in out.vias] == [v.text for v in msg.vias]
    assert out.call_id == msg.call_id and out.cseq == msg.cseq
    assert out.body == msg.body
    assert (out.method, out.ruri, out.status) == (msg.method, msg.ruri, msg.status)
