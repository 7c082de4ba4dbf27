"""Group ACLs and IP permissions on the wire: the seed's group snippet (03)
before and after `serctl acl grant`, the permissions snippet (05) and
allow_source_address("1") from several 127.x sources (sipp -i and raw
sockets), `serctl address add` + reload without a restart, the RPC dumps."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from ser.core.db import connect
from ser.core.db.schema import init_db

from .conftest import need
from .test_auth import SCEN, _snippet, serctl


def _init(url: str) -> str:
    conn = connect(url)
    init_db(conn)
    conn.close()
    return url


def _send(port: int, src: str, method: str = "OPTIONS", ruri: str = "sip:ping@127.0.0.1",
          user: str = "alice", domain: str = "example.com") -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.settimeout(3.0)
        lport = s.getsockname()[1]
        msg = (f"{method} {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {src}:{lport};branch=z9hG4bK{lport}{method}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=1\r\n"
               f"To: <{ruri}>\r\nCall-ID: {lport}@{src}\r\nCSeq: 1 {method}\r\n"
               f"Content-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), ("127.0.0.1", port))
        return s.recv(65535).decode()
    finally:
        s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return _init(f"sqlite://{tmp_path}/ser.db")
    return _init(request.getfixturevalue("pg_db"))


def test_seed_group_snippet_and_acl_grant(db_url, ser_factory):
    serctl("--db", db_url, "add", "alice@example.com", "pw")
    ser = ser_factory(_snippet("03-group-international.cfg", db_url, 0))
    intl = "sip:0049301234@example.com"
    r = _send(ser.port, "127.0.0.1", "INVITE", intl)
    assert r.startswith("SIP/2.0 403 No permission for international calls"), r
    assert _send(ser.port, "127.0.0.1", "INVITE", "sip:1234@example.com").startswith(
        "SIP/2.0 200 OK")
    serctl("--db", db_url, "acl", "grant", "alice@example.com", "international")
    assert "international" in serctl("--db", db_url, "acl", "show", "alice@example.com").stdout
    assert _send(ser.port, "127.0.0.1", "INVITE", intl).startswith("SIP/2.0 200 OK")
    serctl("--db", db_url, "acl", "revoke", "alice@example.com", "international")
    assert _send(ser.port, "127.0.0.1", "INVITE", intl).startswith("SIP/2.0 403")


def _sipp_options(port: int, src: str, workdir: Path) -> int:
    r = subprocess.run([need("sipp"), "-sf", str(SCEN / "options.xml"), "-m", "1",
                        "-i", src, "-nostdin", "-timeout", "10s", "-recv_timeout", "3000",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                       cwd=workdir)
    return r.returncode


def test_seed_permissions_snippet_from_several_sources(db_url, ser_factory, tmp_path):
    serctl("--db", db_url, "address", "add", "1", "127.0.0.2")
    serctl("--db", db_url, "address", "add", "1", "127.0.1.0/24", "0", "lab")
    serctl("--db", db_url, "address", "add", "1", "10.1.1.10")     # the snippet's allow_address
    ser = ser_factory(_snippet("05-permissions.cfg", db_url, 0))
    for src, want in (("127.0.0.2", 200), ("127.0.1.9", 200), ("127.0.0.3", 403),
                      ("127.0.0.1", 403)):
        r = _send(ser.port, src)
        assert r.startswith(f"SIP/2.0 {want} "), (src, r)
    # sipp from the listed and an unlisted source (options.xml wants 200)
    assert _sipp_options(ser.port, "127.0.0.2", tmp_path) == 0
    assert _sipp_options(ser.port, "127.0.0.3", tmp_path) != 0
    # provisioning and a reload change the answer without a restart
    serctl("--db", db_url, "address", "add", "1", "127.0.0.3", "0")
    assert _send(ser.port, "127.0.0.3").startswith("SIP/2.0 403")     # not yet reloaded
    serctl("-s", ser.sock_path, "address", "reload")
    assert _send(ser.port, "127.0.0.3").startswith("SIP/2.0 200")
    assert _sipp_options(ser.port, "127.0.0.3", tmp_path) == 0
    dump = ser.rpc("permissions.addressDump")
    assert {"gid": 1, "ip": "127.0.0.3", "port": 0, "tag": ""} in dump
    subnets = ser.rpc("permissions.subnetDump")
    assert [(s["ip"], s["mask"], s["tag"]) for s in subnets] == [("127.0.1.0", 24, "lab")]
    # a second reload within reload_delta (5 s) is refused, as in Kamailio
    r = serctl("-s", ser.sock_path, "address", "reload", check=False)
    assert r.returncode == 1 and "reload" in r.stderr


def test_source_group_port_and_tag(ser_factory, tmp_path):
    url = _init(f"sqlite://{tmp_path}/ser.db")
    serctl("--db", url, "address", "add", "7", "127.0.0.4", "0", "peer4")
    serctl("--db", url, "address", "add", "8", "127.0.0.5", "5")       # only from port 5
    cfg = """\
#!KAMAILIO
listen=udp:127.0.0.1:{port}
children=2
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "corex.so"
loadmodule "jsonrpcs.so"
loadmodule "db_sqlite.so"
loadmodule "permissions.so"
modparam("permissions", "db_url", "URL")
modparam("permissions", "peer_tag_avp", "$avp(s:peer)")
modparam("permissions", "reload_delta", 0)
request_route {{
    $var(g) = allow_source_address_group();
    if ($var(g) == -1) {{
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    append_to_reply("X-Group: $var(g)\\r\\nX-Tag: $avp(peer)\\r\\n");
    sl_send_reply("200", "OK");
}}
""".replace("URL", url)
    ser = ser_factory(cfg)
    r = _send(ser.port, "127.0.0.4")
    assert r.startswith("SIP/2.0 200") and "X-Group: 7" in r and "X-Tag: peer4" in r
    assert _send(ser.port, "127.0.0.5").startswith("SIP/2.0 403")      # wrong port
    serctl("--db", url, "address", "rm", "7", "127.0.0.4")
    serctl("-s", ser.sock_path, "address", "reload")
    serctl("-s", ser.sock_path, "address", "reload")                  # reload_delta 0
    assert _send(ser.port, "127.0.0.4").startswith("SIP/2.0 403")


def test_serctl_address_errors(tmp_path):
    url = _init(f"sqlite://{tmp_path}/ser.db")
    for args, text in ((["1", "300.1.1.1"], "bad address"), (["1", "10.0.0.0/40"], "mask"),
                       (["x", "10.0.0.1"], "GRP IP"), (["1", "10.0.0.1", "70000"], "bad port")):
        r = serctl("--db", url, "address", "add", *args, check=False)
        assert r.returncode == 1 and text in r.stderr, (args, r.stderr)
