"""Building a reply from a request (RFC 3261 8.2.6), as a stateless server sends it."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from itertools import compress

from . import abnf
from .errors import ProtocolError
from .hdrs import split_list
from .msg import SipMessage

# copied from the request in its order (RFC 3261 8.2.6.2); Record-Route too
# for replies that may establish a dialog (12.1.1)
_COPY = frozenset(("via", "from", "to", "call-id", "cseq"))
_COPY_RR = _COPY | {"record-route"}

TAG_PREFIX = os.urandom(4).hex()


def default_to_tag(req: SipMessage) -> str:
    """A To tag that is the same for retransmissions of one request."""
    # retransmissions of a request are the same bytes (RFC 3261 17.1.1.2)
    return f"{TAG_PREFIX}-{zlib.crc32(req.raw, 0):08x}"


def build_reply(req: SipMessage, code: int, reason: str, *, to_tag: str | None = None,
                headers: Iterable[str] = (), body: bytes = b"", server: str | None = None,
                received: str | None = None, rport: int | None = None) -> bytes:
    """The bytes of a reply to ``req``.

    ``headers`` are whole lines ("Name: value") added after the copied ones.
    ``received``/``rport``: the request's source address, added to the top
    Via as RFC 3261 18.2.1 and RFC 3581 ask, so the reply goes back to it.
    """
    if not req.is_request:
        raise TypeError("a reply is built from a request")
    if not 100 <= code <= 699:
        raise ValueError(f"bad status code {code}")
    if "via" not in req._keys:
        raise ProtocolError(None, "a request without Via cannot be answered")
    keys = req._keys
    hlines = req._lines
    copy = _COPY_RR if 100 < code < 300 else _COPY
    out = [f"SIP/2.0 {code} {reason}"]
    out += compress(hlines, map(copy.__contains__, keys))
    if received is not None or rport is not None:
        line = hlines[keys.index("via")]
        name, _, value = line.partition(":")
        out[out.index(line)] = f"{name}:{_via_with_source(req, value, received, rport)}"
    if code > 100 and "to" in keys:
        line = hlines[keys.index("to")]
        new = _to_with_tag(req, line, to_tag)
        if new is not line:
            out[out.index(line)] = new
    out.extend(headers)
    if server:
        out.append(f"Server: {server}")
    out.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(out).encode("utf-8", "surrogateescape") + body


def _to_with_tag(req: SipMessage, line: str, to_tag: str | None) -> str:
    """The To line with a tag added, or the same object when it has one."""
    if ";" in line:
        to = req.to
        if to is not None and to.tag is not None:
            return line
    return f"{line.rstrip()};tag={to_tag or default_to_tag(req)}"


def _via_with_source(req: SipMessage, value: str, received: str | None,
                     rport: int | None) -> str:
    via = req.via
    if via is None:
        return value
    if value.endswith(";rport") and "," not in value and rport is not None \
            and received is not None and "received" not in via.params:
        # the common spelling (sipp, most phones): the flag last, nothing to keep
        return f"{value[:-6]};rport={rport};received={received}"
    items = split_list(value) if "," in value else [value.strip()]
    first = items[0]
    params = via.params
    if rport is not None and "rport" in params and not params["rport"]:
        # RFC 3581 4: rport filled in, received added even when it matches
        first = _set_flag_value(first, "rport", str(rport))
        need_received = received is not None
    else:
        need_received = received is not None and received != via.host.strip("[]")
    if need_received and "received" not in params:
        first = f"{first};received={received}"
    return " " + ", ".join([first, *items[1:]])


def _set_flag_value(text: str, name: str, value: str) -> str:
    low = text.lower()
    i = low.find(";" + name)
    while i >= 0:
        j = i + 1 + len(name)
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        if k >= len(text) or text[k] in ";,":
            return f"{text[:j]}={value}{text[j:]}"
        i = low.find(";" + name, j)
    return text


def build_error_reply(data: bytes, code: int, reason: str, *,
                      server: str | None = None) -> bytes | None:
    """A reply to a request that did not parse, or None when none can be routed.

    Only the first line and the Via, From, To, Call-ID and CSeq lines are
    read, as leniently as possible; without a request line and a readable top
    Via there is nobody to answer.
    """
    from .hdrs import _parse_one_via, canonical_name
    from .msg import _METHODS

    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "surrogateescape")
    lines = [ln.rstrip("\r") for ln in head.split("\n")]
    method = lines[0].split(" ", 1)[0]
    if not method or method.upper().startswith("SIP/") or not (
            method in _METHODS or abnf.METHOD.fullmatch(method)):
        return None
    out = [f"SIP/2.0 {code} {_printable(reason)}"]
    have_via = have_to_tag = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or line[:1] in (" ", "\t"):
            continue
        key = canonical_name(name)
        if key == "via":
            if not have_via:
                try:
                    _parse_one_via(split_list(value)[0])
                except ProtocolError:
                    return None
                have_via = True
            out.append(line)
        elif key in ("from", "to", "call-id", "cseq"):
            if key == "to" and "tag=" in value.replace(" ", "").lower():
                have_to_tag = True
            if key == "to" and not have_to_tag:
                line = f"{line.rstrip()};tag={TAG_PREFIX}-{zlib.crc32(data):08x}"
            out.append(line)
    if not have_via:
        return None
    if server:
        out.append(f"Server: {server}")
    out.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(out).encode("utf-8", "surrogateescape")


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)
