"""usrloc on a real shared-memory segment and a real SQLite database."""

from __future__ import annotations

import os
import time

import pytest

from ser.core.db import Db
from ser.mods import usrloc
from ser.mods.usrloc import Ucontact, decode, encode, new_ruid

from .test_shm_support import temp_shm


@pytest.fixture
def shm():
    with temp_shm(4 << 20, max_procs=8, max_counters=64) as s:
        yield s


def _inst(shm, **params):
    """A usrloc module instance after mod_init."""
    p = {"db_mode": 0, "db_url": "", "use_domain": 0, "case_sensitive": 0, "hash_size": 6}
    p.update(params)

    class Inst:
        pass
    inst = Inst()
    inst.params = p
    inst.state = {"shm": shm}
    usrloc.mod_init(inst)
    return inst


def _ul(shm, **params):
    return _inst(shm, **params).state["ul"]


def _c(uri, exp, **kw):
    return Ucontact(uri, exp, ruid=kw.pop("ruid", new_ruid()), **kw)


def test_encoding_round_trip():
    cs = [_c("sip:a@h;x=1", 1e9, q=500, callid="c'1;--\0", cseq=7, path="<sip:p;lr>",
             received="sip:1.2.3.4:5", user_agent="UA \u00e9", methods=33),
          _c("sip:b@h", 0)]
    assert decode(encode(cs)) == cs
    assert usrloc.min_expires(encode(cs)) == 1e9
    assert decode(encode([])) == []


def test_modify_get_order_and_expiry(shm):
    ul = _ul(shm)
    now = time.time()

    def add(uri, exp, q):
        ul.modify("location", "alice", lambda old: (old + [_c(uri, now + exp, q=q,
                                                                last_modified=now)], None))
    add("sip:a@1", 100, 500)
    add("sip:a@2", 100, 1000)
    add("sip:a@3", 1, -1)
    assert [c.c for c in ul.get("location", "alice")] == ["sip:a@2", "sip:a@3", "sip:a@1"]
    assert ul.get("location", "bob") == []
    # a contact past its time is gone for readers at once, and swept by the timer
    assert [c.c for c in ul.get("location", "alice", now + 50)] == ["sip:a@2", "sip:a@1"]
    ul.timer(now + 50)
    raw = ul.table.get(usrloc._key("location", "alice"))
    assert len(decode(raw)) == 2
    ul.timer(now + 200)
    assert ul.table.get(usrloc._key("location", "alice")) is None
    assert len(ul.table) == 0


def test_aor_forms():
    assert _ul(None).aor_of("Alice", "Example.COM") == "alice"
    assert _ul(None, use_domain=1).aor_of("Alice", "Example.COM") == "alice@example.com"
    assert _ul(None, use_domain=1, case_sensitive=1).aor_of("Alice", "X") == "Alice@x"


def test_write_back_flush_and_reload(shm, tmp_path):
    url = f"sqlite://{tmp_path}/ul.db"
    ul = _ul(shm, db_mode=2, db_url=url, use_domain=1)
    now = time.time()
    evil = "o'hara;--\"x"
    ul.modify("location", f"{evil}@d", lambda old: ([_c("sip:x@1", now + 60, q=100)], None))
    ul.modify("location", "bob@d", lambda old: ([_c("sip:b@1", now + 60)], None))
    db = Db(url)
    assert db.query("SELECT count(*) FROM location")[0][0] == 0      # not yet: write-back
    assert ul.flush() == 2
    rows = db.query("SELECT username, domain, contact, q FROM location ORDER BY username")
    assert rows == [("bob", "d", "sip:b@1", -1.0), (evil, "d", "sip:x@1", 0.1)]
    assert all(c.state == usrloc.SYNC for c in ul.get("location", "bob@d"))
    ul.delete_aor("location", "bob@d")
    ul.flush()
    assert db.query("SELECT username FROM location") == [(evil,)]
    # a restart: a new segment loads what the DB has
    with temp_shm(4 << 20, max_procs=8, max_counters=64) as shm2:
        ul2 = _ul(shm2, db_mode=2, db_url=url, use_domain=1)
        got = ul2.get("location", f"{evil}@d")
        assert [(c.c, c.q) for c in got] == [("sip:x@1", 100)]


