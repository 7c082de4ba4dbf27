"""auth + auth_db through a compiled script: challenges, digests (MD5, SHA-256,
-sess, auth-int), Kamailio's return codes, stale and replayed nonces,
load_credentials, the credentials cache. The client side is computed here
with hashlib, independently of ser.mods.auth."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.db import connect
from ser.core.db.schema import init_db
from ser.core.parser import parse_message
from ser.mods import auth

REQ = ("{method} sip:{ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{n}\r\n"
       "From: <sip:{fuser}@example.com>;tag=1\r\nTo: <sip:{tuser}@example.com>\r\n"
       "Call-ID: c{n}\r\nCSeq: {n} {method}\r\n{extra}Content-Length: {clen}\r\n\r\n{body}")


def H(alg: str, s: str | bytes) -> str:
    b = s if isinstance(s, bytes) else s.encode()
    return (hashlib.sha256 if alg.startswith("SHA-256") else hashlib.md5)(b).hexdigest()


def digest_header(chal: str, user: str, password: str, method: str, uri: str, *,
                  hdr: str = "Authorization", nc: int = 1, cnonce: str = "0a4f113b",
                  qop: str | None = None, body: bytes = b"", alg: str | None = None,
                  username: str | None = None) -> str:
    """A client's Authorization for the challenge header value ``chal``."""
    params = dict(re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', chal) and
                  [(k, a or b) for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', chal)])
    realm, nonce = params["realm"], params["nonce"]
    alg = alg or params.get("algorithm", "MD5")
    if qop is None:
        qop = "auth" if "auth" in params.get("qop", "").split(",") else ""
    ha1 = H(alg, f"{username or user}:{realm}:{password}")
    if alg.endswith("-sess"):
        ha1 = H(alg, f"{ha1}:{nonce}:{cnonce}")
    ha2 = H(alg, f"{method}:{uri}:{H(alg, body)}" if qop == "auth-int" else f"{method}:{uri}")
    ncs = f"{nc:08x}"
    resp = H(alg, f"{ha1}:{nonce}:{ncs}:{cnonce}:{qop}:{ha2}" if qop else f"{ha1}:{nonce}:{ha2}")
    out = (f'{hdr}: Digest username="{username or user}", realm="{realm}", nonce="{nonce}", '
           f'uri="{uri}", response="{resp}", algorithm={alg}')
    if qop:
        out += f', qop={qop}, nc={ncs}, cnonce="{cnonce}"'
    return out + "\r\n"


@pytest.fixture
def db(tmp_path):
    url = f"sqlite://{tmp_path}/ser.db"
    conn = connect(url)
    init_db(conn)
    conn.execute("ALTER TABLE subscriber ADD COLUMN rpid VARCHAR(128) DEFAULT NULL")
    conn.execute("ALTER TABLE subscriber ADD COLUMN email_address VARCHAR(128) DEFAULT NULL")
    for user, pw in (("alice", "secret"), ("bob", "pw2")):
        conn.execute("INSERT INTO subscriber (username, domain, password, ha1, ha1b, rpid, "
                     "email_address) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (user, "example.com", pw, H("MD5", f"{user}:example.com:{pw}"),
                      H("MD5", f"{user}@example.com:example.com:{pw}"),
                      f"<sip:+4930{user}@example.com>", f"{user}@example.com"))
    conn.close()
    return url


class Script:
    def __init__(self, db: str, route: str, params: str = "") -> None:
        text = ('loadmodule "sl.so"\nloadmodule "auth.so"\nloadmodule "auth_db.so"\n'
                'loadmodule "db_sqlite.so"\n'
                f'modparam("auth_db", "db_url", "{db}")\n{params}'
                f"request_route {{\n{route}\n}}\n")
        self.cfg = check_text(text, "t.cfg")
        assert [str(e) for e in self.cfg.errors] == []
        self.rt = Runtime(self.cfg.settings, self.cfg.modules)
        self.n = 0

    def run(self, method: str = "REGISTER", extra: str = "", user: str = "alice",
            body: str = "") -> Context:
        self.n += 1
        raw = REQ.format(method=method, ruri="example.com", n=self.n, fuser=user, tuser=user,
                         extra=extra, clen=len(body), body=body).encode()
        ctx = Context(parse_message(raw), self.rt)
        self.cfg.routes.request(ctx)
        return ctx


ROUTE = """
    if (!www_authorize("example.com", "subscriber")) {
        $var(rc) = $retcode;
        www_challenge("example.com", "1");
        exit;
    }
    $var(rc) = $retcode;
    sl_send_reply("200", "OK");
"""


def challenge_of(ctx: Context, name: str = "WWW-Authenticate") -> list[str]:
    (reply,) = [a for a in ctx.actions if a[0] == "reply"]
    return [h.split(": ", 1)[1] for h in reply[3] if h.startswith(name + ":")]


def code_of(ctx: Context) -> int:
    return [a for a in ctx.actions if a[0] == "reply"][-1][1]


def test_challenge_then_authorized_md5_qop(db):
    s = Script(db, ROUTE)
    first = s.run()
    assert code_of(first) == 401 and s.rt.vars["rc"] == auth.NO_CREDENTIALS
    (chal,) = challenge_of(first)
    assert chal.startswith('Digest realm="example.com", nonce="') and 'qop="auth"' in chal
    ok = s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert code_of(ok) == 200 and s.rt.vars["rc"] == 1


@pytest.mark.parametrize("user,password,rc", [
    ("alice", "wrong", auth.INVALID_PASSWORD),
    ("carol", "secret", auth.USER_UNKNOWN),
])
def test_failures_have_kamailios_codes(db, user, password, rc):
    s = Script(db, ROUTE)
    (chal,) = challenge_of(s.run())
    bad = s.run(extra=digest_header(chal, user, password, "REGISTER", "sip:example.com"))
    assert code_of(bad) == 401 and s.rt.vars["rc"] == rc


def test_nonce_from_another_secret_is_an_error(db):
    s = Script(db, ROUTE, 'modparam("auth", "secret", "one")\n')
    other = auth.AuthConfig(secret=b"two")
    chal = f'realm="example.com", nonce="{auth.make_nonce(other)}", qop="auth"'
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert s.rt.vars["rc"] == auth.AUTH_ERROR


def test_shared_secret_lets_another_node_verify(db):
    a = Script(db, ROUTE, 'modparam("auth", "secret", "cluster-secret")\n')
    b = Script(db, ROUTE, 'modparam("auth", "secret", "cluster-secret")\n')
    (chal,) = challenge_of(a.run())
    b.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert b.rt.vars["rc"] == 1


def test_expired_nonce_is_stale(db):
    s = Script(db, ROUTE, 'modparam("auth", "secret", "k")\nmodparam("auth", "nonce_expire", 30)\n')
    cfg = auth.config(Context(parse_message(REQ.format(
        method="REGISTER", ruri="x", n=0, fuser="a", tuser="a", extra="", clen=0,
        body="").encode()), s.rt))
    old = auth.make_nonce(cfg, now=time.time() - 60)
    chal = f'realm="example.com", nonce="{old}"'
    ctx = s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert s.rt.vars["rc"] == auth.STALE_NONCE
    (new,) = challenge_of(ctx)
    assert "stale=true" in new


def test_replayed_nc_is_rejected_and_higher_nc_accepted(db):
    s = Script(db, ROUTE, 'modparam("auth", "nonce_count", 1)\n')
    (chal,) = challenge_of(s.run())
    h1 = digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com", nc=1)
    s.run(extra=h1)
    assert s.rt.vars["rc"] == 1
    again = s.run(extra=h1)
    assert s.rt.vars["rc"] == auth.NONCE_REUSED and "stale=true" in challenge_of(again)[0]
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com", nc=2))
    assert s.rt.vars["rc"] == 1


def test_one_time_nonce(db):
    s = Script(db, ROUTE.replace('"1")', '"0")'), 'modparam("auth", "one_time_nonce", 1)\n')
    (chal,) = challenge_of(s.run())
    h = digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com")
    s.run(extra=h)
    assert s.rt.vars["rc"] == 1
    s.run(extra=h)
    assert s.rt.vars["rc"] == auth.NONCE_REUSED


def test_sha256_list_strongest_first_and_both_work(db):
    s = Script(db, ROUTE, 'modparam("auth_db", "calculate_ha1", 1)\n'
                          'modparam("auth_db", "password_column", "password")\n'
                          'modparam("auth", "algorithm", "MD5,SHA-256")\n')
    chals = challenge_of(s.run())
    assert ["algorithm=SHA-256" in chals[0], "algorithm=MD5" in chals[1]] == [True, True]
    for chal in chals:
        s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
        assert s.rt.vars["rc"] == 1


def test_challenge_third_argument_and_sess_and_auth_int(db):
    route = ROUTE.replace('www_challenge("example.com", "1")',
                          'www_challenge("example.com", "3", "SHA-256")')
    s = Script(db, route, 'modparam("auth_db", "calculate_ha1", 1)\n'
                          'modparam("auth_db", "password_column", "password")\n')
    (chal,) = challenge_of(s.run())
    assert "algorithm=SHA-256" in chal and 'qop="auth,auth-int"' in chal
    body = "v=0\r\n"
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com",
                              qop="auth-int", body=body.encode())
          + "Content-Type: application/sdp\r\n", body=body)
    assert s.rt.vars["rc"] == 1
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com",
                              alg="SHA-256-sess"))
    assert s.rt.vars["rc"] == 1


