"""Starting the real ser daemon on loopback ports, and talking to it.

Every test that starts ser gets a :class:`SerProcess`: a private runtime
directory, free ports on 127.0.0.1, the master's log in a file, and a stop
(by pid) that checks every child was reaped and nothing was left in
/dev/shm or the runtime directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ser.serctl import call_dgram, call_fifo, request

SER = str(Path(sys.executable).with_name("ser"))
SERCTL = str(Path(sys.executable).with_name("serctl"))


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((host, 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((host, port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")


def wait_udp_bound(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
    """Wait until some process (a sipp started in the background) has bound
    UDP ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((host, port))
        except OSError:
            return
        finally:
            s.close()
        time.sleep(0.05)
    raise AssertionError(f"nothing bound {host}:{port} in {timeout} s")


def shm_segments() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith("ser-")}


BASE_CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}

loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"

request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("ACK")) {{
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""


class SerProcess:
    def __init__(self, tmp: Path, cfg_text: str, port: int, args: list[str]) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.rundir = tmp / "run"
        self.cfg = tmp / "ser.cfg"
        self.cfg.write_text(cfg_text)
        self.pid_file = tmp / "ser.pid"
        self.log_path = tmp / "ser.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.shm_before = shm_segments()

    @property
    def sock_path(self) -> str:
        return str(self.rundir / "ser_rpc.sock")

    @property
    def fifo_path(self) -> str:
        return str(self.rundir / "ser_rpc.fifo")

    def command(self, foreground: bool = True) -> list[str]:
        cmd = [SER, "-f", str(self.cfg), "-Y", str(self.rundir), "-P", str(self.pid_file)]
        if foreground:
            cmd += ["-DD", "-E"]
        return cmd + self.args

    def start(self, timeout: float = 20.0) -> None:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_file.exists() and self.pid_file.read_text().strip():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ser exited with {self.proc.returncode}:\n{self.logtext()}")
            time.sleep(0.05)
        raise AssertionError(f"ser not ready after {timeout} s:\n{self.logtext()}")

    def logtext(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rpc(self, method: str, *params: object, fifo: bool = False) -> object:
        req = request(method, list(params))
        resp = call_fifo(self.fifo_path, req) if fifo else call_dgram(self.sock_path, req)
        if "error" in resp:
            raise AssertionError(f"rpc {method}: {resp['error']}")
        return resp["result"]

    def children(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.pid:
                    out.append(int(entry))
        return out

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the master; returns its exit code; checks the cleanup."""
        kids = self.children()
        os.kill(self.pid, signal.SIGTERM)
        code = self._wait(timeout)
        for k in kids:
            assert not Path(f"/proc/{k}").exists() or _is_zombie_or_gone(k), \
                f"child {k} still running after stop"
        return code

    def _wait(self, timeout: float) -> int:
        if self.proc is not None:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"ser did not stop in {timeout} s:\n{self.logtext()}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not Path(f"/proc/{self.pid}").exists() or _is_zombie_or_gone(self.pid):
                return 0
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("daemon did not stop")

    def kill_all(self) -> None:
        """Last-resort cleanup: every process of this server, by pid."""
        pids = self.children()
        for p in [self.pid, *pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait()


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def ser_factory(tmp_path: Path) -> Iterator:
    started: list[SerProcess] = []

    def make(cfg_text: str | None = None, args: list[str] | None = None,
             port: int | None = None, start: bool = True) -> SerProcess:
        port = port or free_port()
        text = (cfg_text or BASE_CFG).format(port=port)
        sp = SerProcess(tmp_path / f"ser{len(started)}", text, port, args or [])
        started.append(sp)
        if start:
            sp.start()
        return sp

    yield make
    for sp in started:
        if not sp.pid and sp.pid_file.exists():     # a daemon whose start was not seen
            try:
                sp.pid = int(sp.pid_file.read_text())
            except ValueError:
                pass
        if sp.pid and (Path(f"/proc/{sp.pid}").exists() and not _is_zombie_or_gone(sp.pid)):
            try:
                sp.stop()
            except AssertionError:
                sp.kill_all()


def sip_options(port: int, host: str = "127.0.0.1", branch: str = "z9hG4bKtest1",
                local_port: int = 0, transport: str = "UDP", extra: str = "") -> bytes:
    lp = local_port or 5999
    return (f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:{lp};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:tester@127.0.0.1>;tag=t1\r\n"
            f"To: <sip:ping@{host}>\r\n"
            f"Call-ID: {branch}@127.0.0.1\r\n"
            f"CSeq: 1 OPTIONS\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def udp_exchange(data: bytes, port: int, timeout: float = 2.0,
                 host: str = "127.0.0.1") -> bytes | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None
    finally:
        s.close()


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; `make test` installs it (scripts/deps.sh)")
    return path