def test_db_only_mode(tmp_path):
    url = f"sqlite://{tmp_path}/ul3.db"
    ul = _ul(None, db_mode=3, db_url=url)
    now = time.time()
    ul.modify("location", "carol", lambda old: ([_c("sip:c@1", now + 60)], None))
    other = _ul(None, db_mode=3, db_url=url)
    assert [c.c for c in other.get("location", "carol")] == ["sip:c@1"]
    assert list(other.aors("location")) == ["carol"]
    other.delete_aor("location", "carol")
    assert ul.get("location", "carol") == []
    assert os.path.exists(f"{tmp_path}/ul3.db")


def test_ruids_differ_between_forked_workers():
    """The pid part is renewed after fork: two workers never make the same ruid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, new_ruid().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 200).decode()
    os.waitpid(pid, 0)
    mine = new_ruid()
    assert child.split("-")[2] == f"{pid:x}"
    assert mine.split("-")[2] == f"{os.getpid():x}"


def test_timer_expires_due_contacts_and_writes_only_dirty_records(shm, tmp_path):
    url = f"sqlite://{tmp_path}/ul.db"
    ul = _ul(shm, db_mode=2, db_url=url)
    now = time.time()
    ul.modify("location", "alice", lambda old: ([_c("sip:a@1", now + 10),
                                                 _c("sip:a@2", now + 100)], None))
    ul.modify("location", "bob", lambda old: ([_c("sip:b@1", now + 100)], None))
    db = Db(url)
    ul.timer(now)                                     # write-back of both, nothing due
    assert db.query("SELECT contact FROM location ORDER BY contact") == [
        ("sip:a@1",), ("sip:a@2",), ("sip:b@1",)]
    assert not ul.table.sweep(now, flag_mask=usrloc.REC_DIRTY).flagged
    # later: only alice's first contact is due; bob's record is clean and stays so
    db.execute("UPDATE location SET cseq = 99 WHERE contact = 'sip:b@1'")
    ul.timer(now + 50)
    assert [c.c for c in decode(ul.table.get(usrloc._key("location", "alice")))] == ["sip:a@2"]
    assert usrloc.min_expires(ul.table.get(usrloc._key("location", "alice"))) == now + 100
    assert db.query("SELECT contact, cseq FROM location ORDER BY contact") == [
        ("sip:a@2", 0), ("sip:b@1", 99)]
    ul.timer(now + 200)
    assert len(ul.table) == 0
    assert db.query("SELECT count(*) FROM location")[0][0] == 0


def test_timer_sweeps_the_table_in_slices_once_per_interval(shm):
    """Each 1 s tick sweeps the next 2^hash_size / timer_interval buckets: a
    due contact goes when its bucket's slice comes, all within the interval."""
    inst = _inst(shm, timer_interval=4)
    ul = inst.state["ul"]
    now = time.time()
    aors = [f"u{i}" for i in range(200)]
    for a in aors:
        ul.modify("location", a, lambda old, a=a: ([_c(f"sip:{a}@1", now + 5),
                                                    _c(f"sip:{a}@2", now + 500)], None))

    def left() -> int:
        return sum(len(decode(ul.table.get(usrloc._key("location", a)))) for a in aors)
    assert left() == 400 and ul.table.nbuckets == 64
    seen = []
    for tick in range(4):
        usrloc._timer(inst, now + 10 + tick)
        seen.append(400 - left())
        assert inst.state["timer_cursor"] == (16 * (tick + 1)) % 64
    assert 0 < seen[0] < seen[1] < seen[2] < seen[3] == 200, seen
    # a late tick (the timer was held up 3 s) takes a bigger slice, never past the end
    usrloc._timer(inst, now + 16)
    assert inst.state["timer_cursor"] == 48
    usrloc._timer(inst, now + 26)
    assert inst.state["timer_cursor"] == 0