def test_username_with_domain_uses_ha1b(db):
    s = Script(db, ROUTE)
    (chal,) = challenge_of(s.run())
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com",
                              username="alice@example.com"))
    assert s.rt.vars["rc"] == 1


def test_calculate_ha1_with_a_hash_column_accepts_stored_ha1(db):
    s = Script(db, ROUTE, 'modparam("auth_db", "calculate_ha1", 1)\n')   # column ha1
    (chal,) = challenge_of(s.run())
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert s.rt.vars["rc"] == 1


def test_load_credentials_and_pvs(db):
    route = ROUTE.replace('sl_send_reply("200", "OK");',
                          '$var(rpid) = $avp(i:12); $var(mail) = $avp(i:14); $var(au) = $au; '
                          '$var(ar) = $ar; $var(aa) = $aa; sl_send_reply("200", "OK");')
    s = Script(db, route, 'modparam("auth_db", "load_credentials", '
                          '"$avp(i:12)=rpid; $avp(i:14)=email_address")\n')
    (chal,) = challenge_of(s.run())
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    v = s.rt.vars
    assert (v["rpid"], v["mail"], v["au"], v["ar"], v["aa"]) == (
        "<sip:+4930alice@example.com>", "alice@example.com", "alice", "example.com", "MD5")


