"""The process table: who is running, shared by every process.

The master creates it before forking (a shared anonymous mapping, inherited
by every child) and writes a row per rank when it forks or re-forks a child;
``core.ps`` in the control process reads it. A row is (pid, rank, role,
description, start time). Rank 0 is the master.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import time

_ROW = struct.Struct("<iid24s72s")     # pid, rank, started, role, description
MAX_PROCS = 512


class ProcTable:
    def __init__(self, size: int = MAX_PROCS) -> None:
        self.size = size
        self.mem = mmap.mmap(-1, _ROW.size * size, flags=mmap.MAP_SHARED)

    def set(self, rank: int, pid: int, role: str, desc: str) -> None:
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} out of range")
        _ROW.pack_into(self.mem, rank * _ROW.size, pid, rank, time.time(),
                       role.encode()[:24], desc.encode()[:72])

    def clear(self, rank: int) -> None:
        _ROW.pack_into(self.mem, rank * _ROW.size, 0, 0, 0.0, b"", b"")

    def rows(self) -> list[dict[str, object]]:
        out = []
        for rank in range(self.size):
            pid, r, started, role, desc = _ROW.unpack_from(self.mem, rank * _ROW.size)
            if pid:
                out.append({"IDX": r, "PID": pid, "ROLE": role.rstrip(b"\0").decode(),
                            "DSC": desc.rstrip(b"\0").decode(), "STARTED": started})
        return out

    def pid_of(self, rank: int) -> int:
        return _ROW.unpack_from(self.mem, rank * _ROW.size)[0]


_PR_SET_NAME = 15


def set_title(title: str) -> None:
    """The process name shown by ps/top (Linux: 15 characters of /proc/PID/comm)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass
