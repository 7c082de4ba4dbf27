"""The control FIFO writes a reply of any size to a slower reader."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ser.core.ctl import _write_all


def test_a_reply_larger_than_the_pipe_arrives_whole():
    r, w = os.pipe()
    os.set_blocking(w, False)
    data = os.urandom(1 << 20)
    got = bytearray()

    def reader() -> None:
        while len(got) < len(data):
            time.sleep(0.001)
            got.extend(os.read(r, 65536))

    t = threading.Thread(target=reader)
    t.start()
    _write_all(w, data, 10.0)
    t.join(10)
    os.close(r)
    os.close(w)
    assert bytes(got) == data


def test_a_reader_that_stops_costs_at_most_the_timeout():
    r, w = os.pipe()
    os.set_blocking(w, False)
    t0 = time.monotonic()
    with pytest.raises(OSError):
        _write_all(w, b"x" * (1 << 20), 0.3)
    assert time.monotonic() - t0 < 2
    os.close(r)
    os.close(w)
