"""textops: POSIX regexes, sed-like substitutions, text edits turned back into edits."""

from __future__ import annotations

import re

import pytest

from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message
from ser.core.posixre import posix_re
from ser.mods import textops as t

RAW = (b"INVITE sip:123@example.com SIP/2.0\r\n"
       b"Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx\r\n"
       b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:c@example.com>\r\n"
       b"X-Foo  : bar\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\nPrivacy: id;header\r\n"
       b"Content-Type: application/sdp\r\nContent-Length: 13\r\n\r\no=hello world")


def ctx() -> Context:
    return Context(parse_message(RAW), Runtime())


def sent(c: Context) -> str:
    return c.msg.serialize().decode()


def test_posix_classes_and_flags():
    assert posix_re("[[:digit:]]+@").search("sip:123@x")
    assert posix_re("^call-id").search("To: x\nCall-ID: y")      # icase, multiline
    with pytest.raises(re.error):
        posix_re("[[:nosuch:]]")


def test_parse_subst_groups_flags_and_escapes():
    s = t.parse_subst(r"/a(b+)c/X\1Y/g")
    assert s.apply("abbc-abc") == ("XbbY-XbY", 2)
    assert t.parse_subst("|x|y|").apply("xx") == ("yx", 1)
    assert t.parse_subst(r"/^.*$/<\0>/").apply("uri") == ("<uri>", 1)
    assert t.parse_subst("/^.*$/<\0>/").apply("uri") == ("<uri>", 1)    # the script's "\0"
    assert t.parse_subst(r"/x/\u/").apply("x", "sip:r@h") == ("sip:r@h", 1)
    assert t.parse_subst("/A/b/i").apply("a") == ("b", 1)
    assert t.parse_subst(r"/a\/b/c/").apply("a/b") == ("c", 1)
    for bad in ("/a/b", "/a/b/q", "/(/x/", r"/a/\2/"):
        with pytest.raises(ValueError):
            t.parse_subst(bad)


def test_append_insert_remove_positions():
    c = ctx()
    assert t.remove_hf(c, "x-foo") == 1 and t.remove_hf(c, "X-None") == -1
    assert t.append_hf(c, "A: 1\r\nB: 2\r\n", "From") == 1
    assert t.insert_hf(c, "Z: 0\r\n", "call-id") == 1
    assert t.append_hf(c, "no colon here\r\n") == -1
    names = [ln.split(":")[0] for ln in sent(c).split("\r\n\r\n")[0].split("\r\n")[1:]]
    assert names == ["Via", "From", "A", "B", "To", "Z", "Call-ID", "CSeq", "Privacy",
                     "Content-Type", "Content-Length"]


def test_text_edits_become_ruri_header_and_body_edits():
    c = ctx()
    assert t.replace_all(c, posix_re("example.com"), "example.org") == 1
    assert t.subst_body(c, t.parse_subst(r"/hello (.*)/bye \1!/")) == 1
    out = sent(c)
    assert out.startswith("INVITE sip:123@example.org SIP/2.0\r\n")
    assert c.ruri == "sip:123@example.org"
    assert "From: <sip:a@example.org>;tag=1" in out
    assert out.endswith("Content-Length: 12\r\n\r\no=bye world!")
    assert t.replace(c, posix_re("^INVITE"), "BYE") == -1        # the method stays


def test_subst_user_and_uri():
    c = ctx()
    assert t.subst_user(c, t.parse_subst("/^1/9/")) == 1
    assert c.ruri == "sip:923@example.com"
    assert t.subst_uri(c, t.parse_subst("/example/test/")) == 1
    assert sent(c).startswith("INVITE sip:923@test.com SIP/2.0")
    assert t.subst_uri(c, t.parse_subst("/nomatch/x/")) == -1


def test_conditions():
    c = ctx()
    assert t.is_privacy(c, "HEADER") == 1 and t.is_privacy(c, "user") == -1
    assert t.has_body(c) == 1 and t.has_body(c, "application/sdp") == 1
    assert t.has_body(c, "text/plain") == -1
    assert t.search(c, posix_re("[[:digit:]]{3}@")) == 1
    assert t.search_body(c, posix_re("^o=")) == 1
    assert t.is_present_hf_re(c, posix_re("^x-f")) == 1
    assert t.remove_hf_re(c, posix_re("^(x-|priv)")) == 1
    assert "Privacy" not in sent(c) and "X-Foo" not in sent(c)
    assert t.in_list(c, "fi", "dk,fi", ",") == 1 and t.in_list(c, "f", "dk,fi", ",") == -1
    assert t.in_list_prefix(c, "final", "dk,fi", ",") == 1
    assert (t.cmp_str(c, "a", "a"), t.cmp_str(c, "b", "a"), t.cmp_str(c, "a", "b")) == (1, -1, -2)
    assert t.cmp_istr(c, "A", "a") == 1
    assert t.starts_with(c, "+358123", "+358") == 1 and t.ends_with(c, "abc", "bc") == 1


def test_search_append_after_the_first_match():
    c = ctx()
    assert t.search_append(c, posix_re("^CSeq: 1 INVITE"), ";x") == 1
    assert "CSeq: 1 INVITE;x\r\n" in sent(c)
