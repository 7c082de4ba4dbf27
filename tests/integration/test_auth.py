"""Digest authentication on the wire: sipp REGISTERs with [authentication]
against SQLite and PostgreSQL, a Python digest client for wrong passwords,
someone else's credentials, replayed nc, stale nonces and SHA-256; serctl
passwd taking effect at once; the seed's auth snippets (01, 02)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ser.core.db import connect
from ser.core.db.schema import init_db

from ..unit.test_auth import digest_header
from .conftest import SERCTL, need

ROOT = Path(__file__).resolve().parents[2]
SCEN = ROOT / "bench" / "scenarios"
SNIPPETS = ROOT / "tests" / "data" / "seed-snippets"

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
loadmodule "db_sqlite.so"
loadmodule "db_postgres.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
modparam("auth_db", "db_url", "DBURL")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("auth", "nonce_count", 1)
modparam("auth", "nonce_expire", 3)

request_route {{
    if (is_method("REGISTER")) {{
        if (!auth_check("example.com", "subscriber", "1")) {{
            switch ($retcode) {{
                case -8:
                    sl_send_reply("403", "Forbidden auth ID");
                    exit;
                case -3:
                    sl_send_reply("403", "Unknown user");
                    exit;
            }}
            if ($hdr(X-Alg) == "sha") {{
                www_challenge("example.com", "1", "SHA-256,MD5");
            }} else {{
                www_challenge("example.com", "1");
            }}
            exit;
        }}
        consume_credentials();
        save("location");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"""


class Client:
    """A UDP SIP client on its own port that answers digest challenges."""

    def __init__(self, port: int, src: str = "127.0.0.1") -> None:
        self.port = port
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((src, 0))
        self.s.settimeout(3.0)
        self.lport = self.s.getsockname()[1]
        self.cseq = 0

    def close(self) -> None:
        self.s.close()

    def request(self, user: str = "alice", extra: str = "", method: str = "REGISTER",
                ruri: str = "sip:example.com", callid: str = "c1",
                domain: str = "example.com") -> str:
        self.cseq += 1
        contact = f"Contact: <sip:{user}@127.0.0.1:{self.lport}>\r\nExpires: 60\r\n" \
            if method == "REGISTER" else ""
        msg = (f"{method} {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{self.lport};branch=z9hG4bK{callid}{self.cseq}"
               f";rport\r\nMax-Forwards: 70\r\n"
               f"From: <sip:{user}@{domain}>;tag=t{self.cseq}\r\n"
               f"To: <sip:{user}@{domain}>\r\nCall-ID: {callid}\r\n"
               f"CSeq: {self.cseq} {method}\r\n{contact}{extra}Content-Length: 0\r\n\r\n")
        self.s.sendto(msg.encode(), ("127.0.0.1", self.port))
        return self.s.recv(65535).decode()

    @staticmethod
    def status(reply: str) -> int:
        return int(reply.split(" ", 2)[1])

    @staticmethod
    def challenges(reply: str) -> list[str]:
        return re.findall(r"^WWW-Authenticate: (.*)\r$", reply, re.M)


def _db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        url = f"sqlite://{tmp_path}/ser.db"
    else:
        url = request.getfixturevalue("pg_db")
    conn = connect(url)
    init_db(conn)
    conn.close()
    return url


def serctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([SERCTL, *args], capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(params=["sqlite", "postgres"])
def auth_server(request, tmp_path, ser_factory):
    url = _db(request.param, tmp_path, request)
    for user, pw in (("alice", "secret"), ("bob", "bobpw")):
        serctl("--db", url, "add", f"{user}@example.com", pw)
    ser = ser_factory(CFG.replace("DBURL", url))
    ser.db_url = url
    return ser


def test_sipp_register_with_authentication(auth_server, tmp_path):
    ser = auth_server
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\n" + "".join(
        f"{u};[authentication username={u} password={pw}]\n"
        for u, pw in (("alice", "secret"), ("bob", "bobpw"))))
    r = subprocess.run([need("sipp"), "-sf", str(SCEN / "register_auth.xml"), "-inf", str(users),
                        "-m", "2", "-r", "10", "-i", "127.0.0.1", "-nostdin", "-timeout", "20s",
                        f"127.0.0.1:{ser.port}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + ser.logtext()
    dump = str(ser.rpc("ul.dump"))
    assert "alice" in dump and "bob" in dump


def test_python_client_wrong_password_other_id_replay(auth_server):
    ser = auth_server
    c = Client(ser.port)
    try:
        first = c.request()
        assert c.status(first) == 401
        (chal,) = c.challenges(first)
        assert 'qop="auth"' in chal and 'realm="example.com"' in chal
        # the right password: 200 listing the contact
        h = digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com", nc=1)
        ok = c.request(extra=h)
        assert c.status(ok) == 200 and f"sip:alice@127.0.0.1:{c.lport}" in ok
        # the same nonce and nc again: a replay, challenged anew with stale=true
        again = c.request(extra=h)
        assert c.status(again) == 401 and "stale=true" in c.challenges(again)[0]
        # wrong password: challenged again (this config's choice), not stale
        bad = c.request(extra=digest_header(chal, "alice", "nope", "REGISTER",
                                            "sip:example.com", nc=5))
        assert c.status(bad) == 401 and "stale" not in c.challenges(bad)[0]
        # bob's valid credentials on alice's REGISTER: 403
        other = c.request(extra=digest_header(chal, "bob", "bobpw", "REGISTER",
                                              "sip:example.com", nc=6))
        assert other.startswith("SIP/2.0 403 Forbidden auth ID")
        # nobody
        unknown = c.request(user="carol", extra=digest_header(
            chal, "carol", "x", "REGISTER", "sip:example.com", nc=7))
        assert unknown.startswith("SIP/2.0 403 Unknown user")
    finally:
        c.close()
    stats = dict(line.split(" = ", 1) for line in ser.rpc("stats.get_statistics", "auth:"))
    # the right password twice (alice's, then bob's on alice's REGISTER: the digest
    # is right, the ID check is the config's), a replay, a wrong one, an unknown user
    assert stats["auth:authenticated"] == "2", stats
    assert stats["auth:nonce_reused"] == "1" and stats["auth:invalid_password"] == "1"
    assert stats["auth:user_unknown"] == "1", stats
    assert int(stats["auth:challenges"]) >= 3, stats


def test_expired_nonce_gets_stale_true(auth_server):
    ser = auth_server
    c = Client(ser.port)
    try:
        (chal,) = c.challenges(c.request())
        time.sleep(3.5)                                  # nonce_expire is 3 s
        r = c.request(extra=digest_header(chal, "alice", "secret", "REGISTER",
                                          "sip:example.com"))
        assert c.status(r) == 401
        (new,) = c.challenges(r)
        assert "stale=true" in new
        r = c.request(extra=digest_header(new, "alice", "secret", "REGISTER",
                                          "sip:example.com"))
        assert c.status(r) == 200
    finally:
        c.close()


def test_sha256_challenge(auth_server):
    ser = auth_server
    c = Client(ser.port)
    try:
        first = c.request(extra="X-Alg: sha\r\n")
        chals = c.challenges(first)
        assert len(chals) == 2 and "algorithm=SHA-256" in chals[0] and \
            "algorithm=MD5" in chals[1]
        r = c.request(extra=digest_header(chals[0], "alice", "secret", "REGISTER",
                                          "sip:example.com") + "X-Alg: sha\r\n")
        assert c.status(r) == 200
    finally:
        c.close()


def test_serctl_passwd_takes_effect_at_once(auth_server):
    ser = auth_server
    c = Client(ser.port)
    try:
        (chal,) = c.challenges(c.request())
        assert c.status(c.request(extra=digest_header(
            chal, "alice", "secret", "REGISTER", "sip:example.com", nc=1))) == 200
        serctl("--db", ser.db_url, "-s", ser.sock_path, "passwd", "alice@example.com", "newpw")
        # the old password is refused by every worker at once (2 workers: try both)
        for nc in (2, 3, 4):
            assert c.status(c.request(extra=digest_header(
                chal, "alice", "secret", "REGISTER", "sip:example.com", nc=nc))) == 401
        assert c.status(c.request(extra=digest_header(
            chal, "alice", "newpw", "REGISTER", "sip:example.com", nc=5))) == 200
        r = serctl("--db", ser.db_url, "add", "alice@example.com", "x", check=False)
        assert r.returncode == 1 and "already exists" in r.stderr
        r = serctl("--db", ser.db_url, "passwd", "zed@example.com", "x", check=False)
        assert r.returncode == 1 and "unknown user" in r.stderr
    finally:
        c.close()


def _snippet(name: str, url: str, port: int) -> str:
    text = (SNIPPETS / name).read_text()
    text = text.replace("sqlite:///var/lib/ser/ser.db", url)
    text = text.replace("{", "{{").replace("}", "}}")
    head, _, rest = text.partition("\n")
    return f"{head}\nlisten=udp:127.0.0.1:{{port}}\nchildren=2\n" \
           f'loadmodule "jsonrpcs.so"\nloadmodule "corex.so"\n{rest}'


@pytest.mark.parametrize("name,hdr", [("01-auth-db-params.cfg", "WWW"),
                                      ("02-proxy-authorize.cfg", "Proxy")])
def test_seed_auth_snippets_with_load_credentials(name, hdr, ser_factory, tmp_path):
    url = f"sqlite://{tmp_path}/ser.db"
    conn = connect(url)
    init_db(conn)
    conn.execute("ALTER TABLE subscriber ADD COLUMN rpid VARCHAR(128) DEFAULT NULL")
    conn.execute("ALTER TABLE subscriber ADD COLUMN email_address VARCHAR(128) DEFAULT NULL")
    conn.close()
    serctl("--db", url, "add", "alice@kamailio.org", "secret")
    conn = connect(url)
    conn.execute("UPDATE subscriber SET rpid = ?, email_address = ? WHERE username = ?",
                 ("<sip:+49301234@kamailio.org>", "alice@kamailio.org", "alice"))
    conn.close()
    cfg = _snippet(name, url, 0)
    # observe the AVPs: the snippet's 200 carries them
    cfg = cfg.replace('sl_send_reply("200", "OK");',
                      'append_to_reply("X-RPID: $avp(i:12)\\r\\nX-Email: $avp(i:14)\\r\\n");\n'
                      '    sl_send_reply("200", "OK");')
    if name.startswith("02"):
        cfg = cfg.replace('modparam("auth_db", "calculate_ha1", 1)',
                          'modparam("auth_db", "calculate_ha1", 1)\nmodparam("auth_db", '
                          '"load_credentials", "$avp(i:12)=rpid; $avp(i:14)=email_address")')
    ser = ser_factory(cfg)
    c = Client(ser.port)
    try:
        first = c.request(method="OPTIONS", ruri="sip:kamailio.org", domain="kamailio.org")
        assert c.status(first) == (401 if hdr == "WWW" else 407)
        (chal,) = re.findall(rf"^{hdr}-Authenticate: (.*)\r$", first, re.M)
        h = digest_header(chal, "alice", "secret", "OPTIONS", "sip:kamailio.org",
                          hdr="Authorization" if hdr == "WWW" else "Proxy-Authorization")
        r = c.request(method="OPTIONS", ruri="sip:kamailio.org", extra=h, domain="kamailio.org")
        assert c.status(r) == 200, r
        assert "X-RPID: <sip:+49301234@kamailio.org>" in r
        assert "X-Email: alice@kamailio.org" in r
    finally:
        c.close()
