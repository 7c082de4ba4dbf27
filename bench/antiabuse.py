"""Anti-abuse benchmark: the CPU pike and htable add to every request.

    python -m bench.antiabuse [--rate 2000] [--seconds 5] [--runs 3] [--workers 4]

sipp sends OPTIONS to ser with two configs that differ only in the top of
the route: plain (reply 200), and with ``pike_check_req()``, one ``$sht``
read and one ``$sht`` write per request (the density limit is set so high
that sipp's single source is never blocked: every request is counted and
answered). The added server CPU per request (user + system of every server
process, from /proc, median of the runs) is the difference; the target is
<= 8 microseconds. The same pair runs on Kamailio (``-x tlsf``) when it is
installed, for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.daemon import Server, free_port, measure

HEAD = """\
#!KAMAILIO
debug=0
children={workers}
{tcp}
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "pv.so"
loadmodule "pike.so"
loadmodule "htable.so"
modparam("pike", "sampling_time_unit", 2)
modparam("pike", "reqs_density_per_unit", 100000000)
modparam("pike", "remove_latency", 4)
modparam("htable", "htable", "a=>size=8;autoexpire=60;")
"""
PLAIN = """\
request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""
GUARDED = """\
request_route {{
    if (!pike_check_req()) {{
        exit;
    }}
    if ($sht(a=>$si::last) == "banned") {{
        exit;
    }}
    $sht(a=>$si::last) = $rm;
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""


def start(kind: str, route: str, port: int, workers: int, workdir: str) -> Server | None:
    name = f"{kind}-{'guarded' if route is GUARDED else 'plain'}"
    cfg = Path(workdir) / f"{name}.cfg"
    if kind == "ser":
        cfg.write_text((HEAD + route).format(workers=workers, port=port, tcp="tcp_children=1"))
        ser = str(Path(sys.executable).with_name("ser"))
        return Server(name, [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", "64"],
                      port, workdir)
    kam = shutil.which("kamailio") or ("/usr/sbin/kamailio"
                                       if Path("/usr/sbin/kamailio").exists() else None)
    if kam is None:
        return None
    cfg.write_text((HEAD + route).format(workers=workers, port=port, tcp="disable_tcp=yes")
                   .replace("#!KAMAILIO\n", "#!KAMAILIO\nmpath=\"/usr/lib/x86_64-linux-gnu/"
                            "kamailio/modules/\"\n"))
    return Server(name, [kam, "-DD", "-E", "-x", "tlsf", "-m", "64", "-f", str(cfg), "-Y",
                         workdir, "-P", str(Path(workdir) / f"{name}.pid")], port, workdir)


def cpu_per_request(kind: str, route: str, args: argparse.Namespace,
                    workdir: str) -> float | None:
    server = start(kind, route, free_port(), args.workers, workdir)
    if server is None:
        return None
    try:
        runs = []
        for _ in range(args.runs):
            us, fail = measure(server, args.rate, args.seconds, workdir)
            if fail > 0.01:
                print(f"  {server.name}: {fail * 100:.1f}% failed at {args.rate}/s")
            runs.append(us)
        return statistics.median(runs)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.antiabuse", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("sipp"):
        print("bench.antiabuse: sipp is not installed (apt-get install sip-tester)")
        return
    with tempfile.TemporaryDirectory(prefix="ser-bench-") as workdir:
        for kind in ("ser", "kamailio"):
            plain = cpu_per_request(kind, PLAIN, args, workdir)
            if plain is None:
                print("kamailio: not installed, no comparison")
                continue
            guarded = cpu_per_request(kind, GUARDED, args, workdir)
            assert guarded is not None
            target = " (target <= 8)" if kind == "ser" else ""
            print(f"{kind:9s} OPTIONS at {args.rate}/s: plain {plain:6.1f} us, with pike + "
                  f"$sht read + write {guarded:6.1f} us CPU per request: "
                  f"+{guarded - plain:.1f} us{target}")


if __name__ == "__main__":
    main()
