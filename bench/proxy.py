"""Proxied-call benchmark: sipp UAC -> ser (tm + rr) -> sipp UAS, over UDP.

    python -m bench.proxy [--rate 300] [--seconds 10] [--workers 4] [--no-max]

Prints the server CPU microseconds per complete call (INVITE to BYE's 200,
user + system time over every server process, from /proc) at ``--rate``
calls/s, the highest call rate with < 1% failed calls, and the shared memory
per transaction (ser only: ``core.shmmem`` used / ``tm.stats`` current,
sampled right after the run while the transactions linger in wt_timer). The
same for Kamailio with ``-x tlsf`` when installed, and the ratio. sipp's UAC
and UAS share the machine's cores with the server: say so when quoting the
highest rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.daemon import Server, cpu_seconds, free_port, sipp

HERE = Path(__file__).parent
UAC = HERE / "scenarios" / "uac_call.xml"
UAS = HERE / "scenarios" / "uas.xml"

CFG = """\
#!KAMAILIO
debug=0
children={workers}
{tcp}
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
{extra}
request_route {{
    if (is_method("OPTIONS") && uri==myself) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    if ($tt != $null) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    t_check_trans();
    if (is_method("INVITE")) record_route();
    $du = "sip:127.0.0.2:{uas}";
    t_relay();
}}
"""


def _sipp_uas(port: int, workdir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sipp", "-sf", str(UAS), "-i", "127.0.0.2", "-p", str(port),
                             "-nostdin", "-max_socket", "1000"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sipp_uac(port: int, rate: int, calls: int, workdir: str) -> tuple[int, int]:
    return sipp(port, rate, calls, workdir, UAC, ("-s", "bob", "-recv_timeout", "10000"), 40)


def measure(server: Server, rate: int, seconds: float, workdir: str) -> tuple[float, float]:
    """(CPU microseconds per complete call, failure ratio) of one run."""
    calls = max(1, int(rate * seconds))
    before = cpu_seconds(server.pids)
    ok, failed = _sipp_uac(server.port, rate, calls, workdir)
    used = cpu_seconds(server.pids) - before
    return used / max(ok, 1) * 1e6, (calls - ok) / calls


def highest_rate(server: Server, workdir: str, start: int, seconds: float) -> int:
    best, rate = 0, start
    while rate <= 20000:
        _, fail = measure(server, rate, seconds, workdir)
        if fail >= 0.01:
            break
        best = rate
        rate = int(rate * 1.4)
        time.sleep(6)            # the last run's transactions leave wt_timer
    return best


def _rpc(workdir: str, method: str) -> dict:
    from ser.serctl import call_dgram, request
    resp = call_dgram(os.path.join(workdir, "ser_rpc.sock"), request(method, []))
    return resp.get("result") or {}


def start_ser(port: int, uas: int, workers: int, workdir: str, mb: int) -> Server:
    cfg = Path(workdir) / "ser-proxy.cfg"
    cfg.write_text(CFG.format(port=port, uas=uas, workers=workers, tcp="tcp_children=1",
                              extra='loadmodule "jsonrpcs.so"'))
    ser = str(Path(sys.executable).with_name("ser"))
    return Server("ser", [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", str(mb)],
                  port, workdir)


def start_kamailio(port: int, uas: int, workers: int, workdir: str, mb: int) -> Server | None:
    kam = shutil.which("kamailio") or (os.path.exists("/usr/sbin/kamailio")
                                       and "/usr/sbin/kamailio")
    if not kam:
        return None
    cfg = Path(workdir) / "kamailio-proxy.cfg"
    cfg.write_text(CFG.format(port=port, uas=uas, workers=workers, tcp="disable_tcp=yes",
                              extra=""))
    return Server("kamailio", [str(kam), "-DD", "-E", "-x", "tlsf", "-m", str(mb), "-f",
                               str(cfg), "-Y", workdir, "-P",
                               os.path.join(workdir, "kam.pid")], port, workdir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.proxy")
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mem", type=int, default=256, help="shared memory (-m) in MB")
    p.add_argument("--no-max", action="store_true", help="skip the highest-rate search")
    p.add_argument("--only", choices=("ser", "kamailio"))
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("sipp"):
        print("bench.proxy: sipp is not installed (apt-get install sip-tester)")
        return
    results: dict[str, dict[str, float]] = {}
    for name, starter in (("ser", start_ser), ("kamailio", start_kamailio)):
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="ser-bench-proxy-") as workdir:
            uas_port = free_port()
            uas = _sipp_uas(uas_port, workdir)
            server = starter(free_port(), uas_port, args.workers, workdir, args.mem)
            if server is None:
                uas.terminate()
                uas.wait()
                print("kamailio: not installed, no ratio")
                continue
            try:
                r: dict[str, float] = {}
                if name == "ser":
                    base = _rpc(workdir, "core.shmmem").get("used", 0)
                us, fail = measure(server, args.rate, args.seconds, workdir)
                r["us"] = us
                print(f"{name:9s} proxied calls at {args.rate}/s, {args.workers} workers: "
                      f"{us:8.1f} us CPU per call, {fail * 100:.2f}% failed")
                if name == "ser":
                    cur = _rpc(workdir, "tm.stats").get("current", 0)
                    used = _rpc(workdir, "core.shmmem").get("used", 0)
                    if cur:
                        print(f"{name:9s} shared memory per transaction: "
                              f"{(used - base) / cur:.0f} bytes ({cur} in memory)")
                if not args.no_max:
                    time.sleep(6)
                    r["max"] = highest_rate(server, workdir, args.rate, 5.0)
                    print(f"{name:9s} highest call rate with < 1% failed calls: "
                          f"{r['max']:.0f}/s (sipp UAC and UAS run on the same cores)")
                results[name] = r
            finally:
                server.stop()
                uas.terminate()
                uas.wait()
    if "ser" in results and "kamailio" in results and results["kamailio"]["us"]:
        print(f"ratio ser/kamailio CPU per call at {args.rate}/s: "
              f"{results['ser']['us'] / results['kamailio']['us']:.2f}")


if __name__ == "__main__":
    main()
