"""textops: operations on the message text (Kamailio's textops module).

Theory of operation. Headers are changed through the recorded edits of the
message (``add_header``/``remove_header``), so reads keep seeing the message
as received until ``msg_apply_changes()`` (textopsx). Functions that edit
free text (``replace``, ``subst``, ``search_append``, positional
``append_hf``/``insert_hf``) work on the message *as it will be sent* (the
received text with every edit so far) and turn the new text back into edits
(:func:`rewrite`): a changed Request-URI becomes ``set_ruri``, a changed
header block is rebuilt from the first differing line on, a changed body
becomes ``set_body``; Content-Length always follows the body. The method of a
request and the status line of a reply cannot be changed this way (-1).

Regular expressions are POSIX extended ones as in Kamailio (ser.core.posixre)
and are compiled once at load time when constant.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, RouteType
from ser.core.parser import ProtocolError, SipURI, canonical_name, parse_message, parse_uri
from ser.core.posixre import posix_re

R = RouteType
MSG_ROUTES = R.REQUEST | R.FAILURE | R.ONREPLY | R.BRANCH
log = logging.getLogger("ser.textops")

# -- regular expressions -------------------------------------------------------------

_cached_re = functools.lru_cache(maxsize=256)(posix_re)


def _re_fixup(*indexes: int) -> Callable[[list[FixedArg]], list[FixedArg]]:
    """Compile constant regex arguments at load time; others per call (cached)."""
    def fixup(args: list[FixedArg]) -> list[FixedArg]:
        out = list(args)
        for i in indexes:
            if i >= len(args):
                continue
            a = args[i]
            if a.is_const:
                try:
                    out[i] = FixedArg(const=posix_re(str(a.const)), pos=a.pos, text=a.text)
                except re.error as e:
                    raise FixupError(f"bad regular expression '{a.const}': {e}", i) from None
            else:
                get = a.get
                assert get is not None
                out[i] = FixedArg(get=_compile_per_call(get), pos=a.pos, text=a.text)
        return out
    return fixup


def _compile_per_call(get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def compiled(ctx: Any) -> Any:
        try:
            return _cached_re(str(get(ctx)))
        except re.error as e:
            log.error("bad regular expression %r: %s", get(ctx), e)
            return None
    return compiled


# -- sed-like substitutions ('/re/repl/flags') ------------------------------------------

@dataclasses.dataclass(frozen=True)
class Subst:
    regex: re.Pattern[str]
    repl: tuple[str | int, ...]     # literal text, group numbers, -1 for the R-URI (\u)
    count: int                       # 0: all matches (g), 1: the first

    def expand(self, m: re.Match[str], ruri: str) -> str:
        out = []
        for part in self.repl:
            if isinstance(part, str):
                out.append(part)
            elif part < 0:
                out.append(ruri)
            else:
                out.append(m.group(part) or "")
        return "".join(out)

    def apply(self, text: str, ruri: str = "") -> tuple[str, int]:
        """(new text, number of substitutions)."""
        return self.regex.subn(lambda m: self.expand(m, ruri), text, self.count)


_REPL_ESC = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def parse_subst(expr: str) -> Subst:
    """'/re/repl/flags' (any delimiter; flags i, g, s) -> Subst; ValueError if bad."""
    if len(expr) < 4:
        raise ValueError("too short for /re/repl/flags")
    delim = expr[0]
    fields: list[str] = []
    cur: list[str] = []
    i = 1
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            nxt = expr[i + 1]
            cur.append(nxt if nxt == delim else c + nxt)
            i += 2
            continue
        if c == delim and len(fields) < 2:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if len(fields) != 2:
        raise ValueError(f"needs three parts separated by '{delim}'")
    pattern, repl_text, flags = fields[0], fields[1], "".join(cur)
    bad = set(flags) - set("igs")
    if bad:
        raise ValueError(f"unknown flag(s) '{''.join(sorted(bad))}' (i, g, s)")
    reflags = re.IGNORECASE if "i" in flags else 0
    reflags |= re.DOTALL if "s" in flags else re.MULTILINE
    try:
        regex = posix_re(pattern, reflags)
    except re.error as e:
        raise ValueError(f"bad regular expression: {e}") from None
    repl: list[str | int] = []
    buf: list[str] = []
    j = 0
    while j < len(repl_text):
        c = repl_text[j]
        if c == "\0":                       # "\0" in a script string arrives as NUL
            c, nxt = "\\", "0"
            j -= 1
        else:
            nxt = repl_text[j + 1] if j + 1 < len(repl_text) else ""
        if c == "\\" and nxt:
            if nxt.isdigit():
                if int(nxt) > regex.groups:
                    raise ValueError(f"\\{nxt} refers to a group the expression does not have")
                if buf:
                    repl.append("".join(buf))
                    buf = []
                repl.append(int(nxt))
            elif nxt == "u":
                if buf:
                    repl.append("".join(buf))
                    buf = []
                repl.append(-1)
            else:
                buf.append(_REPL_ESC.get(nxt, nxt))
            j += 2
            continue
        buf.append(c)
        j += 1
    if buf:
        repl.append("".join(buf))
    return Subst(regex, tuple(repl), 0 if "g" in flags else 1)


_cached_subst = functools.lru_cache(maxsize=256)(parse_subst)


def _subst_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const:
        try:
            return [FixedArg(const=parse_subst(str(a.const)), pos=a.pos, text=a.text)]
        except ValueError as e:
            raise FixupError(f"bad substitution '{a.const}': {e}", 0) from None
    get = a.get
    assert get is not None

    def subst_of(ctx: Any) -> Subst | None:
        try:
            return _cached_subst(str(get(ctx)))
        except ValueError as e:
            log.error("bad substitution %r: %s", get(ctx), e)
            return None
    return [FixedArg(get=subst_of, pos=a.pos, text=a.text)]


# -- the message as text, and back to edits ----------------------------------------------

def _ruri(ctx: Any) -> str:
    return ctx.ruri if ctx.ruri is not None else (ctx.msg.ruri if ctx.msg.is_request else "")


def current_text(msg: Any) -> str:
    """The message as it would be sent now (received text with every edit)."""
    return msg.serialize().decode("utf-8", "surrogateescape")


def _split(text: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """(first line, [(name, value)] without Content-Length, body) of a message text."""
    head, sep, body = text.partition("\r\n\r\n")
    if not sep:
        head, body = text.rstrip("\r\n"), ""
    lines = [ln for ln in head.split("\r\n")
             if canonical_name(ln.partition(":")[0]) != "content-length"]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    return lines[0], msg.fields(), body.encode("utf-8", "surrogateescape")


def rewrite(ctx: Any, new_text: str) -> bool:
    """Record the edits that turn the message into ``new_text``; False if impossible."""
    msg = ctx.msg
    try:
        old_first, old_fields, old_body = _split(current_text(msg))
        new_first, new_fields, new_body = _split(new_text)
    except ProtocolError as e:
        log.error("the changed message does not parse: %s", e.reason)
        return False
    if new_first != old_first:
        old_parts, new_parts = old_first.split(" ", 2), new_first.split(" ", 2)
        if not msg.is_request or len(new_parts) != 3 or old_parts[0] != new_parts[0] \
                or old_parts[2] != new_parts[2]:
            log.error("only the Request-URI of the first line can be changed")
            return False
        try:
            msg.set_ruri(new_parts[1])
        except ValueError as e:
            log.error("%s", e)
            return False
        ctx.ruri = new_parts[1]
    if new_fields != old_fields:
        rewrite_headers(msg, old_fields, new_fields)
    if new_body != old_body:
        msg.set_body(new_body)
    return True


def headers_now(msg: Any) -> list[tuple[str, str]]:
    """(name, value) of every header as the message would be sent now."""
    return _split(current_text(msg))[1]


def rewrite_headers(msg: Any, old: list[tuple[str, str]], new: list[tuple[str, str]]) -> None:
    """Edits turning header list ``old`` into ``new``: the rows from the first
    difference on are removed by name and added again in the new order."""
    keys = [canonical_name(n) for n, _ in old]
    i = 0
    while i < min(len(old), len(new)) and old[i] == new[i]:
        i += 1
    while True:                 # a name removed below must not occur before i
        tail = set(keys[i:])
        j = next((p for p in range(i) if keys[p] in tail), None)
        if j is None:
            break
        i = j
    for key in dict.fromkeys(keys[i:]):
        msg.remove_header(key)
    if i < len(old):
        msg.remove_header("content-length")      # added again last by serialize()
    for name, value in new[i:]:
        msg.add_header(name, value)


def _header_lines(text: str) -> list[tuple[str, str]] | None:
    """'Name: value\\r\\n[...]' -> [(name, value)], None if a line is not a header."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            return None
        out.append((name.strip(), value.strip()))
    return out


