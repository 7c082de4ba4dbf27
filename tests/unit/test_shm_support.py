"""Helpers for the shm tests (no tests here): unique segments and real
forked processes that always end in ``os._exit``, waited for with a deadline
so that a wedged lock fails a test instead of hanging it."""

from __future__ import annotations

import os
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ser.shm import Shm, segment_name


def new_shm(size: int = 4 << 20, **kw: int) -> Shm:
    return Shm.create(segment_name("test-" + uuid.uuid4().hex[:10]), size, **kw)


@contextmanager
def temp_shm(size: int = 4 << 20, **kw: int) -> Iterator[Shm]:
    shm = new_shm(size, **kw)
    name = shm.arena.name
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()
        assert not os.path.exists("/dev/shm" + name)


def fork(fn: Callable[..., object], *args: object) -> int:
    """Run ``fn(*args)`` in a child; exit status 0 if it returned, 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 20.0) -> int:
    """The child's exit code (negative: killed by that signal). A child still
    running after ``timeout`` seconds is killed and the test fails."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {timeout}s (wedged?)")
        time.sleep(0.005)


def run_children(n: int, fn: Callable[[int], object], timeout: float = 60.0) -> None:
    """``fn(rank)`` in ``n`` children at once (ranks 1..n); all must succeed."""
    pids = [fork(fn, rank) for rank in range(1, n + 1)]
    codes = [wait(pid, timeout) for pid in pids]
    assert codes == [0] * n


def kill(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return wait(pid)
