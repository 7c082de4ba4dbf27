"""xlog: formatted log messages (Kamailio's xlog module).

``xlog([level,] format)``, ``xdbg(format)``; the level is ``L_ALERT`` ..
``L_DBG`` (default ``L_ERR``). Messages go to the ``ser.script`` logger.
"""

from __future__ import annotations

import logging
from typing import Any

from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param

LEVELS = {"L_ALERT": -5, "L_BUG": -4, "L_CRIT2": -3, "L_CRIT": -2, "L_ERR": -1,
          "L_WARN": 0, "L_NOTICE": 1, "L_INFO": 2, "L_DBG": 3}
_PY_LEVEL = {-5: logging.CRITICAL, -4: logging.CRITICAL, -3: logging.CRITICAL,
             -2: logging.CRITICAL, -1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO,
             2: logging.INFO, 3: logging.DEBUG}
log = logging.getLogger("ser.script")


def _xlog_fixup(args: list[FixedArg]) -> list[FixedArg]:
    if len(args) == 1:
        return [FixedArg(const=LEVELS["L_ERR"]), args[0]]
    level = args[0]
    if not level.is_const:
        raise FixupError("the log level must be a constant (L_ALERT .. L_DBG)", 0)
    name = str(level.const)
    if name not in LEVELS:
        import difflib
        close = difflib.get_close_matches(name, LEVELS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FixupError(f"unknown log level '{name}'{hint}", 0)
    return [FixedArg(const=LEVELS[name], pos=level.pos, text=level.text), args[1]]


def xlog(ctx: Any, level: int, text: str) -> int:
    log.log(_PY_LEVEL[level], "%s", text.rstrip("\n"))
    return 1


def xdbg(ctx: Any, text: str) -> int:
    log.debug("%s", text.rstrip("\n"))
    return 1


exports = Module(
    name="xlog",
    doc="Log messages with pseudo-variables.",
    params=(
        Param("buf_size", int, 4096, "Accepted for compatibility.", ignored=True),
        Param("force_color", int, 0, "Colour the messages."),
        Param("log_facility", str, "LOG_DAEMON", "Syslog facility of xlog messages."),
        Param("prefix", str, "<script>: ", "Prefix of the messages."),
    ),
    functions=(
        Function("xlog", xlog, (Arg("level_or_format"), Arg("format", optional=True)),
                 fixup=_xlog_fixup, doc="xlog([level,] format): log a formatted message."),
        Function("xdbg", xdbg, (Arg("format"),), doc="Log a formatted message at L_DBG."),
    ),
)
