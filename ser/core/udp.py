"""UDP receiver: ``children`` of them share each UDP socket bound by the master."""

from __future__ import annotations

import logging
import traceback

from ser.core.log import RateLimited
from ser.core.net import SocketInfo
from ser.core.receive import Core
from ser.core.roles import Env, Role

MAX_DATAGRAM = 65535
_log = RateLimited(interval=10.0, burst=5)


class UdpReceiver(Role):
    kind = "udp"

    def __init__(self, rank: int, si: SocketInfo, index: int) -> None:
        super().__init__(rank, f"receiver child={index} sock={si.host}:{si.port} (udp)")
        self.si = si

    def run(self, env: Env) -> int:
        assert env.rt is not None
        core = Core(env.cfg, env.rt, env.sockets, env.stats, env)
        si = self.si
        sock = si.sock
        assert sock is not None
        sock.setblocking(True)
        recv = sock.recvfrom
        receive = core.receive
        poll = env.cfgvars.poll if env.cfgvars is not None else lambda: False
        while True:
            data, addr = recv(MAX_DATAGRAM)
            poll()                        # run-time values changed (SIGUSR2)
            if len(data) <= 4 and not data.strip():
                continue                  # keep-alive CRLFs and empty datagrams
            try:
                receive(data, si, addr[:2])
            except Exception:  # noqa: BLE001 - one message must never cost the worker
                core.stats.inc("core:err_requests")
                _log(logging.ERROR, "message from %s:%s not handled:\n%s", addr[0], addr[1],
                     traceback.format_exc())
