"""Parser benchmark: microseconds per operation (``python -m bench.parser``).

(a) parse a ~500-byte OPTIONS and build its 200 OK, touching only the first
    line, Via, From, To, Call-ID and CSeq (what a stateless reply needs);
(b) parse every header of a 1.2 kB INVITE with SDP (strict mode).
"""

from __future__ import annotations

import time

from ser.core.parser import build_reply, parse_message

OPTIONS = (
    b"OPTIONS sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0;rport\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=12345SIPpTag001\r\n"
    b"To: sut <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-12345@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: <sip:sipp@127.0.0.1:5061>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"User-Agent: sipp/3.6.1 the test tool for sip\r\n"
    b"Accept: application/sdp, text/plain\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n"
    b"Supported: replaces, timer, path\r\n"
    b"Content-Length: 0\r\n\r\n"
)

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:bob@example.com;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK2d4790.1;received=192.0.2.21\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>;expires=3600\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Route: <sip:p2.example.com;lr>, <sip:p3.example.com;lr>\r\n"
    b'Proxy-Authorization: Digest username="alice", realm="example.com", '
    b'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:bob@example.com", qop=auth, '
    b'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    b'opaque="5ccc069c403ebaf9f0171e9517f40e41"\r\n'
    b"Expires: 120\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: Example Phone 1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


_WANT = {"via": 1, "v": 1, "from": 1, "f": 1, "to": 1, "t": 1, "call-id": 1, "i": 1, "cseq": 1}


def bare_loop() -> bytes:
    """The same job with no structure at all: the floor (a) is measured against."""
    data = OPTIONS
    i = data.find(b"\r\n\r\n")
    lines = data[:i].decode("latin-1").split("\r\n")
    lines[0].split(" ")
    out = ["SIP/2.0 200 OK"]
    for ln in lines[1:]:
        c = ln.find(":")
        if ln[:c].strip().lower() in _WANT:
            out.append(ln)
    out.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(out).encode("latin-1")


def options_reply() -> bytes:
    msg = parse_message(OPTIONS)
    assert msg.method == "OPTIONS"
    msg.via  # noqa: B018 - the top Via, as a reply needs it
    return build_reply(msg, 200, "OK", server="ser")


def invite_all() -> None:
    parse_message(INVITE, strict=True)


def measure(fn, seconds: float = 1.0) -> float:
    """Best of five runs, microseconds per call."""
    n = 1000
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > seconds / 5:
            break
        n *= 2
    best = dt
    for _ in range(4):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ours = measure(options_reply)
    bare = measure(bare_loop)
    print(f"parser: OPTIONS ({len(OPTIONS)} B) parse + 200 OK : "
          f"{ours:6.2f} us   (target <= 10; a bare loop doing the same: {bare:.2f} us, "
          f"ratio {ours / bare:.2f})")
    print(f"parser: INVITE ({len(INVITE)} B) every header     : {measure(invite_all):6.2f} us")


if __name__ == "__main__":
    main()