# -- script functions -----------------------------------------------------------------------

def _methods_fixup(args: list[FixedArg]) -> list[FixedArg]:
    a = args[0]
    if a.is_const:
        methods = frozenset(m.strip().upper() for m in str(a.const).split("|") if m.strip())
        if not methods:
            raise FixupError("no method given", 0)
        return [FixedArg(const=methods, pos=a.pos, text=a.text)]
    get = a.get
    assert get is not None

    def methods_of(ctx: Any) -> frozenset[str]:
        return frozenset(m.strip().upper() for m in str(get(ctx)).split("|"))
    return [FixedArg(get=methods_of, pos=a.pos, text=a.text)]


def is_method(ctx: Any, methods: frozenset[str]) -> int:
    return 1 if ctx.msg.method.upper() in methods else -1


def is_present_hf(ctx: Any, name: str) -> int:
    return 1 if ctx.msg.has_header(name) else -1


def is_present_hf_re(ctx: Any, regex: re.Pattern[str] | None) -> int:
    if regex is None:
        return -1
    return 1 if any(regex.search(n) for n, _ in ctx.msg.fields()) else -1


def _add(ctx: Any, text: str, hdr: str, before: bool) -> int:
    lines = _header_lines(text)
    if not lines:
        log.error("%s: not a header: %r", "insert_hf" if before else "append_hf", text)
        return -1
    msg = ctx.msg
    try:
        if not hdr:
            if before:
                for name, value in reversed(lines):
                    msg.add_header(name, value, first=True)
            else:
                for name, value in lines:
                    msg.add_header(name, value)
            return 1
        fields = headers_now(msg)
        key = canonical_name(hdr)
        at = [i for i, (n, _) in enumerate(fields) if canonical_name(n) == key]
        if not at:
            return -1
        pos = at[0] if before else at[-1] + 1
        rewrite_headers(msg, fields, fields[:pos] + lines + fields[pos:])
    except (ValueError, ProtocolError) as e:
        log.error("cannot add header %r: %s", text, e)
        return -1
    return 1


