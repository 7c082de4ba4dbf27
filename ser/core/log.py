"""Logging: Kamailio's levels, stderr (-E) or syslog, and rate-limited lines.

Kamailio's ``debug`` levels map to Python's: -5 alert .. -1 error, 0 warning,
1 notice, 2 info, 3 debug. Every process logs through the ``ser`` logger;
lines carry the process id and role so that a log from many workers reads
like Kamailio's (`` 12(3456) ERROR: <core> ...``).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
ALERT = 60
logging.addLevelName(ALERT, "ALERT")

# Kamailio debug level -> Python logging level
_LEVELS = {-5: ALERT, -4: logging.CRITICAL, -3: logging.CRITICAL, -2: logging.ERROR,
           -1: logging.ERROR, 0: logging.WARNING, 1: NOTICE, 2: logging.INFO,
           3: logging.DEBUG}
# xlog level names
XLOG_LEVELS = {"L_ALERT": ALERT, "L_BUG": logging.CRITICAL, "L_CRIT": logging.CRITICAL,
               "L_ERR": logging.ERROR, "L_WARN": logging.WARNING, "L_NOTICE": NOTICE,
               "L_INFO": logging.INFO, "L_DBG": logging.DEBUG}

log = logging.getLogger("ser")


def level_of(debug: int) -> int:
    return _LEVELS[max(-5, min(3, debug))]


class _Formatter(logging.Formatter):
    role = "main"

    def format(self, record: logging.LogRecord) -> str:
        record.role = self.role
        return super().format(record)


_formatter = _Formatter("%(asctime)s %(process)d/%(role)s %(levelname)s: %(message)s",
                        "%H:%M:%S")


SYSLOG_PATH = "/dev/log"      # the local syslog socket; without it ser logs to stderr


def setup(debug: int, to_stderr: bool, facility: str = "LOG_DAEMON",
          name: str = "ser") -> None:
    """Configure the ``ser`` logger once, in the master before forking."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(level_of(debug))
    handler: logging.Handler
    if to_stderr or not os.path.exists(SYSLOG_PATH):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter)
    else:
        fac = getattr(logging.handlers.SysLogHandler, facility, None)
        handler = logging.handlers.SysLogHandler(
            SYSLOG_PATH, fac if isinstance(fac, int) else logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(levelname)s: %(message)s"))
    log.addHandler(handler)


def set_role(role: str) -> None:
    """The role shown in this process's log lines (after a fork)."""
    _Formatter.role = role


def set_level(debug: int) -> None:
    log.setLevel(level_of(debug))


class RateLimited:
    """At most ``burst`` lines per ``interval`` seconds; the rest are counted and
    reported in the next line that gets through."""

    __slots__ = ("interval", "burst", "_start", "_count", "_suppressed")

    def __init__(self, interval: float = 10.0, burst: int = 5) -> None:
        self.interval = interval
        self.burst = burst
        self._start = 0.0
        self._count = 0
        self._suppressed = 0

    def __call__(self, level: int, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._start > self.interval:
            self._start = now
            self._count = 0
        self._count += 1
        if self._count > self.burst:
            self._suppressed += 1
            return
        if self._suppressed:
            fmt += f" ({self._suppressed} similar lines suppressed)"
            self._suppressed = 0
        log.log(level, fmt, *args)
