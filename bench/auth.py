"""Authenticated REGISTER benchmark: ser against Kamailio (when installed).

    python -m bench.auth [--rate 500] [--calls 10000] [--users 2000] [--workers 4]

Both servers read the same SQLite subscriber table (``--users`` users made
the way ``serctl add`` makes them; HA1 precomputed, Kamailio's default
``password_column``) and run the same route: ``www_authorize`` else
``www_challenge`` (401), then ``save("location")`` (200). sipp
(bench/scenarios/register_auth.xml) makes ``--calls`` registrations at
``--rate``/s, each a REGISTER, its 401, the REGISTER with credentials and its
200. Prints the server CPU microseconds per authenticated registration (user
+ system over every server process, from /proc) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.daemon import Server, cpu_seconds, free_port, tree

HERE = Path(__file__).parent
SCENARIO = HERE / "scenarios" / "register_auth.xml"

ROUTE = """\
request_route {{
    if (is_method("REGISTER")) {{
        if (!www_authorize("example.com", "subscriber")) {{
            www_challenge("example.com", "0");
            exit;
        }}
        save("location");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""
MODULES = """\
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "db_sqlite.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
modparam("usrloc", "hash_size", 14)
modparam("auth_db", "db_url", "sqlite://{db}")
"""
SER_CFG = """\
#!KAMAILIO
debug=0
children={workers}
listen=udp:127.0.0.1:{port}
""" + MODULES + ROUTE
KAM_CFG = """\
#!KAMAILIO
debug=0
children={workers}
disable_tcp=yes
listen=udp:127.0.0.1:{port}
""" + MODULES + ROUTE


def make_db(workdir: str, users: int) -> tuple[str, Path]:
    """The subscriber table and the sipp injection file."""
    from ser.core.db import connect
    from ser.core.db.schema import init_db
    from ser.provision import ha1
    path = os.path.join(workdir, "auth.db")
    conn = connect(f"sqlite://{path}")
    init_db(conn)
    rows = [(f"user{i}", "example.com", f"pw{i}", ha1(f"user{i}", "example.com", f"pw{i}"),
             ha1(f"user{i}@example.com", "example.com", f"pw{i}")) for i in range(users)]
    conn.executemany("INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                     "VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    inf = Path(workdir) / "users.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(
        f"user{i};[authentication username=user{i} password=pw{i}]\n" for i in range(users)))
    return path, inf


def run_sipp(port: int, rate: int, calls: int, inf: Path, workdir: str) -> tuple[int, int]:
    cmd = ["sipp", "-sf", str(SCENARIO), "-inf", str(inf), "-m", str(calls), "-r", str(rate),
           "-i", "127.0.0.1", "-nostdin", "-timeout", f"{calls // rate + 30}s",
           "-max_socket", "1000", f"127.0.0.1:{port}"]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    text = out.stdout + out.stderr
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", text)
    if not ok or not failed:
        return 0, calls
    return int(ok.group(1)), int(failed.group(1))


def start(name: str, port: int, workers: int, workdir: str, db: str) -> Server | None:
    if name == "ser":
        cfg = Path(workdir) / "ser-auth.cfg"
        cfg.write_text(SER_CFG.format(port=port, workers=workers, db=db))
        ser = str(Path(sys.executable).with_name("ser"))
        return Server("ser", [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", "128"],
                      port, workdir)
    kam = shutil.which("kamailio") or \
        (os.path.exists("/usr/sbin/kamailio") and "/usr/sbin/kamailio")
    if not kam:
        return None
    cfg = Path(workdir) / "kamailio-auth.cfg"
    cfg.write_text(KAM_CFG.format(port=port, workers=workers, db=db))
    return Server("kamailio", [str(kam), "-DD", "-E", "-x", "tlsf", "-m", "128", "-f",
                               str(cfg), "-Y", workdir, "-P", os.path.join(workdir, "kam.pid")],
                  port, workdir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.auth")
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--calls", type=int, default=10000)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not shutil.which("sipp"):
        print("bench.auth: sipp is not installed (apt-get install sip-tester)")
        return
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ser-bench-auth-") as workdir:
        db, inf = make_db(workdir, args.users)
        for name in ("ser", "kamailio"):
            server = start(name, free_port(), args.workers, workdir, db)
            if server is None:
                print("kamailio: not installed, no ratio")
                continue
            try:
                pids = tree(server.proc.pid)
                before = cpu_seconds(pids)
                ok, failed = run_sipp(server.port, args.rate, args.calls, inf, workdir)
                used = cpu_seconds(pids) - before
            finally:
                server.stop()
            us = results[name] = used / max(ok, 1) * 1e6
            print(f"{name:9s} authenticated REGISTER (401 + 200) at {args.rate}/s: "
                  f"{us:6.1f} us CPU per registration, {ok} ok, {failed} failed")
    if "kamailio" in results and "ser" in results:
        print(f"ratio ser/kamailio: CPU per authenticated registration "
              f"{results['ser'] / results['kamailio']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