def append_hf(ctx: Any, text: str, hdr: str = "") -> int:
    return _add(ctx, text, hdr, before=False)


def insert_hf(ctx: Any, text: str, hdr: str = "") -> int:
    return _add(ctx, text, hdr, before=True)


def remove_hf(ctx: Any, name: str) -> int:
    if not ctx.msg.has_header(name):
        return -1
    ctx.msg.remove_header(name)
    return 1


def remove_hf_re(ctx: Any, regex: re.Pattern[str] | None) -> int:
    if regex is None:
        return -1
    names = {canonical_name(n) for n, _ in ctx.msg.fields() if regex.search(n)}
    for key in names:
        ctx.msg.remove_header(key)
    return 1 if names else -1


def _raw_text(msg: Any) -> str:
    return msg.raw.decode("utf-8", "surrogateescape")


def search(ctx: Any, regex: re.Pattern[str] | None) -> int:
    return 1 if regex is not None and regex.search(_raw_text(ctx.msg)) else -1


def search_body(ctx: Any, regex: re.Pattern[str] | None) -> int:
    body = ctx.msg.body.decode("utf-8", "surrogateescape")
    return 1 if regex is not None and body and regex.search(body) else -1


def search_append(ctx: Any, regex: re.Pattern[str] | None, text: str) -> int:
    if regex is None:
        return -1
    cur = current_text(ctx.msg)
    m = regex.search(cur)
    if m is None:
        return -1
    return 1 if rewrite(ctx, cur[:m.end()] + text + cur[m.end():]) else -1


def _replace(ctx: Any, regex: re.Pattern[str] | None, text: str, count: int) -> int:
    if regex is None:
        return -1
    cur = current_text(ctx.msg)
    new, n = regex.subn(lambda m: text, cur, count)
    if not n:
        return -1
    return 1 if rewrite(ctx, new) else -1


def replace(ctx: Any, regex: re.Pattern[str] | None, text: str) -> int:
    return _replace(ctx, regex, text, 1)


def replace_all(ctx: Any, regex: re.Pattern[str] | None, text: str) -> int:
    return _replace(ctx, regex, text, 0)


