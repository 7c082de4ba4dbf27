"""In-process benchmark of a UDP worker's path: microseconds per REGISTER
(bench.registrar's config: save("location"), usrloc db_mode 0) and per
stateless OPTIONS, without sockets or sipp.

    python -m bench.worker [-n REQUESTS] [--profile]

The daemon's own figures (bench.registrar, bench.daemon) add the system calls,
the wake-ups and cold caches of a real worker; this one shows what the Python
path itself costs and is steady enough to compare one change at a time. The
config is compiled, the shared memory is a real arena (its own segment,
removed at exit), ``mod_init``/``child_init`` run as in the daemon, and
``Core.receive`` gets each message as the UDP loop passes it; the reply goes
to a socket stand-in that keeps the last datagram. Every REGISTER is for a new
user, as in bench.registrar. ``--profile`` prints cProfile's top functions
for the REGISTERs (cProfile inflates call-heavy code: compare before/after,
not across functions).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from bench.registrar import SER_CFG
from ser.core import shmstate
from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Runtime
from ser.core.net import SocketInfo
from ser.core.receive import Core

REGISTER = ("REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1-{i}-0;rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:user{i}@127.0.0.1>;tag=1SIPpTag{i}\r\n"
            "To: <sip:user{i}@127.0.0.1>\r\n"
            "Call-ID: {i}-1@127.0.0.1\r\n"
            "CSeq: 1 REGISTER\r\n"
            "Contact: <sip:user{i}@127.0.0.1:6000>\r\n"
            "Expires: 3600\r\n"
            "User-Agent: sipp\r\n"
            "Content-Length: 0\r\n\r\n")


class _Sink:
    """The worker's socket, as far as a reply goes: keeps the last datagram."""

    def __init__(self) -> None:
        self.last = b""

    def sendto(self, data: bytes, addr: Any) -> int:
        self.last = data
        return len(data)


def _core() -> tuple[Core, Any]:
    cfg = check_text(SER_CFG.format(port=5060, workers=1))
    if cfg.errors:
        raise SystemExit(f"bench.worker: config: {cfg.errors}")
    shm, stats, _cfgvars = shmstate.create(cfg, 128, 0)
    shm.child_init(0)
    for inst in cfg.modules.values():
        if inst.decl.mod_init is not None:
            inst.decl.mod_init(inst)
    shm.child_init(1)
    rt = Runtime(cfg.settings, cfg.modules, 1)
    rt.local_hosts.add("127.0.0.1")
    rt.local_ports.add(5060)
    rt.shm = shm
    for inst in cfg.modules.values():
        if inst.decl.child_init is not None:
            inst.decl.child_init(inst, 1)
    return Core(cfg, rt, [SocketInfo("udp", "127.0.0.1", 5060, _Sink())], stats), shm


def _run(core: Core, msgs: list[bytes], prof: cProfile.Profile | None = None) -> float:
    si = core.sockets[0]
    src = ("127.0.0.1", 6000)
    receive = core.receive
    if prof is not None:
        prof.enable()
    t0 = time.perf_counter()
    for m in msgs:
        receive(m, si, src)
    dt = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
    return dt / len(msgs) * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.worker")
    p.add_argument("-n", type=int, default=5000, help="REGISTERs per run (best of 3 runs)")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    core, shm = _core()
    try:
        n = args.n
        _run(core, [REGISTER.format(i=i).encode() for i in range(n)])     # warm-up
        reg = min(_run(core, [REGISTER.format(i=i).encode() for i in range(k * n, k * n + n)])
                  for k in (1, 2, 3))
        reply = core.sockets[0].sock.last             # type: ignore[union-attr]
        if not reply.startswith(b"SIP/2.0 200 "):
            raise SystemExit(f"bench.worker: REGISTER not answered 200: {reply[:80]!r}")
        opt = (REGISTER.format(i=0).replace("REGISTER sip", "OPTIONS sip")
               .replace("1 REGISTER", "1 OPTIONS").encode())
        options = min(_run(core, [opt] * n) for _ in range(3))
        print(f"worker: REGISTER (new user, save) : {reg:6.1f} us in-process")
        print(f"worker: OPTIONS (sl_send_reply)   : {options:6.1f} us in-process")
        if args.profile:
            prof = cProfile.Profile()
            _run(core, [REGISTER.format(i=i).encode() for i in range(4 * n, 5 * n)], prof)
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    finally:
        shm.close()
        shm.unlink()


if __name__ == "__main__":
    main()