def test_proxy_auth_check_mismatch_and_consume(db):
    route = """
    if (!auth_check("example.com", "subscriber", "1")) {
        $var(rc) = $retcode;
        auth_challenge("example.com", "1");
        exit;
    }
    $var(rc) = $retcode;
    consume_credentials();
    sl_send_reply("200", "OK");
"""
    s = Script(db, route)
    first = s.run(method="INVITE", user="bob")
    assert code_of(first) == 407
    (chal,) = challenge_of(first, "Proxy-Authenticate")
    # alice's credentials on a request From bob
    s.run(method="INVITE", user="bob", extra=digest_header(
        chal, "alice", "secret", "INVITE", "sip:example.com", hdr="Proxy-Authorization"))
    assert s.rt.vars["rc"] == auth.AUTH_USER_MISMATCH
    ok = s.run(method="INVITE", user="bob", extra=digest_header(
        chal, "bob", "pw2", "INVITE", "sip:example.com", hdr="Proxy-Authorization"))
    assert s.rt.vars["rc"] == 1
    assert b"Proxy-Authorization" not in ok.msg.serialize()


def test_pv_www_authenticate(db):
    route = """
    if (!pv_www_authenticate("example.com", "topsecret", "0")) {
        $var(rc) = $retcode;
        www_challenge("example.com", "0");
        exit;
    }
    $var(rc) = $retcode;
"""
    s = Script(db, route)
    (chal,) = challenge_of(s.run())
    assert "qop" not in chal
    s.run(extra=digest_header(chal, "zed", "topsecret", "REGISTER", "sip:example.com"))
    assert s.rt.vars["rc"] == 1


def test_cache_is_used_and_dropped_on_generation_change(db, tmp_path):
    s = Script(db, ROUTE)
    (chal,) = challenge_of(s.run())
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com"))
    assert s.rt.vars["rc"] == 1
    c = sqlite3.connect(db.removeprefix("sqlite://"))
    c.execute("UPDATE subscriber SET ha1 = ? WHERE username = 'alice'",
              (H("MD5", "alice:example.com:new"),))
    c.commit()
    c.close()
    # the row is cached in this process (no shm here: the TTL decides)
    s.run(extra=digest_header(chal, "alice", "secret", "REGISTER", "sip:example.com", nc=2))
    assert s.rt.vars["rc"] == 1
    s.rt.modules["auth_db"].state["creds"].cache.clear()
    s.run(extra=digest_header(chal, "alice", "new", "REGISTER", "sip:example.com", nc=3))
    assert s.rt.vars["rc"] == 1


def test_bad_arguments_fail_at_load():
    cfg = check_text('loadmodule "sl.so"\nloadmodule "auth.so"\nloadmodule "auth_db.so"\n'
                     'modparam("auth", "algorithm", "SHA-512")\n'
                     'request_route { www_challenge("r", "x"); www_authorize("r", "a b"); }\n',
                     "t.cfg")
    text = " ".join(str(e) for e in cfg.errors)
    assert "SHA-512" in text and "must be a number" in text and "bad table name" in text
