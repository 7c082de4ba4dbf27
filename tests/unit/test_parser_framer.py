"""The stream framer: any chunking of the byte stream gives the same messages."""

from __future__ import annotations

import random

import pytest

from ser.core.parser import ProtocolError, StreamFramer, parse_message
from tests.conftest import RFC4475


def _stream_corpus() -> dict[str, bytes]:
    """Corpus messages that are exactly one message with a Content-Length."""
    out = {}
    for p in sorted(RFC4475.glob("*.dat")):
        data = p.read_bytes()
        try:
            m = parse_message(data)
        except ProtocolError:
            continue
        if m.has_header("content-length") and m.serialize() == data:
            out[p.stem] = data
    return out


STREAM = _stream_corpus()


def test_stream_corpus_is_substantial():
    assert len(STREAM) >= 30
    assert {"wsinv", "longreq", "esc01", "mpart01", "unreason"} <= set(STREAM)


@pytest.mark.parametrize("name", sorted(STREAM))
def test_every_split_point_gives_the_same_message(name):
    data = STREAM[name]
    for k in range(len(data) + 1):
        f = StreamFramer()
        got = f.feed(data[:k]) + f.feed(data[k:])
        assert got == [data], k
        assert f.pending == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_chunks_of_a_stream_of_messages(seed):
    rnd = random.Random(seed)
    names = sorted(STREAM)
    msgs = [STREAM[rnd.choice(names)] for _ in range(12)]
    stream = b""
    pings = 0
    for m in msgs:
        if rnd.random() < 0.3:
            stream += b"\r\n\r\n"          # RFC 5626 keep-alive ping
            pings += 1
        stream += m
    f = StreamFramer()
    got: list[bytes] = []
    i = 0
    while i < len(stream):
        n = rnd.randint(1, 700)
        got += f.feed(stream[i:i + n])
        i += n
    assert got == msgs
    assert f.pings == pings


def test_keepalive_split_across_reads():
    f = StreamFramer()
    for b in (b"\r", b"\n", b"\r", b"\n"):
        assert f.feed(b) == []
    assert f.pings == 1 and f.pending == 0


def test_missing_content_length_is_an_error():
    f = StreamFramer()
    with pytest.raises(ProtocolError) as e:
        f.feed(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
    assert e.value.status == 400


@pytest.mark.parametrize("value", [b"-5", b"abc", b"99999999999", b"1 2"])
def test_bad_content_length_is_an_error(value):
    f = StreamFramer()
    with pytest.raises(ProtocolError):
        f.feed(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: " + value + b"\r\n\r\n")


def test_conflicting_content_lengths():
    with pytest.raises(ProtocolError):
        StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab")


def test_oversized_header_block_and_body():
    f = StreamFramer(max_size=1000)
    with pytest.raises(ProtocolError) as e:
        f.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    assert e.value.status == 513
    f = StreamFramer(max_size=1000)
    with pytest.raises(ProtocolError) as e:
        f.feed(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n")
    assert e.value.status == 513


def test_compact_content_length_and_waiting_for_body():
    f = StreamFramer()
    head = b"MESSAGE sip:a@b SIP/2.0\r\nl: 5\r\n\r\n"
    assert f.feed(head + b"hel") == []
    assert f.feed(b"lo") == [head + b"hello"]


def test_whole_messages_before_a_broken_stream_are_returned_first():
    head = b"MESSAGE sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhi"
    f = StreamFramer()
    assert f.feed(head + b"OPTIONS sip:a@b SIP/2.0\r\nl: x\r\n\r\n") == [head]
    with pytest.raises(ProtocolError):
        f.feed(b"")


def test_no_content_length_with_accept_no_cl():
    get = b"GET /RPC HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(ProtocolError):
        StreamFramer().feed(get)
    f = StreamFramer(accept_no_cl=True)
    assert f.feed(get + get[:10]) == [get]
    assert f.pending == 10
    msg = parse_message(get)
    assert msg.http_version == "HTTP/1.1" and msg.method == "GET" and msg.ruri == "/RPC"
    assert parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n") \
        .http_version is None


def test_content_length_is_read_only_from_header_lines_that_are_it():
    # lookalikes elsewhere in a line or in another header's name do not count;
    # case, the compact form, bare-LF lines and equal repeats do
    head = (b"MESSAGE sip:a@b SIP/2.0\r\nX-Content-Length: 9\r\nSubject: l: 7\r\n"
            b"Lx: 8\nCONTENT-length :  3 \nL:3\r\n\r\n")
    f = StreamFramer()
    assert f.feed(head + b"abc" + head[:20]) == [head + b"abc"]
    assert f.pending == 20
    with pytest.raises(ProtocolError) as e:
        StreamFramer().feed(b"MESSAGE sip:a@b SIP/2.0\r\nX-Content-Length: 0\r\n\r\n")
    assert "missing Content-Length" in e.value.reason


def test_a_message_that_arrives_whole_after_a_partial_one_is_cut_the_same():
    msg = b"MESSAGE sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhi"
    f = StreamFramer()
    assert f.feed(msg) == [msg]
    assert f.pending == 0
    assert f.feed(msg[:7]) == []
    assert f.feed(msg[7:] + msg + b"\r\n\r\n" + msg[:3]) == [msg, msg]
    assert (f.pings, f.pending) == (1, 3)
