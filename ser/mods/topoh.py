"""topoh: topology hiding by masking addresses in the message (Kamailio's topoh).

Theory of operation
-------------------
No script function: the module puts two byte hooks in the core (see
``ser.core.receive``): ``unmask`` runs on every received message before it is
parsed, ``mask`` on every message about to be sent. Both are pure functions
of the bytes and the key, so the module keeps no state: any ser with the same
``mask_key`` decodes what another one (or an earlier life of itself) encoded.

A value is encoded as ``base64url(tag + (value XOR keystream(key, tag)))``
where ``tag`` is the first 6 bytes of HMAC-SHA256(key, value): the same value
always gives the same text (retransmissions and the two directions of a
dialog agree), a changed or foreign text fails to decode, and the alphabet
(letters, digits, ``-``, ``_``) is valid in a token, a URI parameter and a
Call-ID.

Outgoing (``mask``):
  * requests: the whole Via stack becomes one Via
    ``SIP/2.0/<proto> <mask_ip>;branch=<ours>;rport;<vparam_name>=<vparam_prefix><enc>``.
    The branch stays in clear so the next hop matches CANCEL and ACK to the
    INVITE; everything else of every Via is in the encoded parameter.
  * Contact and Record-Route URIs (requests and replies) become
    ``sip:<mask_ip>;<uparam_name>=<uparam_prefix><enc(uri)>`` (``;lr`` kept
    on Record-Route entries); Route headers are left alone, they address the
    next hops.
  * with ``mask_callid``, the Call-ID becomes ``<callid_prefix><enc>`` toward
    the side that has only seen masked Call-IDs (see below).

Incoming (``unmask``): a reply whose top Via carries the encoded parameter
gets its Via stack back; the Request-URI, Route, Record-Route and Contact
URIs with the masked form, and a masked Call-ID, are decoded; so the script,
tm and rr see clear values.

Call-ID direction. The caller's side sees clear Call-IDs, the callee's side
masked ones. A request that arrived with a masked Call-ID gets a marker
parameter (``thcm``) on its top Via when it is unmasked. Going out, a request
whose previous hop's Via (the second one) has the marker came from the masked
side and keeps the clear Call-ID; any other request is masked. A reply is
masked when the Via of its receiver (the top one) has the marker, which is
then removed. The marker never leaves ser in clear: in requests it is inside
the encoded Via stack, in replies it is stripped.

With ``sanity_checks``, a received message with a masked field that does not
decode (foreign key, tampering) is dropped; without, the field is left as it
is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from typing import Any

from ser.core.log import RateLimited
from ser.core.module import Module, ModuleInstance, Param
from ser.core.parser import ProtocolError, SipMessage, parse_message

_log = RateLimited(interval=10.0, burst=5)
TAG = 6
MARK = "thcm"
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")


class DecodeError(ValueError):
    """A masked text that this key did not produce."""


class Codec:
    """Deterministic, authenticated, SIP-safe encoding of strings under one key."""

    def __init__(self, key: str) -> None:
        self.key = key.encode("utf-8")

    def _stream(self, tag: bytes, n: int) -> bytes:
        out = bytearray()
        i = 0
        while len(out) < n:
            out += hashlib.sha256(self.key + tag + i.to_bytes(4, "big")).digest()
            i += 1
        return bytes(out[:n])

    def encode(self, text: str) -> str:
        data = text.encode("utf-8", "surrogateescape")
        tag = hmac.new(self.key, data, hashlib.sha256).digest()[:TAG]
        ct = bytes(a ^ b for a, b in zip(data, self._stream(tag, len(data))))
        return base64.urlsafe_b64encode(tag + ct).rstrip(b"=").decode("ascii")

    def decode(self, text: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise DecodeError("not base64url") from None
        if len(raw) < TAG:
            raise DecodeError("too short")
        tag, ct = raw[:TAG], raw[TAG:]
        data = bytes(a ^ b for a, b in zip(ct, self._stream(tag, len(ct))))
        if not hmac.compare_digest(hmac.new(self.key, data, hashlib.sha256).digest()[:TAG], tag):
            raise DecodeError("bad tag")
        return data.decode("utf-8", "surrogateescape")


class Topoh:
    """The masking rules of one configuration (parameters and key)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.codec = Codec(str(params["mask_key"]))
        self.ip = str(params["mask_ip"])
        self.mask_callid = bool(params["mask_callid"])
        self.uparam = str(params["uparam_name"])
        self.uprefix = str(params["uparam_prefix"])
        self.vparam = str(params["vparam_name"])
        self.vprefix = str(params["vparam_prefix"])
        self.cprefix = str(params["callid_prefix"])
        self.sanity = bool(params["sanity_checks"])
        self._upat = re.compile(r";\s*" + re.escape(self.uparam) + r"=" +
                                re.escape(self.uprefix) + r"([A-Za-z0-9_-]+)", re.I)

    # -- single values ---------------------------------------------------------------
    def mask_uri(self, uri: str, lr: bool = False) -> str:
        if self.is_masked_uri(uri):
            return uri
        scheme = "sips" if uri[:5].lower() == "sips:" else "sip"
        m = re.search(r";\s*transport=([A-Za-z]+)", uri, re.I)
        tp = f";transport={m.group(1)}" if m else ""
        return (f"{scheme}:{self.ip}{tp}{';lr' if lr else ''};{self.uparam}="
                f"{self.uprefix}{self.codec.encode(uri)}")

    def is_masked_uri(self, uri: str) -> bool:
        return self._host(uri) == self.ip.lower() and self._upat.search(uri) is not None

    def unmask_uri(self, uri: str) -> str:
        """The clear URI of a masked one (DecodeError if it does not decode);
        any other URI as it is."""
        if not self.is_masked_uri(uri):
            return uri
        m = self._upat.search(uri)
        assert m is not None
        return self.codec.decode(m.group(1))

    def mask_call_id(self, cid: str) -> str:
        if cid.startswith(self.cprefix):
            return cid
        return self.cprefix + self.codec.encode(cid)

    def unmask_call_id(self, cid: str) -> str:
        if not cid.startswith(self.cprefix):
            return cid
        return self.codec.decode(cid[len(self.cprefix):])

    def mask_vias(self, vias: list[str], proto: str, branch: str | None) -> str:
        b = f";branch={branch}" if branch else ""
        enc = self.codec.encode("\n".join(vias))
        return f"SIP/2.0/{proto.upper()} {self.ip}{b};rport;{self.vparam}={self.vprefix}{enc}"

    def unmask_vias(self, via: str) -> list[str] | None:
        """The Via stack hidden in a masked Via, or None if it is not one."""
        enc = _param(via, self.vparam)
        if enc is None or not enc.startswith(self.vprefix):
            return None
        return self.codec.decode(enc[len(self.vprefix):]).split("\n")

    @staticmethod
    def _host(uri: str) -> str:
        rest = uri.split(":", 1)[1] if ":" in uri else uri
        rest = rest.split("@", 1)[-1] if "@" in rest.split(";", 1)[0] else rest
        m = re.match(r"\[[^\]]*\]|[^:;?>]*", rest)
        return m.group(0).lower() if m else ""

    # -- whole messages ----------------------------------------------------------------
    def mask(self, data: bytes, dest: Any = None) -> bytes | None:
        msg = _parse(data)
        if msg is None:
            return data
        try:
            self._mask(msg)
        except (ProtocolError, ValueError) as e:
            _log(logging.WARNING, "topoh: cannot mask a message to %s: %s", dest, e)
            return data
        return msg.serialize() if msg.changed else data

    def _mask(self, msg: SipMessage) -> None:
        if msg.is_request:
            vias = msg.headers("via")
            if vias and not (len(vias) == 1 and self.unmask_vias_safe(vias[0])):
                top = msg.via
                proto = top.transport if top is not None else "UDP"
                branch = top.branch if top is not None else None
                msg.replace_header("Via", self.mask_vias(vias, proto, branch))
            if self.mask_callid:
                cid = msg.call_id
                came_masked = len(vias) > 1 and _param(vias[1], MARK) is not None
                if cid and not came_masked:
                    msg.replace_header("Call-ID", self.mask_call_id(cid))
        else:
            vias = msg.headers("via")
            if vias and _param(vias[0], MARK) is not None:
                msg.replace_header("Via", ", ".join([_drop_param(vias[0], MARK), *vias[1:]]))
                cid = msg.call_id
                if cid:
                    msg.replace_header("Call-ID", self.mask_call_id(cid))
        self._rewrite(msg, "Contact", lambda u: self.mask_uri(u))
        self._rewrite(msg, "Record-Route", lambda u: self.mask_uri(u, lr=True))

    def unmask_vias_safe(self, via: str) -> bool:
        try:
            return self.unmask_vias(via) is not None
        except DecodeError:
            return False

    def unmask(self, data: bytes) -> bytes | None:
        msg = _parse(data)
        if msg is None:
            return data
        try:
            if msg.is_request:
                ruri = msg.ruri
                clear = self.unmask_uri(ruri)
                if clear != ruri:
                    msg.set_ruri(clear)
                self._rewrite(msg, "Route", self.unmask_uri)
            else:
                vias = msg.headers("via")
                stack = self.unmask_vias(vias[0]) if vias else None
                if stack is not None:
                    msg.replace_header("Via", ", ".join([*stack, *vias[1:]]))
            self._rewrite(msg, "Record-Route", self.unmask_uri)
            self._rewrite(msg, "Contact", self.unmask_uri)
            cid = msg.call_id
            if cid and cid.startswith(self.cprefix):
                msg.replace_header("Call-ID", self.unmask_call_id(cid))
                vias = msg.headers("via")
                if msg.is_request and vias and _param(vias[0], MARK) is None:
                    msg.replace_header("Via", ", ".join([f"{vias[0]};{MARK}", *vias[1:]]))
        except DecodeError as e:
            _log(logging.WARNING, "topoh: a masked field does not decode (%s)", e)
            return None if self.sanity else data
        except (ProtocolError, ValueError) as e:
            _log(logging.WARNING, "topoh: cannot unmask a message: %s", e)
            return data
        return msg.serialize() if msg.changed else data

    def _rewrite(self, msg: SipMessage, name: str, fn: Any) -> None:
        values = msg.headers(name)
        if not values or (name == "Contact" and values[0].strip() == "*"):
            return
        out = [_map_uri(v, fn) for v in values]
        if out != values:
            msg.replace_header(name, ", ".join(out))


