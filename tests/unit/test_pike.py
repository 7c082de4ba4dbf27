"""pike on a real shared-memory segment: counting, blocking, decay, RPC, forks."""

from __future__ import annotations

import os
import time

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message
from ser.mods import pike

from .test_shm_support import fork, temp_shm

OPTIONS = (b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
           b"From: <sip:t@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


@pytest.fixture
def shm():
    with temp_shm(4 << 20, max_procs=8, max_counters=64) as s:
        yield s


def _state(shm, density=5, unit=2, latency=4):
    class Inst:
        pass
    inst = Inst()
    inst.params = {"sampling_time_unit": unit, "reqs_density_per_unit": density,
                   "remove_latency": latency, "pike_log_level": 0}
    inst.state = {"shm": shm}
    pike.mod_init(inst)
    return inst.state


def test_blocks_over_the_limit_and_decays(shm):
    st = _state(shm, density=5)
    now = time.time()
    assert all(pike.check(st, "10.0.0.1", now) for _ in range(5))
    assert not pike.check(st, "10.0.0.1", now)
    assert not pike.check(st, "10.0.0.1", now)
    assert pike.check(st, "10.0.0.2", now)            # another source is not affected
    assert shm.stats.get("pike:blocked_ips") == 1
    assert shm.stats.get("pike:blocked_requests") == 2
    # one shift: the hits move to the previous window, still blocked
    pike.shift(st, now + 2)
    assert not pike.check(st, "10.0.0.1", now + 2)
    assert shm.stats.get("pike:blocked_ips") == 1      # still the same block
    pike.shift(st, now + 4)
    assert pike.shift(st, now + 6) >= 0
    assert pike.check(st, "10.0.0.1", now + 6)


def test_ipv6_and_records_expire(shm):
    st = _state(shm, density=2, latency=4)
    now = time.time()
    ip6 = "2001:db8::1"
    assert pike.check(st, ip6, now) and pike.check(st, ip6, now)
    assert not pike.check(st, ip6, now)
    rows = pike.nodes(st, now)
    assert rows[0]["ip_addr"] == ip6 and rows[0]["status"] == "HOT"
    assert rows[0]["leaf_hits_curr"] == 3
    pike.shift(st, now + 2)
    pike.shift(st, now + 4)
    pike.shift(st, now + 8)   # 4 s after the last window with hits: gone
    assert st["table"].snapshot() == []


def test_counters_are_shared_between_processes(shm):
    st = _state(shm, density=1000)

    def child():
        shm.child_init(1)
        for _ in range(200):
            pike.check(st, "10.1.1.1", time.time())
    pids = [fork(child) for _ in range(3)]
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    rows = pike.nodes(st, time.time())
    assert rows[0]["leaf_hits_curr"] == 600


def test_pike_check_req_in_the_script(shm):
    cfg = check_text('loadmodule "pike.so"\nloadmodule "sl.so"\n'
                     'modparam("pike", "reqs_density_per_unit", 3)\n'
                     'request_route { if (!pike_check_req()) { drop; } '
                     'sl_send_reply("200", "OK"); }\n')
    assert not cfg.errors, cfg.errors
    inst = cfg.modules["pike"]
    inst.state["shm"] = shm
    pike.mod_init(inst)
    rt = Runtime(cfg.settings, cfg.modules)
    rt.shm = shm
    msg = parse_message(OPTIONS)
    replies = 0
    for _ in range(10):
        ctx = Context(msg, rt, "127.0.0.9", 5060)
        cfg.routes.request(ctx)
        replies += bool(ctx.actions)
    assert replies == 3


def test_split_and_params():
    assert pike.split((7 << 32) | 9) == (7, 9)
    cfg = check_text('loadmodule "pike.so"\nmodparam("pike", "sampling_time_unit", 0)\n'
                     'request_route { pike_check_req(); }\n')
    assert cfg.errors and "positive" in str(cfg.errors[0])
