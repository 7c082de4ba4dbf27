"""POSIX extended regular expressions (as Kamailio's modules compile them) in Python.

Kamailio compiles script regexes with ``REG_EXTENDED|REG_ICASE|REG_NEWLINE``;
:func:`posix_re` gives the same meaning with :mod:`re`: case-insensitive,
``^``/``$`` at line ends, ``.`` not matching a newline, and the bracket
classes (``[[:digit:]]``) Python lacks translated.
"""

from __future__ import annotations

import re

_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
    "lower": "a-z", "space": r" \t\r\n\v\f", "blank": r" \t", "xdigit": "0-9A-Fa-f",
    "punct": r"!-/:-@\[-`{-~", "cntrl": r"\x00-\x1f\x7f", "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}
_CLASS_RE = re.compile(r"\[:([a-z]+):\]")
DEFAULT_FLAGS = re.IGNORECASE | re.MULTILINE


def posix_re(pattern: str, flags: int = DEFAULT_FLAGS) -> re.Pattern[str]:
    """Compile a POSIX extended regex; raises re.error when it is not valid."""
    def cls(m: re.Match[str]) -> str:
        try:
            return _CLASSES[m.group(1)]
        except KeyError:
            raise re.error(f"unknown character class [:{m.group(1)}:]") from None
    return re.compile(_CLASS_RE.sub(cls, pattern), flags)
