"""textopsx: msg_apply_changes, remove_body, keep_hf, fnmatch."""

from __future__ import annotations

import pytest

from ser.core.cfg.runtime import Context, Runtime, ScriptExit
from ser.core.parser import parse_message
from ser.core.posixre import posix_re
from ser.mods import textopsx as x

RAW = (b"MESSAGE sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx\r\n"
       b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:u@example.com>\r\nCall-ID: abc\r\n"
       b"CSeq: 1 MESSAGE\r\nX-Keep: 1\r\nSubject: s\r\nContent-Type: text/plain\r\n"
       b"Content-Length: 2\r\n\r\nhi")


def ctx() -> Context:
    return Context(parse_message(RAW), Runtime())


def test_msg_apply_changes_makes_edits_readable():
    c = ctx()
    c.msg.add_header("X-New", "1")
    assert not c.msg.has_header("X-New")
    assert x.msg_apply_changes(c) == 1
    assert c.msg.header("X-New") == "1" and not c.msg.changed


def test_msg_apply_changes_stops_on_a_broken_result():
    c = ctx()
    c.msg.replace_header("Content-Length", "x")   # serialize() fixes it: still parses
    assert x.msg_apply_changes(c) == 1
    c.msg._edit("add", "Bad Name", "v", False)     # an edit that cannot parse
    with pytest.raises(ScriptExit):
        x.msg_apply_changes(c)


def test_remove_body_and_keep_hf():
    c = ctx()
    assert x.remove_body(c) == 1
    assert x.keep_hf(c, posix_re("^x-k")) == 1
    out = c.msg.serialize().decode()
    assert "X-Keep: 1" in out and "Subject" not in out and "Content-Type: text/plain" in out
    assert out.endswith("Content-Length: 0\r\n\r\n")
    c = ctx()
    x.keep_hf(c)
    assert "X-Keep" not in c.msg.serialize().decode()


def test_fnmatch():
    c = ctx()
    assert x.fnmatch(c, "12345", "123*") == 1
    assert x.fnmatch(c, "abc", "A?C") == -1 and x.fnmatch(c, "abc", "A?C", "i") == 1
