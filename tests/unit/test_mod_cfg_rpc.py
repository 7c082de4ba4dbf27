"""cfg_rpc over ser.core.cfgvars: shared values, generations, the local debug override."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from ser.core import log as logmod
from ser.core.cfgvars import NOTIFY_SIGNAL, CfgVars

from .test_shm_support import temp_shm


@pytest.fixture
def shm():
    level = logmod.log.level
    with temp_shm(1 << 20) as shm:
        yield shm
    logmod.log.setLevel(level)


@pytest.fixture
def cv(shm):
    return CfgVars.create(shm.arena, {"core.debug": 2})


def test_set_bumps_the_generation_and_update_applies_once(shm, cv):
    other = CfgVars(shm.arena, cv._base << 3, cv.initial)   # another process's view
    assert other.update() is True and other.update() is False
    cv.set("core", "debug", 3)
    assert other.get("core", "debug") == 3
    assert other.update() is True
    assert logmod.log.level == logging.DEBUG
    with pytest.raises(ValueError):
        cv.set("core", "debug", 9)
    with pytest.raises(KeyError):
        cv.set("core", "nosuch", 1)


def test_local_debug_wins_until_reset(cv):
    cv.set_local_debug(-1)
    cv.set("core", "debug", 3)
    cv.update()
    assert logmod.log.level == logging.ERROR
    cv.set_local_debug(None)
    assert logmod.log.level == logging.DEBUG



def test_the_signal_is_only_recorded_and_poll_applies_it(shm, cv):
    other = CfgVars(shm.arena, cv._base << 3, cv.initial)   # a worker's view
    other.update()
    level = logmod.log.level
    old = signal.getsignal(NOTIFY_SIGNAL)
    try:
        other.install_handler()
        cv.set("core", "debug", 3 if level != logging.DEBUG else 1)
        os.kill(os.getpid(), NOTIFY_SIGNAL)
        deadline = time.monotonic() + 5
        while not other.signalled:                        # the handler ran
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert logmod.log.level == level                 # ... and changed nothing
        assert other.poll() is True and other.signalled is False
        assert logmod.log.level != level
        assert other.poll() is False                     # nothing new
    finally:
        signal.signal(NOTIFY_SIGNAL, old)
