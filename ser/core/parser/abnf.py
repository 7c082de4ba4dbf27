"""The SIP grammar, each rule written once as a regex with its RFC 3261 section.

Theory of operation: header lines are unfolded before any rule below runs
(RFC 3261 7.3.1: a CRLF followed by whitespace is replaced by one SP), so LWS
here is plain ``[ \\t]+``. Messages are decoded as UTF-8 with
``surrogateescape``: invalid bytes survive as lone surrogates and are encoded
back unchanged, and the rules that allow UTF8-NONASCII also allow those.
"""

from __future__ import annotations

import re

# 25.1 basic rules ----------------------------------------------------------
WS = r"[ \t]*"                                  # SWS after unfolding
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"
# word: token chars plus ( ) < > : \ DQUOTE / [ ] ? { }  (Call-ID, 20.8)
WORD = rf"[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+"
UTF8_NONASCII = r"\x80-\U0010ffff"              # includes surrogate escapes
# quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE
QDTEXT = rf"[ \t!#-\[\]-~{UTF8_NONASCII}]"
QUOTED_PAIR = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
# (runs of qdtext matched possessively: a run cannot end inside a quoted-pair
# or a quote, so this is the same language without per-character backtracking)
QUOTED = rf'"(?:{QDTEXT}++|{QUOTED_PAIR})*+"'

# 25.1 host / port ------------------------------------------------------------
IPV4 = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
IPV6REF = r"\[[0-9A-Fa-f:.]+\]"
# hostname: labels of alphanum and "-" (underscore tolerated, as deployed
# systems send it), optional trailing dot
HOSTNAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?)*\.?"
HOST = rf"(?:{IPV6REF}|{HOSTNAME})"
PORT = r"\d{1,5}"

# 7.1 / 7.2 first lines -------------------------------------------------------
SIP_VERSION = re.compile(r"SIP/(\d+)\.(\d+)", re.I)
STATUS_CODE = re.compile(r"[1-9]\d\d")
METHOD = re.compile(TOKEN)

# 19.1.1 SIP/SIPS URI ---------------------------------------------------------
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
HOSTPORT = re.compile(rf"({HOST})(?::({PORT}))?")
# user / password: unreserved / escaped / user-unreserved (& = + $ , ; ? /)
USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
PASSWORD = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# uri-parameter: pname [= pvalue], paramchar = param-unreserved / unreserved / escaped
PARAMCHAR = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})"
URI_PARAM = re.compile(rf";({PARAMCHAR}+)(?:=({PARAMCHAR}*))?")
# header = hname "=" hvalue, hnv-unreserved = [ ] / ? : + $
HNVCHAR = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})"
URI_HEADER = re.compile(rf"({HNVCHAR}+)=({HNVCHAR}*)")
# the common spelling of a SIP/SIPS URI in one rule: lowercase scheme, user
# without password, host, port, parameters, no headers (every other form
# goes through the rules above, one part at a time)
SIP_URI_SIMPLE = re.compile(
    rf"(sips?):(?:({USER.pattern})@)?({HOST})(?::({PORT}))?((?:;{PARAMCHAR}+(?:={PARAMCHAR}*)?)*)")
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+")

# 7.3.1 generic parameters: ;name[=token|host|quoted-string] -----------------
GENERIC_PARAM = re.compile(
    rf"{WS};{WS}({TOKEN})(?:{WS}={WS}({QUOTED}|[^ \t;,\"=]+))?{WS}")

# the common spelling of a parameter list: no whitespace, no quoted values
SIMPLE_PARAMS = re.compile(rf"(?:;{TOKEN}(?:=[^ \t;,\"=]+)?)+")

# 20.42 Via: the common spelling (no optional whitespace, no quoted or IPv6 values)
# (possessive: no part can give characters back to the next, which starts
# with a character the part cannot hold)
VIA_SIMPLE = re.compile(
    rf"SIP/2\.0/({TOKEN}) ([A-Za-z0-9.\-_]++)(?::({PORT}))?+"
    rf"((?:;{TOKEN}(?:=[{TOKEN_CHARS}:\[\]]++)?+)*+)")
# 20.42 Via -------------------------------------------------------------------
VIA = re.compile(
    rf"{WS}({TOKEN}){WS}/{WS}({TOKEN}){WS}/{WS}({TOKEN})[ \t]+"
    rf"({HOST})(?:{WS}:{WS}({PORT}))?{WS}")

# 20.10 name-addr / addr-spec -------------------------------------------------
NAME_ADDR = re.compile(
    rf"{WS}({QUOTED}|(?:{TOKEN}(?:[ \t]+{TOKEN})*)?){WS}<([^<>\s]*)>{WS}")
ADDR_SPEC = re.compile(rf"{WS}([^ \t;,<>\"]+){WS}")

# 20.16 CSeq, 20.22 Max-Forwards, 20.14 Content-Length, 20.19 Expires ---------
CSEQ = re.compile(rf"{WS}(\d+)[ \t]+({TOKEN}){WS}")
DIGITS = re.compile(rf"{WS}(\d+){WS}")
# 20.8 Call-ID: word ["@" word]
CALLID = re.compile(rf"{WORD}(?:@{WORD})?")
# 20.17 Date: rfc1123-date, always "GMT"
DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d{2}:\d{2}:\d{2} GMT")

# 25.1 auth: auth-scheme LWS auth-param *(COMMA auth-param) ------------------
AUTH_SCHEME = re.compile(rf"{WS}({TOKEN})(?:[ \t]+|$)")
AUTH_PARAM = re.compile(rf"{WS}({TOKEN}){WS}={WS}({QUOTED}|[^ \t,\"]+){WS}(?:,|$)")

QUOTED_PAIR_RE = re.compile(r"\\(.)", re.S)


def unquote(text: str) -> str:
    """The content of a quoted-string, quoted-pairs resolved."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
        if "\\" in text:
            text = QUOTED_PAIR_RE.sub(r"\1", text)
    return text


def unescape(text: str) -> str:
    """RFC 3261 19.1.2 %HH escapes resolved (bytes taken as UTF-8)."""
    if "%" not in text:
        return text
    raw = ESCAPE.sub(lambda m: chr(int(m.group(1), 16) | 0xDC00)
                     if int(m.group(1), 16) >= 0x80 else chr(int(m.group(1), 16)), text)
    # escaped bytes >= 0x80 were mapped to surrogates; rebuild them as UTF-8
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
