"""Daemon benchmark: sipp OPTIONS against ser (and Kamailio when installed).

    python -m bench.daemon [--rate 2000] [--seconds 10] [--workers 4] [--no-max]

Prints the server CPU microseconds per request (user + system time summed
over every server process, from /proc) at the given rate, the same against
Kamailio with an equivalent config and ``-x tlsf`` when ``kamailio`` is on
PATH, their ratio, and the highest rate each sustains with < 1% failures.
Quote ratios, not absolute times: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SCENARIO = HERE / "scenarios" / "options.xml"
TICK = os.sysconf("SC_CLK_TCK")

SER_CFG = """\
#!KAMAILIO
debug=0
children={workers}
tcp_children=1
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "textops.so"
request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""
KAM_CFG = """\
#!KAMAILIO
debug=0
children={workers}
disable_tcp=yes
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "textops.so"
request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out = [pid]
    i = 0
    while i < len(out):
        out += [p for p, pp in parents.items() if pp == out[i]]
        i += 1
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of ``pids`` (user + system), from the scheduler's nanosecond
    count in /proc/PID/schedstat; /proc/PID/stat's clock ticks (10 ms, which
    quantize a short run badly) where schedstat is missing."""
    total = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, workdir: str) -> None:
        self.name = name
        self.port = port
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        self.pids = tree(self.proc.pid)

    def _wait_ready(self) -> None:
        probe = (f"OPTIONS sip:ping@127.0.0.1:{self.port} SIP/2.0\r\n"
                 f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe;rport\r\n"
                 f"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:ping@127.0.0.1>\r\n"
                 f"Call-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        try:
            for _ in range(150):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                s.sendto(probe, ("127.0.0.1", self.port))
                try:
                    s.recv(4096)
                    time.sleep(0.5)       # the other workers finish their start too
                    return
                except TimeoutError:
                    pass
            raise RuntimeError(f"{self.name} did not answer")
        finally:
            s.close()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def sipp(port: int, rate: int, calls: int, workdir: str, scenario: Path = SCENARIO,
         extra: tuple[str, ...] = (), slack: int = 20) -> tuple[int, int]:
    """Run a sipp client scenario to completion: (successful, failed) calls."""
    cmd = ["sipp", "-sf", str(scenario), "-m", str(calls), "-r", str(rate), "-i", "127.0.0.1",
           "-nostdin", "-timeout", f"{calls // rate + slack}s", "-max_socket", "1000",
           *extra, f"127.0.0.1:{port}"]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    text = out.stdout + out.stderr
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    if not ok or not failed:
        return 0, calls
    return int(ok.group(1)), int(failed.group(1))


def measure(server: Server, rate: int, seconds: float, workdir: str) -> tuple[float, float]:
    """(CPU microseconds per request, failure ratio) for one run at ``rate``."""
    calls = int(rate * seconds)
    before = cpu_seconds(server.pids)
    ok, failed = sipp(server.port, rate, calls, workdir)
    used = cpu_seconds(server.pids) - before
    return (used / max(ok, 1)) * 1e6, failed / max(calls, 1)


def highest_rate(server: Server, workdir: str, start: int = 2000, seconds: float = 3.0,
                 limit: int = 60000) -> int:
    best = 0
    rate = start
    while rate <= limit:
        _, fail = measure(server, rate, seconds, workdir)
        if fail >= 0.01:
            break
        best = rate
        rate = int(rate * 1.5)
    return best


def start_ser(port: int, workers: int, workdir: str) -> Server:
    cfg = Path(workdir) / "ser-bench.cfg"
    cfg.write_text(SER_CFG.format(port=port, workers=workers))
    ser = str(Path(sys.executable).with_name("ser"))
    return Server("ser", [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", "64"],
                  port, workdir)


def start_kamailio(port: int, workers: int, workdir: str) -> Server | None:
    kam = shutil.which("kamailio") or (os.path.exists("/usr/sbin/kamailio") and "/usr/sbin/kamailio")
    if not kam:
        return None
    cfg = Path(workdir) / "kamailio-bench.cfg"
    cfg.write_text(KAM_CFG.format(port=port, workers=workers))
    return Server("kamailio", [str(kam), "-DD", "-E", "-x", "tlsf", "-m", "64", "-f", str(cfg),
                               "-Y", workdir, "-P", os.path.join(workdir, "kam.pid")],
                  port, workdir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.daemon")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-max", action="store_true", help="skip the highest-rate search")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("sipp"):
        print("bench.daemon: sipp is not installed (apt-get install sip-tester)")
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ser-bench-") as workdir:
        for name, starter in (("ser", start_ser), ("kamailio", start_kamailio)):
            server = starter(free_port(), args.workers, workdir)
            if server is None:
                print("kamailio: not installed (apt-get install kamailio), no ratio")
                continue
            try:
                r: dict[str, float] = {}
                for rate in sorted({args.rate, 10000}):
                    us, fail = measure(server, rate, args.seconds, workdir)
                    r[f"us@{rate}"] = us
                    r[f"fail@{rate}"] = fail
                    print(f"{name:9s} OPTIONS at {rate:6d}/s, {args.workers} workers: "
                          f"{us:7.1f} us CPU per request, {fail * 100:.2f}% failed")
                if not args.no_max:
                    r["max"] = highest_rate(server, workdir)
                    print(f"{name:9s} highest rate with < 1% failures: {r['max']:.0f}/s "
                          "(sipp shares the 2 cores)")
                results[name] = r
            finally:
                server.stop()
    if "kamailio" in results:
        s, k = results["ser"], results["kamailio"]
        for key in s:
            if key.startswith("us@") and k.get(key):
                print(f"ratio ser/kamailio CPU per request at {key[3:]}/s: {s[key] / k[key]:.2f}")


if __name__ == "__main__":
    main()
