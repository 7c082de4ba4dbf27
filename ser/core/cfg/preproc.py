"""The preprocessor: #!define and friends, conditionals, includes, #!subst.

Theory of operation: the preprocessor pulls tokens from a :class:`Lexer` per
source file and passes on a single token stream to the parser. It acts on
``DIR`` tokens (``#!define`` ... or the ``!!`` spelling) and on
``include_file``/``import_file``; it switches the lexer into skipping mode
inside disabled ``#!ifdef`` blocks.

Source map: every token keeps the (file, line, col) where the operator wrote
it. Tokens from an included file carry that file's name; the tokens a define
expands into carry the position of the USE of the define (``origin`` keeps
where it was defined), so an error in an expansion is reported where the
operator used the name.

As in Kamailio, a define replaces an identifier token only -- never text
inside a quoted string -- while ``#!subst``/``#!substdef`` rewrite the
contents of quoted strings. ``#!substdef`` also defines the matched text as
an identifier (``#!substdefs`` defines it as a quoted string).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from ser.core.cfg.errors import CfgError, Pos
from ser.core.cfg.lexer import Lexer, Token

MAX_INCLUDE_DEPTH = 10
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Define:
    name: str
    tokens: tuple[Token, ...]
    pos: Pos


@dataclass
class _Cond:
    pos: Pos
    parent_active: bool
    value: bool
    seen_else: bool = False

    @property
    def active(self) -> bool:
        return self.parent_active and self.value


@dataclass
class Preprocessed:
    tokens: list[Token]
    errors: list[CfgError]
    defines: dict[str, Define]
    files: list[str] = field(default_factory=list)


def parse_cli_defines(items: list[str]) -> dict[str, str | None]:
    """``-A NAME`` / ``-A NAME=VALUE`` arguments as a dict."""
    out: dict[str, str | None] = {}
    for item in items:
        name, eq, value = item.partition("=")
        out[name] = value if eq else None
    return out


class Preprocessor:
    def __init__(self, defines: dict[str, str | None] | None = None) -> None:
        self.defines: dict[str, Define] = {}
        self.substs: list[tuple[re.Pattern[str], str, int]] = []
        self.errors: list[CfgError] = []
        self.files: list[str] = []
        for name, value in (defines or {}).items():
            pos = ("<command line>", 0, 0)
            toks = self._lex_value(value or "", pos) if value else ()
            self.defines[name] = Define(name, toks, pos)

    # -- entry points --------------------------------------------------------
    def run_file(self, path: str) -> Preprocessed:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            self.errors.append(CfgError(path, 0, 0, f"cannot open config file: {e.strerror}"))
            return Preprocessed([], self.errors, self.defines, self.files)
        return self.run_text(text, path)

    def run_text(self, text: str, file: str) -> Preprocessed:
        toks = list(self._file_tokens(text, file, 0))
        return Preprocessed(toks, self.errors, self.defines, self.files)

    # -- one file ------------------------------------------------------------
    def _file_tokens(self, text: str, file: str, depth: int) -> Iterator[Token]:
        self.files.append(file)
        lexer = Lexer(text, file)
        conds: list[_Cond] = []
        pending: Token | None = None
        while True:
            if pending is not None:
                tok, pending = pending, None
            else:
                tok = lexer.next()
            kind = tok.kind
            if kind == "EOF":
                break
            if kind == "DIR":
                name, rest, rest_pos = tok.value
                if name in ("ifdef", "ifndef", "else", "endif"):
                    self._conditional(name, rest, tok.pos, conds)
                    lexer.skipping = bool(conds) and not conds[-1].active
                elif name in ("include_file", "import_file"):
                    path = self._directive_string(rest, rest_pos, name)
                    if path is not None:
                        yield from self._include(path, name, tok.pos, file, depth)
                else:
                    self._definition(name, rest, rest_pos, tok.pos)
                continue
            if kind == "ID":
                if tok.value in ("include_file", "import_file"):
                    arg = lexer.next()
                    if arg.kind != "STR":
                        self.errors.append(CfgError.at(
                            arg.pos, f"{tok.value} needs a quoted file name"))
                        pending = arg
                        continue
                    yield from self._include(arg.value, tok.value, tok.pos, file, depth)
                    continue
                if tok.value in self.defines:
                    yield from self._expand(tok, tok.pos, set())
                    continue
            if kind == "STR" and self.substs:
                tok = replace(tok, value=self._subst(tok.value))
            yield tok
        for cond in conds:
            self.errors.append(CfgError.at(cond.pos, "missing #!endif for this #!ifdef"))
        self.errors.extend(lexer.errors)

    def _conditional(self, name: str, rest: str, pos: Pos, conds: list[_Cond]) -> None:
        if name in ("ifdef", "ifndef"):
            m = _NAME.fullmatch(rest)
            if not m:
                self.errors.append(CfgError.at(pos, f"#!{name} needs one name"))
            defined = rest in self.defines
            parent = not conds or conds[-1].active
            conds.append(_Cond(pos, parent, defined if name == "ifdef" else not defined))
            return
        if not conds:
            self.errors.append(CfgError.at(pos, f"#!{name} without #!ifdef or #!ifndef"))
            return
        if name == "else":
            cond = conds[-1]
            if cond.seen_else:
                self.errors.append(CfgError.at(pos, "second #!else for the same #!ifdef"))
            cond.seen_else = True
            cond.value = not cond.value
        else:
            conds.pop()

    def _definition(self, name: str, rest: str, rest_pos: Pos, pos: Pos) -> None:
        if name in ("subst", "substdef", "substdefs"):
            self._subst_directive(name, rest, rest_pos)
            return
        m = _NAME.match(rest)
        if not m:
            self.errors.append(CfgError.at(rest_pos, f"#!{name} needs a name"))
            return
        ident = m.group()
        value = rest[m.end():]
        if value and not value[0].isspace():
            self.errors.append(CfgError.at(rest_pos, f"bad name in #!{name}: '{rest.split()[0]}'"))
            return
        vpos = (rest_pos[0], rest_pos[1], rest_pos[2] + m.end() + len(value) - len(value.lstrip()))
        if name in ("trydef", "trydefine") and ident in self.defines:
            return
        if name in ("define", "def") and ident in self.defines:
            old = self.defines[ident].pos
            self.errors.append(CfgError.at(
                rest_pos, f"'{ident}' is already defined (at {old[0]}:{old[1]})",
                "use #!redefine or #!trydef"))
            return
        self.defines[ident] = Define(ident, self._lex_value(value.strip(), vpos), pos)

    def _lex_value(self, value: str, pos: Pos) -> tuple[Token, ...]:
        lexer = Lexer(value, pos[0], pos[1], pos[2])
        out = []
        while (tok := lexer.next()).kind != "EOF":
            out.append(tok)
        self.errors.extend(lexer.errors)
        return tuple(out)

    def _directive_string(self, rest: str, pos: Pos, name: str) -> str | None:
        toks = self._lex_value(rest, pos)
        if len(toks) != 1 or toks[0].kind != "STR":
            self.errors.append(CfgError.at(pos, f"#!{name} needs one quoted argument"))
            return None
        return str(toks[0].value)

    def _subst_directive(self, name: str, rest: str, pos: Pos) -> None:
        arg = self._directive_string(rest, pos, name)
        if arg is None:
            return
        parts = _split_subst(arg) if arg else None
        if parts is None:
            self.errors.append(CfgError.at(
                pos, f"bad #!{name} expression, expected \"/regexp/replacement/flags\""))
            return
        pattern, repl, flags = parts
        if set(flags) - set("ig"):
            self.errors.append(CfgError.at(pos, f"bad #!{name} flags '{flags}' (only i and g)"))
            return
        try:
            rx = re.compile(pattern, re.IGNORECASE if "i" in flags else 0)
        except re.error as e:
            self.errors.append(CfgError.at(pos, f"bad regular expression in #!{name}: {e}"))
            return
        self.substs.append((rx, repl, 0 if "g" in flags else 1))
        if name != "subst":
            if not _NAME.fullmatch(pattern):
                self.errors.append(CfgError.at(pos, f"#!{name} needs a plain name as regexp"))
                return
            if name == "substdefs":
                toks: tuple[Token, ...] = (Token("STR", repl, pos, f'"{repl}"'),)
            else:
                toks = self._lex_value(repl, pos)
            self.defines[pattern] = Define(pattern, toks, pos)

    def _subst(self, value: str) -> str:
        for rx, repl, count in self.substs:
            try:
                value = rx.sub(repl, value, count=count)
            except (re.error, IndexError):
                continue
        return value

    def _expand(self, use: Token, pos: Pos, active: set[str]) -> Iterator[Token]:
        define = self.defines[use.value]
        if use.value in active:
            self.errors.append(CfgError.at(pos, f"define '{use.value}' expands into itself"))
            return
        active = active | {use.value}
        first = True
        for tok in define.tokens:
            if tok.kind == "ID" and tok.value in self.defines:
                yield from self._expand(tok, pos, active)
                continue
            if tok.kind == "STR" and self.substs:
                tok = replace(tok, value=self._subst(tok.value))
            yield replace(tok, pos=pos, origin=tok.origin or define.pos,
                          space_before=use.space_before if first else tok.space_before)
            first = False

    def _include(self, path: str, how: str, pos: Pos, includer: str,
                 depth: int) -> Iterator[Token]:
        if depth >= MAX_INCLUDE_DEPTH:
            self.errors.append(CfgError.at(pos, f"includes nested deeper than {MAX_INCLUDE_DEPTH}"))
            return
        candidates = [path] if os.path.isabs(path) else [
            os.path.normpath(os.path.join(os.path.dirname(includer), path)), path]
        for cand in candidates:
            if os.path.isfile(cand):
                try:
                    with open(cand, encoding="utf-8", errors="replace") as f:
                        text = f.read()
                except OSError as e:
                    self.errors.append(CfgError.at(pos, f"cannot read '{path}': {e.strerror}"))
                    return
                yield from self._file_tokens(text, cand, depth + 1)
                return
        if how == "include_file":
            self.errors.append(CfgError.at(pos, f"included file '{path}' not found"))


def _split_subst(arg: str) -> tuple[str, str, str] | None:
    """'/re/repl/flags' (any delimiter, backslash escapes it) -> parts."""
    delim = arg[0]
    parts: list[str] = []
    cur: list[str] = []
    i = 1
    while i < len(arg):
        c = arg[i]
        if c == "\\" and i + 1 < len(arg) and arg[i + 1] == delim:
            cur.append(delim)
            i += 2
            continue
        if c == delim:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    if len(parts) != 3 or not parts[0]:
        return None
    return parts[0], parts[1], parts[2]


def preprocess_file(path: str, defines: dict[str, str | None] | None = None) -> Preprocessed:
    return Preprocessor(defines).run_file(path)


def preprocess_text(text: str, file: str = "<string>",
                    defines: dict[str, str | None] | None = None) -> Preprocessed:
    return Preprocessor(defines).run_text(text, file)
