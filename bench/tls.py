"""Stream transport benchmark: REGISTER over TCP and TLS, idle TLS connection
memory, full TLS handshakes per second per core; ser against Kamailio.

    python -m bench.tls [--rate 1000] [--seconds 5] [--idle 10000] [--handshakes 2000]

1. TCP REGISTER: sipp ``-t t1`` (one connection) runs bench/scenarios/
   register.xml at ``--rate``/s; server CPU microseconds per REGISTER (user +
   system over every server process, from /proc) for ser and Kamailio
   (``-x tlsf``), and the ratio.
2. TLS REGISTER: this sipp has no TLS, so a Python client sends the same
   REGISTERs over one TLS connection, paced at ``--rate``/s; CPU per REGISTER.
3. Idle TLS connections: ``--idle`` connections opened and left idle; the PSS
   summed over every server process before and after, per connection.
4. Handshakes: ``--handshakes`` full TLS handshakes (new connection, no
   session resumption, RSA-2048 certificate, TLSv1.3), the server's CPU
   seconds for them, reported as handshakes per second per core.
5. In-process (ser only): the TCP worker's path for a REGISTER (a real
   ``TcpWorker`` with bench.worker's compiled config and shared memory, one
   loopback connection: select, read, frame, ``Core.receive``, the reply's
   send) against ``Core.receive`` alone as the UDP loop calls it; their
   difference is what the stream transport adds, without the wake-ups and
   cold caches that dominate the daemon's figure at 1000/s.
Quote ratios, not absolute times: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from bench.daemon import Server, cpu_seconds, free_port, sipp, tree
from bench.registrar import ROUTE, SCENARIO, pss_kb

COMMON = """\
#!KAMAILIO
debug=0
children=1
tcp_children={workers}
enable_tls=yes
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
listen=tls:127.0.0.1:{tport}
tcp_max_connections=30000
tls_max_connections=30000
tcp_connection_lifetime=3600
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "tls.so"
modparam("usrloc", "hash_size", 14)
modparam("tls", "certificate", "{cert}")
modparam("tls", "private_key", "{key}")
"""
SER_CFG = COMMON.replace("tcp_connection_lifetime=3600",
                         "tcp_connection_lifetime=3600\ntcp_max_connections_per_ip=30000") \
    + ROUTE
KAM_CFG = COMMON.replace('loadmodule "sl.so"', 'loadmodule "sl.so"\nloadmodule "ctl.so"') \
    + 'modparam("ctl", "binrpc", "unix:{workdir}/kam_ctl")\n' \
    + 'modparam("tls", "tls_method", "TLSv1.2+")\n' + ROUTE


def start(name: str, workdir: str, workers: int, mb: int) -> Server | None:
    port, tport = free_port(), free_port()
    key, cert = os.path.join(workdir, "key.pem"), os.path.join(workdir, "cert.pem")
    if not os.path.exists(key):
        from ser.core.tls import gencert
        gencert(key, cert, "127.0.0.1")
    args = {"port": port, "tport": tport, "workers": workers, "key": key, "cert": cert,
            "workdir": workdir}
    if name == "ser":
        cfg = Path(workdir) / "ser-tls.cfg"
        cfg.write_text(SER_CFG.format(**args))
        ser = str(Path(sys.executable).with_name("ser"))
        srv = Server("ser", [ser, "-DD", "-E", "-f", str(cfg), "-Y", workdir, "-m", str(mb)],
                     port, workdir)
    else:
        kam = shutil.which("kamailio") or (os.path.exists("/usr/sbin/kamailio")
                                           and "/usr/sbin/kamailio")
        if not kam:
            return None
        cfg = Path(workdir) / "kam-tls.cfg"
        cfg.write_text(KAM_CFG.format(**args))
        srv = Server("kamailio", [str(kam), "-DD", "-E", "-x", "tlsf", "-m", str(mb), "-f",
                                  str(cfg), "-Y", workdir, "-P",
                                  os.path.join(workdir, "kam.pid")], port, workdir)
    srv.tport = tport  # type: ignore[attr-defined]
    return srv


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _register(i: int, local: tuple[str, int]) -> bytes:
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bKb{i};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:u{i}@example.com>;tag={i}\r\n"
            f"To: <sip:u{i}@example.com>\r\nCall-ID: tlsb{i}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:u{i}@{local[0]}:{local[1]};transport=tls>\r\nExpires: 3600\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def tls_register(srv: Server, rate: int, seconds: float) -> tuple[float, int]:
    """(CPU microseconds per REGISTER, replies) over one TLS connection."""
    s = _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", srv.tport), 5))
    s.settimeout(5)
    local = s.getsockname()[:2]
    n = int(rate * seconds)
    pids = tree(srv.proc.pid)
    before = cpu_seconds(pids)
    t0 = time.monotonic()
    got = 0
    buf = b""
    sent = 0
    deadline = t0 + seconds + 20
    while got < n and time.monotonic() < deadline:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        if sent < due and sent - got < 200:
            s.sendall(b"".join(_register(i, local) for i in range(sent, due)))
            sent = due
        try:
            s.settimeout(0.01)
            chunk = s.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        if not chunk:
            break
        buf += chunk
        got += buf.count(b"SIP/2.0 200")
        buf = buf[buf.rfind(b"\r\n\r\n") + 4:] if b"\r\n\r\n" in buf else buf
    used = cpu_seconds(pids) - before
    s.close()
    return used / max(got, 1) * 1e6, got


def idle_memory(srv: Server, count: int, limit_s: float = 240) -> tuple[int, float, float]:
    """(connections held, KiB per connection, seconds to open them)."""
    pids = tree(srv.proc.pid)
    ctx = _client_ctx()
    before = pss_kb(pids)
    socks = []
    t0 = time.monotonic()
    try:
        while len(socks) < count and time.monotonic() - t0 < limit_s:
            try:
                raw = socket.create_connection(("127.0.0.1", srv.tport), 10)
                socks.append(ctx.wrap_socket(raw))
            except OSError as e:       # the server's limit: measure what it holds
                print(f"{srv.name}: connection {len(socks) + 1} refused ({e}); measuring "
                      f"{len(socks)}", flush=True)
                break
        took = time.monotonic() - t0
        time.sleep(2.0)
        after = pss_kb(tree(srv.proc.pid))
        return len(socks), (after - before) / max(len(socks), 1), took
    finally:
        for s in socks:
            s.close()


def handshakes(srv: Server, count: int, limit_s: float = 120) -> tuple[int, float]:
    """(handshakes done, per second per core of server CPU)."""
    pids = tree(srv.proc.pid)
    ctx = _client_ctx()
    before = cpu_seconds(pids)
    done = 0
    t0 = time.monotonic()
    while done < count and time.monotonic() - t0 < limit_s:
        raw = socket.create_connection(("127.0.0.1", srv.tport), 10)
        s = ctx.wrap_socket(raw)
        s.close()
        done += 1
    time.sleep(0.5)
    used = cpu_seconds(pids) - before
    return done, done / max(used, 1e-6)


def tcp_inprocess(n: int = 3000) -> tuple[float, float]:
    """(us per REGISTER through the TCP worker's path, us in Core.receive alone)."""
    from bench.worker import REGISTER, _core, _run
    from ser.core import tcp
    from ser.core.net import SocketInfo
    core, shm = _core()
    ls = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(ls.getsockname())
    sock, _ = ls.accept()
    try:
        shm.create_table(tcp.TABLE, tcp.TABLE_BITS)
        w = tcp.TcpWorker(1, 0, [])
        w.sel = selectors.DefaultSelector()
        w.conns, w.by_id, w.by_dest, w.next_id = {}, {}, {}, 1
        w.table = tcp.ConnTable(shm.table(tcp.TABLE))
        w.accept_aliases, w.rd_size, w.max_size = False, tcp.READ_SIZE, 65535
        w.core, core.tcp_send = core, w.send
        si = SocketInfo("tcp", "127.0.0.1", 5060, ls)
        w._add(tcp.Conn(sock, si, peer.getsockname()[:2], w.max_size, "tcp", w._new_id()))
        peer.settimeout(5)

        def run(base: int) -> float:
            took = 0.0
            reply = b""
            for i in range(base, base + n):
                peer.sendall(REGISTER.format(i=i).replace("/UDP", "/TCP").encode())
                t0 = time.perf_counter()
                for key, events in w.sel.select(5.0):
                    w._event(key.data, events)
                took += time.perf_counter() - t0
                reply = peer.recv(65536)
            if not reply.startswith(b"SIP/2.0 200 "):
                raise SystemExit(f"bench.tls: REGISTER over TCP not answered 200: {reply[:80]!r}")
            return took / n * 1e6

        run(10 * n)                                           # warm-up
        via_tcp = min(run(k * n) for k in (11, 12, 13))
        alone = min(_run(core, [REGISTER.format(i=i).encode() for i in range(k * n, k * n + n)])
                    for k in (1, 2, 3))
        return via_tcp, alone
    finally:
        for s in (peer, sock, ls):
            s.close()
        shm.close()
        shm.unlink()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.tls")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--idle", type=int, default=10000, help="idle TLS connections to hold")
    p.add_argument("--handshakes", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--only", choices=("ser", "kamailio"), default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.idle + 100 > hard:
        print(f"bench.tls: file limit {hard}: holding {hard - 200} connections, not {args.idle}")
        args.idle = hard - 200
    have_sipp = bool(shutil.which("sipp"))
    results: dict[str, dict[str, float]] = {}
    names = [args.only] if args.only else ["ser", "kamailio"]
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as workdir:
        for name in names:
            srv = start(name, workdir, args.workers, args.mb)
            if srv is None:
                print(f"{name}: not installed, no ratio")
                continue
            r: dict[str, float] = {}
            try:
                if have_sipp:
                    pids = tree(srv.proc.pid)
                    calls = int(args.rate * args.seconds)
                    before = cpu_seconds(pids)
                    ok, failed = sipp(srv.port, args.rate, calls, workdir, SCENARIO,
                                      extra=("-t", "t1"), slack=30)
                    r["tcp_us"] = (cpu_seconds(pids) - before) / max(ok, 1) * 1e6
                    r["tcp_ok"], r["tcp_failed"] = ok, failed
                    print(f"{name}: TCP REGISTER at {args.rate}/s: {r['tcp_us']:.0f} us CPU "
                          f"per REGISTER ({ok} ok, {failed} failed)", flush=True)
                us, got = tls_register(srv, args.rate, args.seconds)
                r["tls_us"] = us
                print(f"{name}: TLS REGISTER at {args.rate}/s: {us:.0f} us CPU per REGISTER "
                      f"({got} replies)", flush=True)
                n, hps = handshakes(srv, args.handshakes)
                r["hs"] = hps
                print(f"{name}: {n} full TLS handshakes: {hps:.0f} per second per core "
                      f"(server CPU)", flush=True)
                held, kib, took = idle_memory(srv, args.idle)
                r["idle_kib"] = kib
                r["idle_n"] = held
                print(f"{name}: {held} idle TLS connections (opened in {took:.0f} s): "
                      f"{kib:.1f} KiB PSS per connection, summed over all processes",
                      flush=True)
            finally:
                srv.stop()
            results[name] = r
    if "ser" in names:
        via_tcp, alone = tcp_inprocess()
        print(f"ser in-process: REGISTER through the TCP worker {via_tcp:.1f} us, "
              f"Core.receive alone {alone:.1f} us: the stream transport adds "
              f"{via_tcp - alone:.1f} us", flush=True)
    if "ser" in results and "kamailio" in results:
        s, k = results["ser"], results["kamailio"]
        parts = []
        for key, what in (("tcp_us", "TCP REGISTER CPU"), ("tls_us", "TLS REGISTER CPU"),
                          ("idle_kib", "idle TLS memory"), ("hs", "handshakes/s/core")):
            if key in s and key in k and k[key]:
                parts.append(f"{what} {s[key] / k[key]:.2f}")
        print("ratio ser/kamailio: " + ", ".join(parts))


if __name__ == "__main__":
    main()
