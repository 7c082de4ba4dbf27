"""permissions (address table matching, masks v4/v6, port 0, tags) and group,
through a compiled script against a real SQLite database."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.db import connect
from ser.core.db.schema import init_db
from ser.core.parser import parse_message
from ser.mods.permissions import AddressTable

REQ = ("INVITE sip:{ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
       "From: <sip:{fuser}@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\n"
       "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")

ROWS = [
    (1, "192.168.0.1", 32, 5060, None),
    (1, "192.168.0.0", 24, 0, "lan"),
    (2, "10.0.0.0", 8, 0, "ten"),
    (3, "2001:db8::", 32, 0, "v6net"),
    (4, "2001:db8::7", 128, 5070, "v6host"),
    (5, "gw.example.com", 0, 0, "named"),
    (6, "172.16.5.5", 0, 0, None),                 # mask 0 = one host
]


@pytest.fixture
def db(tmp_path):
    url = f"sqlite://{tmp_path}/ser.db"
    conn = connect(url)
    init_db(conn)
    conn.executemany("INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (?,?,?,?,?)",
                     ROWS)
    conn.executemany("INSERT INTO grp (username, domain, grp) VALUES (?, ?, ?)",
                     [("alice", "example.com", "international")])
    conn.close()
    return url


@pytest.mark.parametrize("grp,ip,port,want", [
    (1, "192.168.0.1", 5060, (1, None)),
    (1, "192.168.0.1", 5070, (1, "lan")),          # the /32 wants 5060; the /24 takes any
    (1, "192.168.0.77", 1, (1, "lan")),
    (1, "192.168.1.1", 5060, None),
    (2, "10.200.3.4", 5060, (2, "ten")),
    (3, "2001:db8:ffff::1", 5060, (3, "v6net")),
    (3, "2001:db9::1", 5060, None),
    (4, "2001:db8::7", 5070, (4, "v6host")),
    (4, "[2001:db8::7]", 5071, None),
    (5, "GW.example.com", 5060, (5, "named")),
    (6, "172.16.5.5", 9, (6, None)),
    (6, "172.16.5.6", 9, None),
    (None, "10.1.1.1", 5060, (2, "ten")),
])
def test_matching(grp, ip, port, want):
    assert AddressTable.build([list(r) for r in ROWS]).match(grp, ip, port) == want


def run(db: str, route: str, src: str, params: str = "", fuser: str = "bob",
        ruri: str = "0049301234@example.com") -> Context:
    text = ('loadmodule "sl.so"\nloadmodule "pv.so"\nloadmodule "db_sqlite.so"\n'
            'loadmodule "permissions.so"\nloadmodule "group.so"\n'
            f'modparam("permissions", "db_url", "{db}")\nmodparam("group", "db_url", "{db}")\n'
            f'{params}request_route {{\n{route}\n}}\n')
    cfg = check_text(text, "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    ctx = Context(parse_message(REQ.format(ruri=ruri, fuser=fuser).encode()),
                  Runtime(cfg.settings, cfg.modules), src_ip=src, src_port=5060)
    cfg.routes.request(ctx)
    return ctx


def test_script_functions_and_peer_tag(db):
    route = ('$var(a) = allow_source_address("1"); $var(g) = allow_source_address_group(); '
             '$var(b) = allow_address("2", "10.9.9.9", "0"); '
             '$var(c) = allow_address_group("2001:db8::7", "5070"); $var(t) = $avp(i:707);')
    ctx = run(db, route, "192.168.0.9", 'modparam("permissions", "peer_tag_avp", "$avp(i:707)")\n')
    v = ctx.rt.vars
    assert (v["a"], v["g"], v["b"], v["c"], v["t"]) == (1, 1, 1, 4, "v6host")
    ctx = run(db, route, "8.8.8.8")
    assert (ctx.rt.vars["a"], ctx.rt.vars["g"]) == (-1, -1)


def test_group_sources(db):
    route = ('$var(f) = is_user_in("From", "international"); '
             '$avp(u) = "sip:alice@example.com"; $var(a) = is_user_in("$avp(u)", "international");'
             ' $var(r) = is_user_in("Request-URI", "international");')
    ctx = run(db, route, "1.2.3.4", fuser="alice")
    assert (ctx.rt.vars["f"], ctx.rt.vars["a"], ctx.rt.vars["r"]) == (1, 1, -1)
    ctx = run(db, route, "1.2.3.4", 'modparam("group", "use_domain", 1)\n', fuser="alice")
    assert ctx.rt.vars["f"] == 1
    ctx = run(db, route, "1.2.3.4", fuser="bob")
    assert ctx.rt.vars["f"] == -1


def test_bad_arguments_fail_at_load():
    cfg = check_text('loadmodule "permissions.so"\nloadmodule "group.so"\n'
                     'modparam("permissions", "peer_tag_avp", "tag")\n'
                     'request_route { allow_source_address("x"); is_user_in("Via", "g"); }\n',
                     "t.cfg")
    text = " ".join(str(e) for e in cfg.errors)
    assert "peer_tag_avp" in text and "x" in text and "bad URI source 'Via'" in text