def _parse(data: bytes) -> SipMessage | None:
    try:
        return parse_message(data)
    except ProtocolError:
        return None


def _map_uri(value: str, fn: Any) -> str:
    """A name-addr or addr-spec header value with its URI replaced by fn(uri)."""
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            return value
        return value[:lt + 1] + fn(value[lt + 1:gt]) + value[gt:]
    uri, sep, params = value.partition(";")
    new = fn(uri.strip())
    if new == uri.strip():
        return value
    # an addr-spec's parameters are header parameters: bracket the new URI
    return f"<{new}>" + (sep + params if sep else "")


def _param(via: str, name: str) -> str | None:
    """The value ('' for a flag) of a Via parameter, or None."""
    for p in split_params(via):
        k, _, v = p.partition("=")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def _drop_param(via: str, name: str) -> str:
    parts = via.split(";")
    return ";".join([parts[0], *[p for p in parts[1:]
                                  if p.partition("=")[0].strip().lower() != name.lower()]])


def split_params(via: str) -> list[str]:
    return via.split(";")[1:]


def child_init(inst: ModuleInstance, rank: int) -> None:
    th = Topoh(inst.params)
    inst.state["topoh"] = th
    inst.state["core_in"] = [th.unmask]
    inst.state["core_out"] = [th.mask]


