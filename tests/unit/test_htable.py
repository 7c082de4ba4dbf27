"""htable on a real shared-memory segment and a real SQLite database."""

from __future__ import annotations

import os
import time

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.db import Db
from ser.core.parser import parse_message
from ser.mods import htable
from ser.mods.htable import HtSpec, parse_spec
from ser.shm import ShmFull

from .test_shm_support import fork, temp_shm

REQ = (b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
       b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1\r\n"
       b"CSeq: 1 REGISTER\r\nAuthorization: Digest username=\"alice\", realm=\"example.com\", "
       b"nonce=\"n\", uri=\"sip:example.com\", response=\"00\"\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def shm():
    with temp_shm(4 << 20, max_procs=8, max_counters=64) as s:
        yield s


def test_parse_spec():
    assert parse_spec("a->size=8;") == HtSpec("a", size=8)
    s = parse_spec("ipban=>size=10;autoexpire=300;initval=0;updateexpire=0;"
                   "dbtable=htable;dbmode=1")
    assert (s.name, s.size, s.autoexpire, s.initval, s.updateexpire, s.dbtable, s.dbmode) == \
        ("ipban", 10, 300, 0, 0, "htable", 1)
    for bad in ("a", "a=>size=x", "a=>size=40", "a=>nosuch=1", "a=>dbmode=1",
                "a=>dbtable=x;y", "a b=>size=2"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    assert htable.split_name("a->x=>y") == ("a", "x=>y")
    assert htable.split_name("a=>x->y") == ("a", "x->y")


def _load(shm, text, params=()):
    cfg = check_text('loadmodule "sl.so"\nloadmodule "htable.so"\n'
                     + "".join(f'modparam("htable", "{k}", "{v}")\n' for k, v in params)
                     + text)
    assert not cfg.errors, cfg.errors
    inst = cfg.modules["htable"]
    inst.state["shm"] = shm
    htable.mod_init(inst)
    rt = Runtime(cfg.settings, cfg.modules)
    rt.shm = shm
    return cfg, rt, inst


def _run(cfg, rt, src="10.0.0.1"):
    ctx = Context(parse_message(REQ), rt, src, 5060)
    cfg.routes.request(ctx)
    return ctx


BRUTE = """
request_route {
    if ($sht(a->$au::auth_count) == $null)
        $sht(a->$au::auth_count) = 0;
    $sht(a->$au::auth_count) = $sht(a->$au::auth_count) + 1;
    $sht(a=>$au::last_auth) = $Ts;
    if ($sht(a=>$au::auth_count) >= 3) {
        sl_send_reply("403", "Try later");
        exit;
    }
    sl_send_reply("401", "Unauthorized");
}
"""


def test_seed_style_counter_with_pv_keys(shm):
    cfg, rt, inst = _load(shm, BRUTE, [("htable", "a->size=8;")])
    codes = [_run(cfg, rt).actions[0][1] for _ in range(4)]
    assert codes == [401, 401, 403, 403]
    ht = inst.state["ht"]["a"]
    assert ht.get("alice::auth_count") == 4
    assert abs(ht.get("alice::last_auth") - time.time()) < 5


def test_pv_variants(shm):
    cfg, rt, inst = _load(shm, """
request_route {
    $sht(t=>s) = "hello";
    $sht(t=>gone) = 1;
    $sht(t=>gone) = $null;
    $var(a) = $shtinc(t=>n);
    $var(b) = $shtinc(t=>n);
    $var(c) = $shtdec(t=>n);
    $shtex(t=>s) = 100;
    $var(ex) = $shtex(t=>s);
    $var(init) = $sht(i=>missing);
    if (sht_has_name("t", "sw", "he") || !sht_has_name("t", "eq", "s")) {
        sl_send_reply("500", "has_name");
        exit;
    }
    sl_send_reply("200", "$var(a) $var(b) $var(c) $var(ex) $var(init) $sht(t=>s)");
}
""", [("htable", "t=>size=4"), ("htable", "i=>size=2;initval=7")])
    ctx = _run(cfg, rt)
    assert ctx.actions == [("reply", 200, "1 2 1 100 7 hello")]
    t = inst.state["ht"]["t"]
    assert t.get("gone") is None
    assert 95 <= t.expires_in("s") <= 100


def test_rm_re_and_lock(shm):
    cfg, rt, inst = _load(shm, """
request_route {
    sht_lock("t=>k");
    sht_rm_name_re("t=>^ban::");
    sht_rm_value_re("t=>^x[0-9]+$");
    sht_unlock("t=>k");
    sl_send_reply("200", "OK");
}
""", [("htable", "t=>size=4")])
    t = inst.state["ht"]["t"]
    for k, v in [("ban::1", 1), ("ban::2", "y"), ("keep", "x12"), ("keep2", "x1a"), ("z", 3)]:
        t.set(k, v)
    _run(cfg, rt)
    assert sorted(k for k, _, _ in t.items()) == ["keep2", "z"]
    assert htable.lock(shm, "t", "k", wait=0.1)          # released by sht_unlock


def test_lock_excludes_another_process(shm):
    _load(shm, 'request_route { exit; }\n', [("htable", "t=>size=4")])
    r, w = os.pipe()

    def hold():
        assert htable.lock(shm, "t", "k")
        os.write(w, b"!")
        time.sleep(0.5)
        htable.unlock(shm, "t", "k")
    pid = fork(hold)
    os.read(r, 1)
    assert not htable.lock(shm, "t", "k", wait=0.1)
    assert htable.lock(shm, "t", "k", wait=3)
    assert os.waitpid(pid, 0)[1] == 0


def test_autoexpire_and_updateexpire(shm):
    _, _, inst = _load(shm, 'request_route { exit; }\n',
                       [("htable", "e=>size=4;autoexpire=10"),
                        ("htable", "f=>size=4;autoexpire=10;updateexpire=0")])
    e, f = inst.state["ht"]["e"], inst.state["ht"]["f"]
    now = time.time()
    e.set("k", 1, now - 5)
    f.set("k", 1, now - 5)
    e.set("k", 2, now)
    f.set("k", 2, now)
    assert e.expires_in("k", now) == 10
    assert f.expires_in("k", now) == 5                   # the first write's expiry stays
    htable._timer(inst, now + 6)
    assert f.get("k") is None and e.get("k") == 2


def test_shm_full_is_counted_not_raised(shm):
    _, _, inst = _load(shm, 'request_route { exit; }\n', [("htable", "big=>size=2")])
    big = inst.state["ht"]["big"]
    ok = True
    n = 0
    while ok and n < 10000:
        ok = big.set(f"k{n}", "x" * 4000)
        n += 1
    assert not ok and n > 10
    assert shm.stats.get("htable:shm_full") == 1
    assert big.get("k0") == "x" * 4000
    with pytest.raises(ShmFull):
        big.table.set(b"direct", b"x" * 4000)


def test_db_load_and_save(shm, tmp_path):
    url = f"sqlite://{tmp_path}/ht.db"
    db = Db(url)
    from ser.core.db.schema import HTABLE, ensure_table
    ensure_table(db, HTABLE, "htable")
    db.execute("INSERT INTO htable (key_name, key_type, value_type, key_value, expires) "
               "VALUES ('n', 0, 1, '42', 0), ('s', 0, 0, 'txt', 0), ('old', 0, 0, 'x', 5)")
    db.close()
    _, _, inst = _load(shm, 'request_route { exit; }\n',
                       [("htable", "d=>size=4;dbtable=htable;dbmode=1"), ("db_url", url)])
    d = inst.state["ht"]["d"]
    assert d.get("n") == 42 and d.get("s") == "txt" and d.get("old") is None
    d.set("new", "v")
    d.delete("s")
    htable.destroy(inst)
    db = Db(url)
    rows = sorted(db.query("SELECT key_name, value_type, key_value FROM htable"))
    db.close()
    assert rows == [("n", 1, "42"), ("new", 0, "v")]


def test_unknown_table_and_bad_args():
    cfg = check_text('loadmodule "htable.so"\nrequest_route { sht_rm_name_re("nosep"); }\n')
    assert cfg.errors and "table=>key" in str(cfg.errors[0])
    cfg = check_text('loadmodule "htable.so"\nmodparam("htable", "htable", "a=>size=99")\n'
                     'request_route { exit; }\n')
    assert cfg.errors and "size" in str(cfg.errors[0])
    cfg = check_text('loadmodule "htable.so"\nrequest_route { $var(x) = $sht(nosep); }\n')
    assert cfg.errors
