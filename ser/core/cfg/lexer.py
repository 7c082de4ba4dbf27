"""Lexer of Kamailio's native configuration language.

Theory of operation: :class:`Lexer` scans ONE source text (a file, or the
value of a ``#!define``) and hands out :class:`Token` objects one at a time
through :meth:`Lexer.next`. Every token carries the (file, line, column) it
was written at. Preprocessor directives (``#!define ...`` or ``!!define``)
come out as a single ``DIR`` token holding the directive name and the rest of
its line; the preprocessor (``preproc.py``) acts on them and may switch the
lexer into *skipping* mode, in which everything but the ``#!if*``/``#!else``/
``#!endif`` lines of a disabled conditional block is passed over unread (so a
disabled block may hold anything, as in Kamailio).

Token kinds::

    ID    identifier or keyword          value: str
    NUM   decimal or 0x hex integer      value: int
    STR   "..." or '...' (unescaped)     value: str
    PV    $name, $name(inner)[idx], $(...)  value: the raw text
    IP4   a.b.c.d or a.b.c.d/len         value: str as written
    IP6   [v6], bare v6, v6/len          value: str without brackets
    OP    operator or punctuation        value: str
    DIR   preprocessor directive         value: (name, rest, rest_pos)
    EOF   end of text
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ser.core.cfg.errors import CfgError, Pos

DIRECTIVES = frozenset({
    "define", "def", "ifdef", "ifndef", "else", "endif", "trydef", "trydefine",
    "redefine", "redef", "subst", "substdef", "substdefs", "include_file",
    "import_file",
})
MARKERS = frozenset({"KAMAILIO", "SER", "OPENSER", "MAXCOMPAT", "ALL"})
CONDITIONALS = frozenset({"ifdef", "ifndef", "else", "endif"})

# Longest first, so that "==" wins over "=".
_OPERATORS = (
    "==", "!=", "<=", ">=", "=~", "!~", "&&", "||", "+=",
    "!", "<", ">", "+", "-", "*", "/", "%", "|", "&", "^", "~", "=",
    "(", ")", "{", "}", "[", "]", ",", ";", ":", ".",
)

_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUM = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_IP4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?(?![0-9A-Za-z_.])")
_IP6 = re.compile(
    r"(?:[0-9a-fA-F]{0,4}:){2,7}(?:[0-9a-fA-F]{1,4}|[0-9]{1,3}(?:\.[0-9]{1,3}){3})?"
    r"(?:/[0-9]{1,3})?(?![0-9A-Za-z_:])")
_IP6_BRACKET = re.compile(r"\[([0-9a-fA-F:.]+)\](?:/([0-9]{1,3}))?")
_PVNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: Any
    pos: Pos
    text: str = ""          # the source text of the token (for messages, host names)
    space_before: bool = True
    origin: Pos | None = None   # where a #!define that produced this token was defined

    def __repr__(self) -> str:
        return f"Token({self.kind}, {self.value!r}, {self.pos[1]}:{self.pos[2]})"


def _is_ip6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class Lexer:
    """Scans one text; :meth:`next` returns the next token, EOF forever at the end.

    Lexical errors are appended to ``errors`` and scanning goes on.
    """

    def __init__(self, text: str, file: str, line: int = 1, col: int = 1) -> None:
        self.text = text
        self.file = file
        self.i = 0
        self.line = line
        self.line_start = -(col - 1)   # column of text[i] is i - line_start + 1
        self.errors: list[CfgError] = []
        self.skipping = False

    # -- helpers -------------------------------------------------------------
    def _pos(self, i: int | None = None) -> Pos:
        i = self.i if i is None else i
        return (self.file, self.line, i - self.line_start + 1)

    def _advance_to(self, j: int) -> None:
        """Move to index j, counting the newlines passed over."""
        text = self.text
        nl = text.count("\n", self.i, j)
        if nl:
            self.line += nl
            self.line_start = text.rindex("\n", self.i, j) + 1
        self.i = j

    def _rest_of_line(self, j: int, continuation: bool) -> tuple[int, str]:
        """The text from j to the end of line (joining '\\'-continued lines)."""
        text = self.text
        parts = []
        while True:
            end = text.find("\n", j)
            if end < 0:
                end = len(text)
            chunk = text[j:end]
            if continuation and chunk.rstrip().endswith("\\") and end < len(text):
                parts.append(chunk.rstrip()[:-1])
                j = end + 1
                continue
            parts.append(chunk)
            return end, "\n".join(parts)

    def _at_line_start(self, i: int) -> bool:
        k = i - 1
        while k >= 0 and self.text[k] in " \t\r":
            k -= 1
        return k < 0 or self.text[k] == "\n"

    # -- the scanner ---------------------------------------------------------
    def next(self) -> Token:
        if self.skipping:
            return self._next_skipping()
        text = self.text
        n = len(text)
        space = self.i == 0
        while True:
            i = self.i
            if i >= n:
                return Token("EOF", None, self._pos(), "", True)
            c = text[i]
            if c in " \t\r\n\f\v":
                j = i
                while j < n and text[j] in " \t\r\n\f\v":
                    j += 1
                self._advance_to(j)
                space = True
                continue
            if c == "#" or (c == "!" and text.startswith("!!", i)):
                m = _ID.match(text, i + 2) if text.startswith(("#!", "!!"), i) else None
                if m and m.group() in DIRECTIVES:
                    return self._directive(i, m)
                if c == "#":
                    end = text.find("\n", i)
                    self._advance_to(n if end < 0 else end)
                    space = True
                    continue
            if c == "/" and text.startswith("//", i):
                end = text.find("\n", i)
                self._advance_to(n if end < 0 else end)
                space = True
                continue
            if c == "/" and text.startswith("/*", i):
                end = text.find("*/", i + 2)
                if end < 0:
                    self.errors.append(CfgError.at(self._pos(), "unterminated comment"))
                    self._advance_to(n)
                else:
                    self._advance_to(end + 2)
                space = True
                continue
            tok = self._token(i, c, space)
            return tok

    def _next_skipping(self) -> Token:
        """In a disabled #!ifdef block: only conditional directives come out."""
        text = self.text
        n = len(text)
        while self.i < n:
            i = self.i
            j = i
            while j < n and text[j] in " \t\r":
                j += 1
            if text.startswith(("#!", "!!"), j):
                m = _ID.match(text, j + 2)
                if m and m.group() in CONDITIONALS:
                    self.i = j
                    return self._directive(j, m)
            end = text.find("\n", j)
            self._advance_to(n if end < 0 else end + 1)
        return Token("EOF", None, self._pos(), "", True)

    def _directive(self, i: int, m: re.Match[str]) -> Token:
        name = m.group()
        pos = self._pos(i)
        j = m.end()
        while j < len(self.text) and self.text[j] in " \t":
            j += 1
        rest_pos = self._pos(j)
        end, rest = self._rest_of_line(j, continuation=name in ("define", "def", "trydef",
                                                                "trydefine", "redefine",
                                                                "redef"))
        self._advance_to(end)
        return Token("DIR", (name, rest.strip(), rest_pos), pos,
                     self.text[i:m.end()], True)

    def _token(self, i: int, c: str, space: bool) -> Token:
        text = self.text
        pos = self._pos(i)
        if c == '"' or c == "'":
            return self._string(i, c, pos, space)
        if c == "$":
            return self._pv(i, pos, space)
        if c.isdigit() or c in "abcdefABCDEF:[":
            tok = self._ip(i, pos, space)
            if tok is not None:
                return tok
        if c.isdigit():
            m = _NUM.match(text, i)
            assert m is not None
            self._advance_to(m.end())
            return Token("NUM", int(m.group(), 0), pos, m.group(), space)
        if c.isalpha() or c == "_":
            m = _ID.match(text, i)
            assert m is not None
            self._advance_to(m.end())
            return Token("ID", m.group(), pos, m.group(), space)
        for op in _OPERATORS:
            if text.startswith(op, i):
                self._advance_to(i + len(op))
                return Token("OP", op, pos, op, space)
        self._advance_to(i + 1)
        self.errors.append(CfgError.at(pos, f"unexpected character {c!r}"))
        return self.next()

    def _ip(self, i: int, pos: Pos, space: bool) -> Token | None:
        text = self.text
        m = _IP4.match(text, i)
        if m:
            addr = m.group().split("/")[0]
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                self.errors.append(CfgError.at(pos, f"invalid IPv4 address '{addr}'"))
            self._advance_to(m.end())
            return Token("IP4", m.group(), pos, m.group(), space)
        if text[i] == "[":
            m = _IP6_BRACKET.match(text, i)
            if m and _is_ip6(m.group(1)):
                self._advance_to(m.end())
                value = m.group(1) + (f"/{m.group(2)}" if m.group(2) else "")
                return Token("IP6", value, pos, m.group(), space)
            return None
        m = _IP6.match(text, i)
        if m and _is_ip6(m.group().split("/")[0]):
            self._advance_to(m.end())
            return Token("IP6", m.group(), pos, m.group(), space)
        return None

    def _string(self, i: int, quote: str, pos: Pos, space: bool) -> Token:
        text = self.text
        n = len(text)
        j = i + 1
        out: list[str] = []
        while j < n:
            c = text[j]
            if c == quote:
                self._advance_to(j + 1)
                return Token("STR", "".join(out), pos, text[i:j + 1], space)
            if c == "\n":
                break
            if c == "\\" and j + 1 < n:
                nxt = text[j + 1]
                if nxt == "\n":      # a backslash-newline continues the string
                    j += 2
                    continue
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                j += 2
                continue
            out.append(c)
            j += 1
        self.errors.append(CfgError.at(pos, "unterminated string"))
        self._advance_to(j)
        return Token("STR", "".join(out), pos, text[i:j], space)

    def _pv(self, i: int, pos: Pos, space: bool) -> Token:
        end = scan_pv(self.text, i)
        if end is None:
            self.errors.append(CfgError.at(pos, "bad pseudo-variable"))
            self._advance_to(i + 1)
            return self.next()
        self._advance_to(end)
        raw = self.text[i:end]
        return Token("PV", raw, pos, raw, space)


def scan_pv(text: str, i: int) -> int | None:
    """End index of the pseudo-variable starting with '$' at text[i], or None.

    Accepts ``$name``, ``$name(inner)``, ``$name(inner)[index]`` and
    ``$(name(inner)[index]{tr}...)``; parentheses inside are balanced.
    """
    n = len(text)
    j = i + 1
    if j < n and text[j] == "(":
        return _balanced(text, j, "(", ")")
    m = _PVNAME.match(text, j)
    if not m:
        return None
    j = m.end()
    if j < n and text[j] == "(":
        end = _balanced(text, j, "(", ")")
        if end is None:
            return None
        j = end
    if j < n and text[j] == "[":
        k = text.find("]", j)
        if k > 0 and "\n" not in text[j:k]:
            j = k + 1
    return j


def _balanced(text: str, j: int, open_: str, close: str) -> int | None:
    depth = 0
    n = len(text)
    while j < n:
        c = text[j]
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j + 1
        elif c == "\n":
            return None
        j += 1
    return None