def _token(v: object) -> str | None:
    return None if isinstance(v, str) and _TOKEN.fullmatch(v) else \
        "must be a non-empty SIP token (letters, digits, -.!%*_+`'~)"


def _prefix(v: object) -> str | None:
    return None if isinstance(v, str) and (v == "" or _TOKEN.fullmatch(v)) else \
        "must be a SIP token (letters, digits, -.!%*_+`'~)"


def _vparam(v: object) -> str | None:
    if isinstance(v, str) and v.lower() == "branch":
        return "ser keeps the branch in clear; use another parameter name"
    return _token(v)


def _callid_prefix(v: object) -> str | None:
    if isinstance(v, str) and v and all(c not in v for c in " \t\r\n\"<>@"):
        return None
    return "must be a non-empty Call-ID word"


def _key(v: object) -> str | None:
    return None if isinstance(v, str) and v else "must not be empty"


def _ip(v: object) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", v) else \
        "must be an IP address or host name"


exports = Module(
    name="topoh",
    doc="Topology hiding: masks Via, Contact, Record-Route (and the Call-ID when asked) "
        "of every message leaving ser and unmasks them on the way back, without state "
        "(any ser with the same key decodes). No script function.",
    params=(
        Param("mask_key", str, "_static_value_",
              "The secret the masked values are encoded with.", _key),
        Param("mask_ip", str, "127.0.0.8",
              "The address written in place of the hidden ones.", _ip),
        Param("mask_callid", int, 0, "1: mask the Call-ID too."),
        Param("uparam_name", str, "line",
              "The URI parameter that carries an encoded URI.", _token),
        Param("uparam_prefix", str, "sr-", "Prefix of the encoded URI parameter value.",
              _prefix),
        Param("vparam_name", str, "vsr",
              "The Via parameter that carries the encoded Via stack (Kamailio uses "
              "'branch'; ser keeps the branch in clear so CANCEL and ACK match).", _vparam),
        Param("vparam_prefix", str, "sr-", "Prefix of the encoded Via parameter value.",
              _prefix),
        Param("callid_prefix", str, "!!:", "Prefix of a masked Call-ID.", _callid_prefix),
        Param("sanity_checks", int, 0,
              "1: drop a received message whose masked fields do not decode with the key."),
    ),
    child_init=child_init,
)
