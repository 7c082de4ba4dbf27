"""counters: the script_counter declaration syntax."""

from __future__ import annotations

import pytest

from ser.mods.counters import DEFAULT_DESC, parse_decl


@pytest.mark.parametrize("text,want", [
    ("foo", ("script", "foo", DEFAULT_DESC)),
    ("test.bar", ("test", "bar", DEFAULT_DESC)),
    ("baz example counter", ("script", "baz", "example counter")),
    ("test.x:another example", ("test", "x", "another example")),
    ("out.reqs  forwarded requests", ("out", "reqs", "forwarded requests")),
])
def test_declarations(text, want):
    assert parse_decl(text, "script") == want


@pytest.mark.parametrize("text", ["", "a.b.c", "x/y", ".name"])
def test_bad_declarations(text):
    with pytest.raises(ValueError):
        parse_decl(text, "script")