def _replace_in_body(ctx: Any, regex: re.Pattern[str] | None, text: str, count: int) -> int:
    if regex is None:
        return -1
    body = _body_now(ctx.msg)
    new, n = regex.subn(lambda m: text, body, count)
    if not n:
        return -1
    ctx.msg.set_body(new.encode("utf-8", "surrogateescape"))
    return 1


def replace_body(ctx: Any, regex: re.Pattern[str] | None, text: str) -> int:
    return _replace_in_body(ctx, regex, text, 1)


def replace_body_all(ctx: Any, regex: re.Pattern[str] | None, text: str) -> int:
    return _replace_in_body(ctx, regex, text, 0)


def _body_now(msg: Any) -> str:
    return current_text(msg).partition("\r\n\r\n")[2]


def subst(ctx: Any, sub: Subst | None) -> int:
    if sub is None:
        return -1
    new, n = sub.apply(current_text(ctx.msg), _ruri(ctx))
    if not n:
        return -1
    return 1 if rewrite(ctx, new) else -1


def subst_uri(ctx: Any, sub: Subst | None) -> int:
    if sub is None or not ctx.msg.is_request:
        return -1
    old = _ruri(ctx)
    new, n = sub.apply(old, old)
    if not n:
        return -1
    return _set_ruri(ctx, new)


def subst_user(ctx: Any, sub: Subst | None) -> int:
    if sub is None or not ctx.msg.is_request:
        return -1
    old = _ruri(ctx)
    try:
        uri: Any = parse_uri(old)
    except ProtocolError:
        return -1
    if not isinstance(uri, SipURI):
        return -1
    user = uri.user
    new_user, n = sub.apply(user or "", old)
    if not n:
        return -1
    uri = dataclasses.replace(uri, user=new_user or None)
    return _set_ruri(ctx, uri.build())


def _set_ruri(ctx: Any, uri: str) -> int:
    try:
        ctx.msg.set_ruri(uri)
    except ValueError as e:
        log.error("the substitution gave a bad Request-URI %r: %s", uri, e)
        return -1
    ctx.ruri = uri
    return 1


def subst_body(ctx: Any, sub: Subst | None) -> int:
    if sub is None:
        return -1
    new, n = sub.apply(_body_now(ctx.msg), _ruri(ctx))
    if not n:
        return -1
    ctx.msg.set_body(new.encode("utf-8", "surrogateescape"))
    return 1


def has_body(ctx: Any, mime: str = "") -> int:
    msg = ctx.msg
    if not msg.body:
        return -1
    if not mime or mime == "0":
        return 1
    ctype = (msg.content_type or "").partition(";")[0].strip().lower()
    return 1 if ctype == mime.strip().lower() else -1


def is_privacy(ctx: Any, ptype: str) -> int:
    want = ptype.strip().lower()
    for value in ctx.msg.headers("privacy"):
        if want in (v.strip().lower() for v in value.replace(",", ";").split(";")):
            return 1
    return -1


def _sep_fixup(args: list[FixedArg]) -> list[FixedArg]:
    sep = args[2]
    if sep.is_const and len(str(sep.const)) != 1:
        raise FixupError("the separator must be one character", 2)
    return args


def in_list(ctx: Any, subject: str, items: str, sep: str) -> int:
    if len(sep) != 1:
        return -1
    return 1 if subject in items.split(sep) else -1


def in_list_prefix(ctx: Any, subject: str, items: str, sep: str) -> int:
    if len(sep) != 1:
        return -1
    return 1 if any(p and subject.startswith(p) for p in items.split(sep)) else -1


def cmp_str(ctx: Any, a: str, b: str) -> int:
    if a == b:
        return 1
    return -1 if a > b else -2


def cmp_istr(ctx: Any, a: str, b: str) -> int:
    return cmp_str(ctx, a.lower(), b.lower())


def starts_with(ctx: Any, a: str, b: str) -> int:
    return 1 if a.startswith(b) else -1


def ends_with(ctx: Any, a: str, b: str) -> int:
    return 1 if a.endswith(b) else -1


_re_arg = (Arg("re", doc="POSIX extended regular expression"),)
_re_txt = (Arg("re", doc="POSIX extended regular expression"), Arg("txt"))
_sub_arg = (Arg("subst", doc="'/re/repl/flags'; flags i, g, s; \\1..\\9, \\0, \\u in repl"),)
_two = (Arg("str1"), Arg("str2"))
_list = (Arg("subject"), Arg("list"), Arg("separator"))

