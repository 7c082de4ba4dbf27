"""topoh: the codec and the masking of whole messages, both directions."""

from __future__ import annotations

import pytest

from ser.core.module import ModuleInstance
from ser.core.parser import parse_message
from ser.mods import topoh

INVITE = (
    b"INVITE sip:bob@192.168.5.7:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy1\r\n"
    b"Via: SIP/2.0/UDP 172.16.0.9:5062;branch=z9hG4bKuac;rport=5062;received=172.16.0.9\r\n"
    b"Record-Route: <sip:10.0.0.1:5060;lr;ftag=ft1>\r\n"
    b"From: <sip:alice@172.16.0.9>;tag=ft1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: abc123@172.16.0.9\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: \"Alice\" <sip:alice@172.16.0.9:5062;transport=udp>;expires=60\r\n"
    b"Max-Forwards: 69\r\n"
    b"Content-Length: 0\r\n\r\n")


def make(**kw) -> topoh.Topoh:
    inst = ModuleInstance(topoh.exports, ("<test>", 0, 0))
    inst.params.update({"mask_key": "my secret here", "mask_ip": "10.1.1.10", **kw})
    topoh.child_init(inst, 1)
    return inst.state["topoh"]


@pytest.mark.parametrize("text", ["", "a", "sip:alice@172.16.0.9:5062;transport=udp",
                                  "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx\nsecond",
                                  "é" * 300])
def test_codec_round_trip_and_alphabet(text):
    c = topoh.Codec("k")
    enc = c.encode(text)
    assert enc == c.encode(text)               # deterministic
    assert topoh._TOKEN.fullmatch(enc)
    assert c.decode(enc) == text


def test_codec_rejects_foreign_key_and_tampering():
    enc = topoh.Codec("k1").encode("sip:10.0.0.1")
    with pytest.raises(topoh.DecodeError):
        topoh.Codec("k2").decode(enc)
    flipped = enc[:-2] + ("A" if enc[-2] != "A" else "B") + enc[-1]
    with pytest.raises(topoh.DecodeError):
        topoh.Codec("k1").decode(flipped)
    with pytest.raises(topoh.DecodeError):
        topoh.Codec("k1").decode("!!")


def test_request_masked_then_reply_unmasked():
    th = make(mask_callid=1)
    out = th.mask(INVITE)
    text = out.decode()
    hiding = [ln for ln in text.split("\r\n")
              if ln.split(":")[0] in ("Via", "Record-Route", "Contact", "Call-ID")]
    for hidden in ("10.0.0.1", "172.16.0.9"):
        assert not any(hidden in ln for ln in hiding), text
    msg = parse_message(out, strict=True)
    assert len(msg.vias) == 1 and msg.via.host == "10.1.1.10"
    assert msg.via.branch == "z9hG4bKproxy1"
    assert msg.record_routes[0].uri.host == "10.1.1.10"
    assert "lr" in msg.record_routes[0].uri.params
    assert msg.contacts[0].uri.host == "10.1.1.10"
    assert msg.contacts[0].params.get("expires") == "60"
    assert msg.call_id.startswith("!!:")
    # another node with the same key decodes the callee's reply
    reply = text.replace("INVITE sip:bob@192.168.5.7:5070 SIP/2.0",
                         "SIP/2.0 200 OK").replace(
        "Contact: \"Alice\"", "X-Old-Contact: \"Alice\"").replace(
        "CSeq: 1 INVITE", "CSeq: 1 INVITE\r\nContact: <sip:bob@192.168.5.7:5070>")
    back = parse_message(make(mask_callid=1).unmask(reply.encode()))
    assert [v.text for v in back.vias] == [
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy1",
        "SIP/2.0/UDP 172.16.0.9:5062;branch=z9hG4bKuac;rport=5062;received=172.16.0.9"]
    assert back.header("record-route") == "<sip:10.0.0.1:5060;lr;ftag=ft1>"
    assert back.call_id == "abc123@172.16.0.9"
    # going on to the caller: Call-ID clear, Contact and Record-Route masked
    relayed = parse_message(th.mask(back.serialize()))
    assert relayed.call_id == "abc123@172.16.0.9"
    assert relayed.contacts[0].uri.host == "10.1.1.10"
    assert relayed.record_routes[0].uri.host == "10.1.1.10"


def test_in_dialog_request_unmasked_and_callid_direction():
    th = make(mask_callid=1)
    masked = parse_message(th.mask(INVITE))
    rr = masked.header("record-route")
    contact_uri = str(masked.contacts[0].uri)
    cid = masked.call_id
    # the callee's BYE toward the caller: masked R-URI, Route, Call-ID
    bye = (f"BYE {contact_uri} SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 192.168.5.7:5070;branch=z9hG4bKbye\r\n"
           f"Route: {rr}\r\n"
           "From: <sip:bob@example.com>;tag=tt\r\nTo: <sip:alice@172.16.0.9>;tag=ft1\r\n"
           f"Call-ID: {cid}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    clear = parse_message(th.unmask(bye))
    assert clear.ruri == "sip:alice@172.16.0.9:5062;transport=udp"
    assert clear.header("route") == "<sip:10.0.0.1:5060;lr;ftag=ft1>"
    assert clear.call_id == "abc123@172.16.0.9"
    # forwarded (our Via on top) toward the caller: the Call-ID stays clear
    clear.remove_header("Route")
    clear.add_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKp2")
    fwd = parse_message(th.mask(clear.serialize()))
    assert fwd.call_id == "abc123@172.16.0.9"
    assert len(fwd.vias) == 1 and "192.168.5.7" not in fwd.via.text
    # the caller's 200 goes back to the callee masked, without the marker
    ok = (f"SIP/2.0 200 OK\r\nVia: {fwd.via.text};received=172.16.0.9\r\n"
          "From: <sip:bob@example.com>;tag=tt\r\nTo: <sip:alice@172.16.0.9>;tag=ft1\r\n"
          "Call-ID: abc123@172.16.0.9\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    back = parse_message(th.unmask(ok))
    assert topoh.MARK in back.vias[1].text
    back.remove_top_via()
    out = parse_message(th.mask(back.serialize()))
    assert out.call_id == cid
    assert topoh.MARK not in out.via.text
    assert out.via.text == "SIP/2.0/UDP 192.168.5.7:5070;branch=z9hG4bKbye"


def test_foreign_masked_value_dropped_only_with_sanity_checks():
    bye = (b"BYE sip:10.1.1.10;line=sr-AAAAAAAAAAAAAAAA SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 192.168.5.7:5070;branch=z9hG4bKbye\r\n"
           b"From: <sip:b@x>;tag=1\r\nTo: <sip:a@y>;tag=2\r\nCall-ID: c\r\n"
           b"CSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n")
    assert make().unmask(bye) == bye
    assert make(sanity_checks=1).unmask(bye) is None


def test_garbage_and_unmasked_messages_pass_unchanged():
    th = make()
    assert th.unmask(b"not sip at all") == b"not sip at all"
    assert th.unmask(INVITE) == INVITE


def test_vparam_branch_is_refused():
    assert topoh._vparam("branch")
    assert topoh._vparam("vsr") is None
