"""Sans-IO SIP parsing: bytes in, a read-only message view out; no sockets.

Public API (everything else in this package is private):

    parse_message(data: bytes, *, strict: bool = False) -> SipMessage
        A request or a reply. Raises ProtocolError (and nothing else) on bad
        input; ``strict`` also parses every header with a typed form.

    SipMessage (read-only view; header bodies parsed on first access, cached)
        .is_request            bool
        .method                str   request method, or the CSeq method of a reply
        .ruri                  str   Request-URI as received (requests)
        .uri                   SipURI | TelURI | AbsoluteURI  (parsed Request-URI)
        .status, .reason       int, str (replies)
        .version               str   "SIP/2.0"
        .header(name)          str | None   first value of a header (any case,
                                            compact or long name)
        .headers(name)         list[str]    every value, split at top-level commas
                                            for list headers (Via, Contact, Route...)
        .fields()              list[tuple[str, str]]  (name as written, value)
        .via / .vias           Via   (top / all), .from_ / .to -> NameAddr
        .call_id  str, .cseq -> CSeq(num, method), .max_forwards int | None,
        .content_length int | None, .expires int | None, .contacts list[NameAddr],
        .star_contact bool, .routes / .record_routes list[NameAddr],
        .authorization / .proxy_authorization list[Credentials]
        .body                  bytes
        .raw                   bytes (the message as received)

    Edits (recorded, applied once by serialize()):
        msg.add_header(name, value, *, first=False), msg.remove_header(name),
        msg.replace_header(name, value), msg.set_ruri(uri), msg.add_via(value),
        msg.remove_top_via(), msg.set_body(body, content_type=None),
        msg.serialize() -> bytes

    build_reply(request, code, reason, *, to_tag=None, headers=(), body=b"",
                server=None) -> bytes
    StreamFramer(max_size=...)      feed(bytes) -> list[bytes] of whole messages
    ProtocolError(status, reason)   status None means: no reply is possible
    parse_uri(text) -> SipURI | TelURI | AbsoluteURI
"""

from .errors import ProtocolError
from .framer import StreamFramer
from .hdrs import COMPACT, Credentials, CSeq, NameAddr, Via, canonical_name, split_list
from .msg import SipMessage, parse_message
from .reply import build_reply, default_to_tag
from .uri import URI, AbsoluteURI, SipURI, TelURI, parse_uri

__all__ = [
    "COMPACT", "URI", "AbsoluteURI", "CSeq", "Credentials", "NameAddr", "ProtocolError",
    "SipMessage", "SipURI", "StreamFramer", "TelURI", "Via", "build_reply",
    "canonical_name", "default_to_tag", "parse_message", "parse_uri", "split_list",
]
