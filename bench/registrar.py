"""Registrar benchmark: REGISTER CPU per request and memory per contact,
ser against Kamailio (when installed).

    python -m bench.registrar [--rate 1000] [--contacts 50000] [--workers 4]

One sipp run registers ``--contacts`` distinct users (bench/scenarios/
register.xml, no auth, db_mode 0) at ``--rate``/s. Prints the server CPU
microseconds per REGISTER (user + system over every server process, from
/proc), the PSS summed over every server process when idle and after the
run, the increase per contact and the total per contact, and a linear
estimate for 1,000,000 contacts from the measured slope (not a full run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.daemon import Server, cpu_seconds, free_port, sipp, tree

HERE = Path(__file__).parent
SCENARIO = HERE / "scenarios" / "register.xml"

ROUTE = """\
request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("REGISTER")) {{
        save("location");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""
SER_CFG = """\
#!KAMAILIO
debug=0
children={workers}
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "hash_size", 14)
""" + ROUTE
KAM_CFG = """\
#!KAMAILIO
debug=0
children={workers}
disable_tcp=yes
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "hash_size", 14)
""" + ROUTE


def pss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_sipp(port: int, rate: int, calls: int, workdir: str) -> tuple[int, int]:
    return sipp(port, rate, calls, workdir, SCENARIO, slack=30)


def start(name: str, port: int, workers: int, workdir: str, mb: int) -> Server | None:
    if name == "ser":
        cfg = Path(workdir) / "ser-reg.cfg"
        cfg.write_text(SER_CFG.format(port=port, workers=workers))
        ser = str(Path(sys.executable).with_name("ser"))
        return Server("ser", [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", str(mb)],
                      port, workdir)
    kam = shutil.which("kamailio") or (os.path.exists("/usr/sbin/kamailio") and "/usr/sbin/kamailio")
    if not kam:
        return None
    cfg = Path(workdir) / "kamailio-reg.cfg"
    cfg.write_text(KAM_CFG.format(port=port, workers=workers))
    return Server("kamailio", [str(kam), "-DD", "-E", "-x", "tlsf", "-m", str(mb), "-f",
                               str(cfg), "-Y", workdir, "-P", os.path.join(workdir, "kam.pid")],
                  port, workdir)


def measure(server: Server, rate: int, contacts: int, workdir: str) -> dict[str, float]:
    pids = tree(server.proc.pid)
    idle = pss_kb(pids)
    before = cpu_seconds(pids)
    ok, failed = run_sipp(server.port, rate, contacts, workdir)
    used = cpu_seconds(pids) - before
    after = pss_kb(pids)
    inc = (after - idle) * 1024 / max(ok, 1)
    total = after * 1024 / max(ok, 1)
    return {"us": used / max(ok, 1) * 1e6, "ok": ok, "failed": failed, "idle_kb": idle,
            "after_kb": after, "inc_b": inc, "total_b": total,
            "est_1m_mb": (idle * 1024 + inc * 1_000_000) / 2**20}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.registrar")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--contacts", type=int, default=50000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mb", type=int, default=256, help="shared memory of each server, MB")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("sipp"):
        print("bench.registrar: sipp is not installed (apt-get install sip-tester)")
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ser-bench-reg-") as workdir:
        for name in ("ser", "kamailio"):
            server = start(name, free_port(), args.workers, workdir, args.mb)
            if server is None:
                print("kamailio: not installed, no ratio")
                continue
            try:
                r = results[name] = measure(server, args.rate, args.contacts, workdir)
            finally:
                server.stop()
            print(f"{name:9s} REGISTER at {args.rate}/s: {r['us']:6.1f} us CPU per request, "
                  f"{r['ok']:.0f} ok, {r['failed']:.0f} failed")
            print(f"{name:9s} PSS idle {r['idle_kb'] / 1024:.1f} MB, after {r['ok']:.0f} "
                  f"contacts {r['after_kb'] / 1024:.1f} MB: {r['inc_b']:.0f} B per contact "
                  f"increase, {r['total_b']:.0f} B per contact total")
            print(f"{name:9s} 1,000,000 contacts, estimated from the slope: "
                  f"{r['est_1m_mb']:.0f} MB PSS (needs -m of at least that)")
    if "kamailio" in results and "ser" in results:
        s, k = results["ser"], results["kamailio"]
        print(f"ratio ser/kamailio: CPU per REGISTER {s['us'] / k['us']:.2f}, memory increase "
              f"per contact {s['inc_b'] / max(k['inc_b'], 1):.2f}")


if __name__ == "__main__":
    main()
