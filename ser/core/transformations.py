"""Transformations: ``$(pv{s.len}{uri.user})`` and friends, as in Kamailio.

Each entry of ``TRANSFORMS`` is ``name -> (min_args, max_args, fn)`` with
``fn(value, *args) -> value``; arguments arrive as strings (numbers are
converted by the function). A value of None (``$null``) reads as "".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

Value = str | int | None


def _s(v: Value) -> str:
    return "" if v is None else str(v)


def _int(text: str) -> int:
    return int(text.strip())


def s_len(v: Value) -> int:
    return len(_s(v))


def s_int(v: Value) -> int:
    if isinstance(v, int):
        return v
    text = _s(v).strip()
    n = 0
    sign = 1
    i = 0
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        i = 1
    while i < len(text) and text[i].isdigit():
        n = n * 10 + int(text[i])
        i += 1
    return sign * n


def s_substr(v: Value, offset: str, length: str) -> str:
    s = _s(v)
    o, n = _int(offset), _int(length)
    if o < 0:
        o = max(0, len(s) + o)
    return s[o:] if n == 0 else s[o:o + n]


def s_select(v: Value, index: str, sep: str) -> str:
    parts = _s(v).split(sep[:1] or ",")
    i = _int(index)
    try:
        return parts[i]
    except IndexError:
        return ""


def s_strip(v: Value, n: str) -> str:
    return _s(v)[_int(n):]


def s_striptail(v: Value, n: str) -> str:
    s = _s(v)
    k = _int(n)
    return s[:-k] if k else s


def s_replace(v: Value, a: str, b: str) -> str:
    return _s(v).replace(a, b)


def s_md5(v: Value) -> str:
    return hashlib.md5(_s(v).encode()).hexdigest()


def s_sha256(v: Value) -> str:
    return hashlib.sha256(_s(v).encode()).hexdigest()


def _uri(v: Value) -> Any:
    from ser.core.parser import parse_uri
    try:
        return parse_uri(_s(v).strip())
    except Exception:
        return None


def uri_user(v: Value) -> str:
    u = _uri(v)
    return (u.user or "") if u is not None else ""


def uri_host(v: Value) -> str:
    u = _uri(v)
    return u.host if u is not None else ""


def uri_port(v: Value) -> str:
    u = _uri(v)
    return "" if u is None or u.port is None else str(u.port)


def uri_param(v: Value, name: str) -> str:
    u = _uri(v)
    if u is None:
        return ""
    return u.param(name) or ""


def _nameaddr(v: Value) -> Any:
    from ser.core.parser.hdrs import parse_name_addr
    try:
        return parse_name_addr(_s(v).strip())
    except Exception:
        return None


def nameaddr_uri(v: Value) -> str:
    na = _nameaddr(v)
    return str(na.uri) if na is not None else ""


def nameaddr_name(v: Value) -> str:
    na = _nameaddr(v)
    return (na.display or "") if na is not None else ""


def param_value(v: Value, name: str, sep: str = ";") -> str:
    for item in _s(v).split(sep[:1] or ";"):
        key, eq, value = item.strip().partition("=")
        if key.strip() == name:
            return value.strip()
    return ""


TRANSFORMS: dict[str, tuple[int, int, Callable[..., Value]]] = {
    "s.len": (0, 0, s_len),
    "s.int": (0, 0, s_int),
    "s.substr": (2, 2, s_substr),
    "s.select": (2, 2, s_select),
    "s.tolower": (0, 0, lambda v: _s(v).lower()),
    "s.toupper": (0, 0, lambda v: _s(v).upper()),
    "s.md5": (0, 0, s_md5),
    "s.sha256": (0, 0, s_sha256),
    "s.strip": (1, 1, s_strip),
    "s.striptail": (1, 1, s_striptail),
    "s.replace": (2, 2, s_replace),
    "s.trim": (0, 0, lambda v: _s(v).strip()),
    "uri.user": (0, 0, uri_user),
    "uri.host": (0, 0, uri_host),
    "uri.domain": (0, 0, uri_host),
    "uri.port": (0, 0, uri_port),
    "uri.param": (1, 1, uri_param),
    "nameaddr.uri": (0, 0, nameaddr_uri),
    "nameaddr.name": (0, 0, nameaddr_name),
    "param.value": (1, 2, param_value),
}
