"""Where ser's log lines go: syslog (the local socket) by default, stderr with -E."""

from __future__ import annotations

import logging
import socket

import pytest

from ser.core import log as logmod


@pytest.fixture
def restore_logger():
    saved = (logmod.log.handlers[:], logmod.log.level, logmod.SYSLOG_PATH)
    yield
    for h in logmod.log.handlers:
        h.close()
    logmod.log.handlers[:], _, logmod.SYSLOG_PATH = saved
    logmod.log.setLevel(saved[1])


def test_syslog_by_default_with_the_facility(tmp_path, restore_logger):
    path = str(tmp_path / "log")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    logmod.SYSLOG_PATH = path
    try:
        logmod.setup(2, False, "LOG_LOCAL0")
        logmod.log.info("hello %s", "syslog")
        data = rx.recv(4096).decode()
    finally:
        rx.close()
    # <PRI> = LOCAL0 (16) * 8 + info (6); the program name and pid as syslog wants
    assert data.startswith("<134>ser[") and data.rstrip("\0").endswith("]: INFO: hello syslog")


def test_stderr_with_E_or_without_a_syslog_socket(tmp_path, capsys, restore_logger):
    logmod.SYSLOG_PATH = str(tmp_path / "log")          # no syslog here
    for to_stderr in (True, False):
        logmod.setup(2, to_stderr)
        assert isinstance(logmod.log.handlers[0], logging.StreamHandler)
        logmod.log.warning("to stderr %d", to_stderr)
    err = capsys.readouterr().err
    assert "WARNING: to stderr 1" in err and "WARNING: to stderr 0" in err
