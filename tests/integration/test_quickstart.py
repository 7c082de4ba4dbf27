"""The README's quick start, run word for word.

The commands are the ``sh`` code blocks under ``## Quick start`` in
README.md, in order. They run in a copy of the checkout in a temporary
directory (its ``.venv`` a link to this checkout's), with only what a test
must change: the SIP ports 5060/5070/5071 become free ports, ``make run``
gets ``SER_ARGS`` for the port and a pid file (and runs in the background,
stopped by that pid), and make never re-installs the shared ``.venv``
(``-o setup.cfg -o pyproject.toml``). ``export`` lines carry over to the
commands after them; a command ending in ``&`` runs in the background. Each
step's visible result is checked.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import free_port, need, wait_udp_bound

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NO_REINSTALL = "-o setup.cfg -o pyproject.toml"


def quickstart_commands(text: str) -> list[str]:
    """The lines of the ``sh`` blocks of the ``## Quick start`` section."""
    m = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Quick start' section"
    cmds = []
    for block in re.findall(r"^```sh\n(.*?)^```$", m.group(1), re.M | re.S):
        cmds += [ln.strip() for ln in block.splitlines() if ln.strip()]
    return cmds


def _copy_checkout(dst: Path) -> None:
    shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "run", "__pycache__", "*.egg-info", ".*_cache"))
    os.symlink(ROOT / ".venv", dst / ".venv")


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        assert proc.poll() is None, f"make run exited {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"ser not ready after {timeout} s:\n{log.read_text()}")


def test_readme_quickstart(tmp_path):
    for tool in ("sipp", "sipsak", "make"):
        need(tool)
    cmds = quickstart_commands(README.read_text())
    # the steps the README promises, in this order
    kinds = [_kind(c) for c in cmds]
    assert kinds == ["deps", "install", "run", "export", "ping", "add", "add", "show",
                     "register", "register", "ul", "uas", "call", "monitor"], cmds
    work = tmp_path / "ser"
    _copy_checkout(work)
    ports = {"5060": str(_short_port()), "5070": str(free_port()), "5071": str(free_port())}
    pid_file = tmp_path / "ser.pid"
    env = {k: v for k, v in os.environ.items() if k not in ("SER_DB_URL", "SERCTLRC")}
    env["HOME"] = str(tmp_path)                   # no ~/.serctlrc of the one running the test
    exports: list[str] = []
    background: list[subprocess.Popen] = []
    ser_log = tmp_path / "make-run.log"
    make_run = None
    ser_pid = 0

    def sh(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "\n".join([*exports, cmd])], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    try:
        for cmd, kind in zip(cmds, kinds):
            cmd = re.sub(r"\b(5060|5070|5071)\b", lambda m: ports[m.group(1)], cmd)
            if kind in ("deps", "install", "run"):
                cmd = cmd.replace("make ", f"make {NO_REINSTALL} ", 1)
            if kind == "run":
                cmd += f' SER_ARGS="-A SIP_PORT={ports["5060"]} -P {pid_file}"'
                with open(ser_log, "wb") as log:
                    make_run = subprocess.Popen(["bash", "-c", cmd], cwd=work, env=env,
                                                stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
                ser_pid = _wait_for(pid_file, make_run, ser_log)
                assert re.search(r"db: created sqlite://\S+/run/ser\.db with Kamailio's schema",
                                 ser_log.read_text()), ser_log.read_text()
                continue
            if kind == "export":
                exports.append(cmd)
                continue
            if cmd.endswith("&"):
                background.append(subprocess.Popen(
                    ["bash", "-c", "\n".join([*exports, "exec " + cmd[:-1]])], cwd=work,
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL))
                wait_udp_bound(int(ports["5070"]))
                continue
            r = sh(cmd)
            out = r.stdout + r.stderr
            assert r.returncode == 0, f"{cmd}\n{out[-3000:]}\n{ser_log.read_text()[-3000:]}"
            _check(kind, cmd, out, ports)
        for p in background:           # bob's phone answered its call and ends
            assert p.wait(20) == 0
    finally:
        for p in background:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        if ser_pid:
            os.kill(ser_pid, signal.SIGTERM)
        if make_run is not None:
            try:
                make_run.wait(20)
            except subprocess.TimeoutExpired:
                make_run.kill()
                make_run.wait()
    assert make_run is not None and "ser stopped" in ser_log.read_text()


def _kind(cmd: str) -> str:
    rules = [("make deps", "deps"), ("make install", "install"), ("make run", "run"),
             ("export ", "export"), ("sipsak ", "ping"), ("serctl add ", "add"),
             ("serctl show", "show"), ("register_user.xml", "register"),
             ("ul show", "ul"), ("uas.xml", "uas"), ("call_user.xml", "call"),
             ("monitor", "monitor")]
    return next((k for s, k in rules if s in cmd), "?")


def _check(kind: str, cmd: str, out: str, ports: dict[str, str]) -> None:
    if kind == "ping":
        assert "SIP/2.0 200 Keepalive" in out, out
    elif kind == "add":
        user = re.search(r"add (\S+)", cmd).group(1)
        assert f"added {user}" in out, out
    elif kind == "show":
        assert re.search(r"^alice@127\.0\.0\.1  password=alicepw", out, re.M), out
        assert re.search(r"^bob@127\.0\.0\.1  password=bobpw", out, re.M), out
    elif kind == "register":
        assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+1\b", out), out[-3000:]
    elif kind == "ul":
        for user, port in (("alice", ports["5071"]), ("bob", ports["5070"])):
            assert f'"Address": "sip:{user}@127.0.0.1:{port}"' in out, out
    elif kind == "call":
        assert re.search(r"Successful call\s+\|\s+\d+\s+\|\s+1\b", out), out[-3000:]
    elif kind == "monitor":
        assert out.count("ser monitor --") == 3, out
        assert re.search(r"^  contacts +2$", out, re.M), out
        assert re.search(r"^  transactions +\d+ +\(total [1-9]\d*\)$", out, re.M), out


def _short_port() -> int:
    """A free UDP+TCP port below 10000: sipsak 0.9.8 cuts the last digit of a
    5-digit port off a request URI without a user (sip:127.0.0.1:34883 is
    sent as sip:127.0.0.1:3488)."""
    for _ in range(200):
        port = random.randrange(6000, 10000)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", port))
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port
    raise RuntimeError("no free port below 10000")