exports = Module(
    name="textops",
    doc="Operations on the message text: headers, regular expressions, the body, "
        "strings. Text edits apply to the message as it will be sent; reads see the "
        "message as received until msg_apply_changes() (textopsx).",
    functions=(
        Function("is_method", is_method, (Arg("methods"),), fixup=_methods_fixup,
                 doc="True if the method (of a reply: the CSeq method) is one of \"A|B|C\"."),
        Function("is_present_hf", is_present_hf, (Arg("name"),),
                 doc="True if the message has the header (long or compact name)."),
        Function("is_present_hf_re", is_present_hf_re, _re_arg, fixup=_re_fixup(0),
                 doc="True if a header name matches the regular expression."),
        Function("append_hf", append_hf, (Arg("txt"), Arg("hdr", optional=True)), MSG_ROUTES,
                 doc="Append the header(s) \"Name: value\\r\\n\" after the last header, "
                     "or after the last header named hdr."),
        Function("insert_hf", insert_hf, (Arg("txt"), Arg("hdr", optional=True)), MSG_ROUTES,
                 doc="Insert the header(s) before the first header, or before the first "
                     "header named hdr."),
        Function("remove_hf", remove_hf, (Arg("name"),), MSG_ROUTES,
                 doc="Remove every header of that name (any case, compact form, "
                     "whitespace before the colon); true if there was one."),
        Function("remove_hf_re", remove_hf_re, _re_arg, fixup=_re_fixup(0),
                 doc="Remove every header whose name matches the regular expression."),
        Function("search", search, _re_arg, MSG_ROUTES, _re_fixup(0),
                 doc="True if the received message matches the regular expression."),
        Function("search_body", search_body, _re_arg, MSG_ROUTES, _re_fixup(0),
                 doc="True if the body matches the regular expression."),
        Function("search_append", search_append, _re_txt, MSG_ROUTES, _re_fixup(0),
                 doc="Insert txt after the first match of the regular expression."),
        Function("replace", replace, _re_txt, MSG_ROUTES, _re_fixup(0),
                 doc="Replace the first match of the regular expression with txt."),
        Function("replace_all", replace_all, _re_txt, MSG_ROUTES, _re_fixup(0),
                 doc="Replace every match of the regular expression with txt."),
        Function("replace_body", replace_body, _re_txt, MSG_ROUTES, _re_fixup(0),
                 doc="Replace the first match in the body with txt."),
        Function("replace_body_all", replace_body_all, _re_txt, MSG_ROUTES, _re_fixup(0),
                 doc="Replace every match in the body with txt."),
        Function("subst", subst, _sub_arg, MSG_ROUTES, _subst_fixup,
                 doc="sed-like substitution over the message."),
        Function("subst_uri", subst_uri, _sub_arg, MSG_ROUTES, _subst_fixup,
                 doc="sed-like substitution over the Request-URI."),
        Function("subst_user", subst_user, _sub_arg, MSG_ROUTES, _subst_fixup,
                 doc="sed-like substitution over the user part of the Request-URI."),
        Function("subst_body", subst_body, _sub_arg, MSG_ROUTES, _subst_fixup,
                 doc="sed-like substitution over the body."),
        Function("has_body", has_body, (Arg("mime", optional=True),), MSG_ROUTES,
                 doc="True if the message has a body (of that Content-Type, when given)."),
        Function("is_privacy", is_privacy, (Arg("privacy_type"),), MSG_ROUTES,
                 doc="True if a Privacy header holds the value (id, header, session, ...)."),
        Function("in_list", in_list, _list, fixup=_sep_fixup,
                 doc="True if subject is an item of the separator-separated list."),
        Function("in_list_prefix", in_list_prefix, _list, fixup=_sep_fixup,
                 doc="True if an item of the list is a prefix of subject."),
        Function("cmp_str", cmp_str, _two, MSG_ROUTES,
                 doc="True if the strings are equal (case-sensitive); -1 if str1 is "
                     "greater, -2 if smaller."),
        Function("cmp_istr", cmp_istr, _two, MSG_ROUTES,
                 doc="As cmp_str, ignoring case."),
        Function("starts_with", starts_with, _two, MSG_ROUTES,
                 doc="True if str1 starts with str2."),
        Function("ends_with", ends_with, _two, MSG_ROUTES,
                 doc="True if str1 ends with str2."),
    ),
)
