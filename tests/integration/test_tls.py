"""TLS end to end: the real daemon, Python's ssl module as the phones.

Certificates are made per test run (a CA, a server certificate, client
certificates signed by the CA). The seed's TLS snippets run as written, with
only their file paths and ports replaced.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import SER, SERCTL, free_port

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "tests" / "data" / "seed-snippets"


# ------------------------------------------------------------------ certificates

def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ser tests")])


def _issue(cn: str, issuer_key=None, issuer_cn: str | None = None, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(_name(issuer_cn or cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("localhost")]),
            critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, key, cert) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    kp, cp = path.with_suffix(".key"), path.with_suffix(".pem")
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(kp), str(cp)


class Certs:
    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        ca_key, ca = _issue("ser test CA", ca=True)
        _, self.ca = _write(d / "ca", ca_key, ca)
        self.server_key, self.server = _write(d / "server", *_issue("ser.test", ca_key,
                                                                    "ser test CA"))
        self.alice_key, self.alice = _write(d / "alice", *_issue("alice", ca_key, "ser test CA"))
        self.ca_key = ca_key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def client_ctx(certs: Certs | None = None, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if certs is not None:
        ctx.load_verify_locations(certs.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if with_cert and certs is not None:
        ctx.load_cert_chain(certs.alice, certs.alice_key)
    return ctx


# ------------------------------------------------------------------ a stream peer

class Peer:
    """A SIP endpoint on one stream (TLS or TCP) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.local = sock.getsockname()[:2]

    @classmethod
    def tls(cls, port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> Peer:
        raw = socket.create_connection((host, port), timeout=5)
        return cls(ctx.wrap_socket(raw))

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1") -> Peer:
        return cls(socket.create_connection((host, port), timeout=5))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_msg(self, timeout: float = 3.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"\r\n(?:Content-Length|l)\s*:\s*(\d+)", self.buf[:end], re.I)
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg.decode()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole message in {timeout} s (have {self.buf[:200]!r})")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by ser")
            self.buf += chunk

    def expect(self, start: str, timeout: float = 3.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv_msg(max(0.05, deadline - time.monotonic()))
            if m.startswith(start):
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {start}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def request(method: str, ruri: str, transport: str, local: tuple[str, int], branch: str,
            extra: str = "", cseq: int = 1, host_to: str = "example.com",
            user: str = "alice") -> bytes:
    lh = f"[{local[0]}]" if ":" in local[0] else local[0]
    return (f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {lh}:{local[1]};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{host_to}>;tag=f{branch}\r\n"
            f"To: <sip:{user}@{host_to}>\r\n"
            f"Call-ID: {branch}@test\r\n"
            f"CSeq: {cseq} {method}\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def register(peer: Peer, transport: str, port: int, branch: str, user: str = "alice") -> str:
    lh = f"[{peer.local[0]}]" if ":" in peer.local[0] else peer.local[0]
    contact = f"Contact: <sip:{user}@{lh}:{peer.local[1]};transport={transport.lower()}>\r\n" \
              f"Expires: 300\r\n"
    peer.send(request("REGISTER", "sip:example.com", transport, peer.local, branch, contact,
                      user=user))
    return peer.expect("SIP/2.0 ")


def reply_to(req: str, code: int, reason: str) -> bytes:
    keep = [ln for ln in req.split("\r\n")
            if re.match(r"(Via|From|To|Call-ID|CSeq):", ln, re.I)]
    keep = [ln + (";tag=callee" if ln.startswith("To:") and "tag=" not in ln else "")
            for ln in keep]
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(keep) +
            "\r\nContent-Length: 0\r\n\r\n").encode()


# ------------------------------------------------------------------ configs

def tls_cfg(certs: Certs, port: int, tls_port: int, extra_params: str = "",
            route: str = "", globals_: str = "") -> str:
    return f"""\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
enable_tls=yes
{globals_}
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
listen=tls:127.0.0.1:{tls_port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "tls.so"
modparam("tls", "certificate", "{certs.server}")
modparam("tls", "private_key", "{certs.server_key}")
modparam("tls", "ca_list", "{certs.ca}")
{extra_params}
request_route {{{{
    if (proto==TLS) {{{{
        xlog("L_INFO", "TLS $rm cn='$tls_peer_subject_cn' version='$tls_version' bits=$tls_cipher_bits my_cn='$tls_my_subject_cn'\\n");
    }}}}
{route}
    if (is_method("REGISTER")) {{{{
        save("location");
        exit;
    }}}}
    if (is_method("OPTIONS") && $rU == "ping") {{{{
        sl_send_reply("200", "OK");
        exit;
    }}}}
    if (!lookup("location")) {{{{
        sl_send_reply("404", "Not Here");
        exit;
    }}}}
    t_relay();
}}}}
"""


def start(ser_factory, text: str, port: int):
    return ser_factory(text, port=port)


def options(peer: Peer, transport: str, branch: str) -> str:
    peer.send(request("OPTIONS", "sip:ping@example.com", transport, peer.local, branch))
    return peer.expect("SIP/2.0 ")


# ------------------------------------------------------------------ tests

def test_register_over_tls_with_client_certificate(ser_factory, certs):
    port, tport = free_port(), free_port()
    ser = start(ser_factory, tls_cfg(certs, port, tport, extra_params='''
modparam("tls", "verify_certificate", 1)
modparam("tls", "require_certificate", 1)'''), port)
    alice = Peer.tls(tport, client_ctx(certs, with_cert=True))
    try:
        assert register(alice, "TLS", tport, "z9hG4bKreg1").startswith("SIP/2.0 200")
    finally:
        alice.close()
    # no certificate: the handshake is refused
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        bare = Peer.tls(tport, client_ctx(certs))
        try:
            register(bare, "TLS", tport, "z9hG4bKreg2")
        finally:
            bare.close()
    time.sleep(0.3)
    log = ser.logtext()
    assert "TLS REGISTER cn='alice' version='TLSv1.3' bits=256 my_cn='ser.test'" in log, log
    assert re.search(r"tls handshake with 127\.0\.0\.1:\d+ failed", log), log
    dump = str(ser.rpc("ul.dump"))
    assert "transport=tls" in dump


def test_ua_registered_over_tls_gets_invite_from_udp_caller(ser_factory, certs):
    port, tport = free_port(), free_port()
    ser = start(ser_factory, tls_cfg(certs, port, tport), port)
    alice = Peer.tls(tport, client_ctx(certs))
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(3)
    try:
        assert register(alice, "TLS", tport, "z9hG4bKr1").startswith("SIP/2.0 200")
        inv = request("INVITE", "sip:alice@example.com", "UDP", caller.getsockname(),
                      "z9hG4bKinv1", user="alice")
        # the caller sends from UDP; ser hands the INVITE to the TLS connection's owner
        caller.sendto(inv, ("127.0.0.1", port))
        got = alice.expect("INVITE ", timeout=5)
        vias = re.findall(r"^Via: (.*)\r$", got, re.M)
        assert vias[0].startswith(f"SIP/2.0/TLS 127.0.0.1:{tport};branch=z9hG4bK")
        alice.send(reply_to(got, 486, "Busy Here"))
        deadline = time.monotonic() + 5
        codes = []
        while time.monotonic() < deadline and 486 not in codes:
            data = caller.recv(65535).decode()
            codes.append(int(data.split()[1]))
        assert 486 in codes
        # ACK for the 486 goes over the TLS connection too
        alice.expect("ACK ", timeout=5)
    finally:
        alice.close()
        caller.close()
    assert ser.rpc("tm.stats")["created"] >= 1


def test_thousand_idle_tls_connections_new_client_still_served(ser_factory, certs):
    port, tport = free_port(), free_port()
    n = 1000
    ser = start(ser_factory, tls_cfg(certs, port, tport, globals_="""
tcp_max_connections=4096
tls_max_connections=4096
tcp_max_connections_per_ip=4096
tcp_connection_lifetime=600"""), port)
    ctx = client_ctx()
    idle: list[ssl.SSLSocket] = []
    try:
        deadline = time.monotonic() + 90
        for _ in range(n):
            assert time.monotonic() < deadline, f"only {len(idle)} handshakes in 90 s"
            raw = socket.create_connection(("127.0.0.1", tport), timeout=10)
            idle.append(ctx.wrap_socket(raw))
        t0 = time.monotonic()
        fresh = Peer.tls(tport, ctx)
        try:
            assert options(fresh, "TLS", "z9hG4bKfresh").startswith("SIP/2.0 200")
        finally:
            fresh.close()
        took = time.monotonic() - t0
        assert took < 1.0, f"a new client took {took:.3f} s with {n} idle connections"
        listed = ser.rpc("tls.list")
        assert len(listed) >= n
        assert all(c["state"] == "established" for c in listed[:50])
        assert listed[0]["version"].startswith("TLSv1.")
        info = ser.rpc("tls.info")
        assert info["opened_connections"] >= n
    finally:
        for s in idle:
            s.close()


def test_tls_max_connections_is_global_and_leaves_tcp_alone(ser_factory, certs):
    port, tport = free_port(), free_port()
    ser = start(ser_factory, tls_cfg(certs, port, tport, globals_="""
tcp_children=3
tls_max_connections=2
tcp_connection_lifetime=600""").replace("tcp_children=2\n", "", 1), port)
    kept: list[Peer] = []
    try:
        refused = 0
        for i in range(4):
            try:
                p = Peer.tls(tport, client_ctx(certs))
                assert options(p, "TLS", f"z9hG4bKtm{i}").startswith("SIP/2.0 200")
                kept.append(p)
            except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
                refused += 1
        assert len(kept) == 2 and refused == 2
        info = ser.rpc("tls.info")
        assert info["max_connections"] == 2 and info["opened_connections"] == 2
        tcp = Peer.tcp(port)                  # TCP still has room
        kept.append(tcp)
        assert options(tcp, "TCP", "z9hG4bKtmtcp").startswith("SIP/2.0 200")
        tcp_info = ser.rpc("core.tcp_info")
        assert (tcp_info["opened_connections"], tcp_info["opened_tls_connections"]) == (3, 2)
    finally:
        for p in kept:
            p.close()


def test_seed_06_tls_runs_as_written(ser_factory, certs, tmp_path):
    """06-tls.cfg with only its paths and ports replaced: $tls_* in the log,
    both relays go out over TLS, onsend_route sees $snd(proto)==3."""
    port, up_port = free_port(), free_port()
    text = (SNIPPETS / "06-tls.cfg").read_text()
    text = (text.replace("/etc/ser/ser-selfsigned.key", certs.server_key)
            .replace("/etc/ser/ser-selfsigned.pem", certs.server)
            .replace("/etc/ser/calists.pem", certs.ca)
            .replace("{", "{{").replace("}", "}}")
            .replace("127.0.0.1:5061", "127.0.0.1:{port}")
            .replace('"5071"', f'"{up_port}"').replace(":5071", f":{up_port}"))
    text = text.replace("#!KAMAILIO", "#!KAMAILIO\ndebug=2\nlog_stderror=yes\nchildren=2\n"
                        "tcp_children=2\nloadmodule \"jsonrpcs.so\"", 1)
    upstream, got = _tls_upstream(certs, up_port)
    ser = ser_factory(text, port=port)
    ok = subprocess.run([SER, "-c", "-f", str(ser.cfg)], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0 and "config file ok" in ok.stdout, ok.stderr
    phone = Peer.tls(port, client_ctx(certs))
    try:
        for i, ruri in enumerate(("sip:bob@secure.example", "sip:bob@other.example")):
            phone.send(request("OPTIONS", ruri, "TLS", phone.local, f"z9hG4bKseed{i}"))
            assert phone.expect("SIP/2.0 200", timeout=5)
    finally:
        phone.close()
        upstream.close()
    assert len(got) == 2 and all(m.startswith("OPTIONS sip:bob@") for m in got)
    assert re.search(r"^Via: SIP/2.0/TLS 127\.0\.0\.1:\d+;branch=", got[0], re.M)
    log = ser.logtext()
    for name in ("tls_version", "tls_description", "tls_cipher_info", "tls_cipher_bits",
                 "tls_my_subject", "tls_my_issuer", "tls_my_serial", "tls_my_subject_cn",
                 "tls_my_issuer_cn", "tls_my_version"):
        assert re.search(rf"{name} = '[^']+'", log), (name, log)
    assert "tls_my_subject_cn = 'ser.test'" in log
    assert "tls_my_issuer_cn = 'ser test CA'" in log
    assert "tls_version = 'TLSv1.3'" in log
    assert "going out over TLS to 127.0.0.1" in log


def _tls_upstream(certs: Certs, port: int) -> tuple[socket.socket, list[str]]:
    """A TLS server answering every request with 200, in a thread."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server, certs.server_key)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(8)
    lsock.settimeout(20)
    got: list[str] = []

    def serve() -> None:
        try:
            raw, _ = lsock.accept()
            peer = Peer(ctx.wrap_socket(raw, server_side=True))
            while len(got) < 2:
                m = peer.recv_msg(timeout=15)
                got.append(m)
                peer.send(reply_to(m, 200, "OK"))
            peer.close()
        except (OSError, TimeoutError):
            pass
    threading.Thread(target=serve, daemon=True).start()
    return lsock, got


def test_seed_07_tls_config_file(ser_factory, certs):
    port = free_port()
    text = (SNIPPETS / "07-tls-config-file.cfg").read_text()
    text = (text.replace("{", "{{").replace("}", "}}")
            .replace("/etc/ser/tls.cfg", "tls.cfg")
            .replace("127.0.0.1:5061", "127.0.0.1:{port}"))
    text = text.replace("#!KAMAILIO", "#!KAMAILIO\ndebug=2\nlog_stderror=yes\nchildren=2\n"
                        "tcp_children=2", 1)
    ser = ser_factory(text, port=port, start=False)
    # the file's own example, paths relative to the main config's directory
    example = re.findall(r"^# (\[server:default\]$.*)", text, re.M | re.S)[0]
    tls_file = "\n".join(ln[2:] if ln.startswith("# ") else ln
                         for ln in ("# " + example).splitlines())
    (ser.tmp / "tls.cfg").write_text(tls_file)
    for src, dst in ((certs.server_key, "default_key.pem"), (certs.server, "default_cert.pem"),
                     (certs.ca, "default_ca.pem")):
        (ser.tmp / dst).write_bytes(Path(src).read_bytes())
    # `ser -c` finds the profile file and its certificates as the start does:
    # relative to the main config's directory, whatever the working directory
    ok = subprocess.run([SER, "-c", "-f", str(ser.cfg)], capture_output=True, text=True,
                        timeout=30, cwd="/")
    assert ok.returncode == 0 and "config file ok" in ok.stdout, ok.stderr
    ser.start()
    phone = Peer.tls(port, client_ctx(certs))
    try:
        assert options(phone, "TLS", "z9hG4bKseven").startswith("SIP/2.0 200")
    finally:
        phone.close()


def test_config_file_profiles_per_address(ser_factory, certs, tmp_path):
    """[server:IP:PORT] wins over [server:default]; TLSv1.2 only there."""
    port, tport = free_port(), free_port()
    cfgfile = tmp_path / "profiles.cfg"
    cfgfile.write_text(f"""
[server:default]
method = TLSv1.3+
certificate = {certs.alice}
private_key = {certs.alice_key}

[server:127.0.0.1:{tport}]
method = TLSv1.2
certificate = {certs.server}
private_key = {certs.server_key}

[client:default]
verify_certificate = no
""")
    ser = start(ser_factory, tls_cfg(certs, port, tport,
                                     extra_params=f'modparam("tls", "config", "{cfgfile}")'),
                port)
    phone = Peer.tls(tport, client_ctx(certs))
    try:
        assert phone.sock.version() == "TLSv1.2"
        assert phone.sock.getpeercert()["subject"][0][0] == ("commonName", "ser.test")
        assert options(phone, "TLS", "z9hG4bKprof").startswith("SIP/2.0 200")
    finally:
        phone.close()
    assert {p["profile"] for p in ser.rpc("tls.options")} >= {
        "server:default", f"server:127.0.0.1:{tport}", "client:default"}


def test_sni_selects_the_server_profile_by_server_name(ser_factory, certs, tmp_path):
    """A client's SNI name picks the profile whose server_name matches: the
    address's SNI sections first, then [server:default] ones; no name, or a
    name nothing matches, gets the address's plain profile."""
    port, tport = free_port(), free_port()
    okey, ocert = _write(tmp_path / "other", *_issue("other.test", certs.ca_key, "ser test CA"))
    wkey, wcert = _write(tmp_path / "wild", *_issue("wild.test", certs.ca_key, "ser test CA"))
    cfgfile = tmp_path / "sni.cfg"
    cfgfile.write_text(f"""
[server:127.0.0.1:{tport}]
certificate = {certs.server}
private_key = {certs.server_key}

[server:127.0.0.1:{tport}]
server_name = sip.other.test
certificate = {ocert}
private_key = {okey}

[server:default]
server_name = wild.test
server_name_mode = 1
certificate = {wcert}
private_key = {wkey}

[client:default]
verify_certificate = no
""")
    ser = start(ser_factory, tls_cfg(certs, port, tport,
                                     extra_params=f'modparam("tls", "config", "{cfgfile}")'),
                port)
    expect = {"sip.other.test": "other.test", "SIP.Other.Test": "other.test",
              "wild.test": "wild.test", "pbx.wild.test": "wild.test",
              "other.test": "ser.test", "nowhere.example": "ser.test", None: "ser.test"}
    for i, (sni, cn) in enumerate(expect.items()):
        raw = socket.create_connection(("127.0.0.1", tport), timeout=5)
        phone = Peer(client_ctx(certs).wrap_socket(raw, server_hostname=sni))
        try:
            subject = dict(x[0] for x in phone.sock.getpeercert()["subject"])
            assert subject["commonName"] == cn, (sni, subject)
            assert options(phone, "TLS", f"z9hG4bKsni{i}").startswith("SIP/2.0 200")
            if sni:
                names = {c.get("server_name") for c in ser.rpc("tls.list")}
                assert sni in names
        finally:
            phone.close()
    log = ser.logtext()
    assert "my_cn='other.test'" in log and "my_cn='wild.test'" in log
    assert {p["profile"] for p in ser.rpc("tls.options")} >= {
        f"server:127.0.0.1:{tport}", f"server:127.0.0.1:{tport}/sip.other.test",
        "server:default/wild.test"}


def test_repeated_server_section_without_server_name_is_refused(ser_factory, certs, tmp_path):
    port, tport = free_port(), free_port()
    cfgfile = tmp_path / "dup.cfg"
    cfgfile.write_text(f"[server:127.0.0.1:{tport}]\nmethod = TLSv1.2+\n"
                       f"[server:127.0.0.1:{tport}]\nmethod = TLSv1.3\n")
    ser = ser_factory(tls_cfg(certs, port, tport,
                              extra_params=f'modparam("tls", "config", "{cfgfile}")'),
                      port=port, start=False)
    r = subprocess.run(ser.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"[server:127.0.0.1:{tport}] (give each server section of an address its own " \
        "server_name) is defined twice" in r.stdout + r.stderr


@pytest.mark.parametrize("method", ["SSLv3", "TLSv1", "SSLv2", "TLSv1.0"])
def test_insecure_methods_refused(ser_factory, certs, method, tmp_path):
    port, tport = free_port(), free_port()
    text = tls_cfg(certs, port, tport, extra_params=f'modparam("tls", "tls_method", "{method}")')
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text.format())
    r = subprocess.run([SER, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"'{method}' allows SSLv2/SSLv3/TLSv1.0, which are insecure and refused" in \
        r.stdout + r.stderr


def test_insecure_method_in_config_file_refused_at_start(ser_factory, certs, tmp_path):
    port, tport = free_port(), free_port()
    f = tmp_path / "t.cfg"
    f.write_text("[server:default]\nmethod = SSLv3\n")
    ser = ser_factory(tls_cfg(certs, port, tport, extra_params=f'modparam("tls", "config", "{f}")'),
                      port=port, start=False)
    r = subprocess.run(ser.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "[server:default] method: 'SSLv3' allows SSLv2/SSLv3/TLSv1.0" in r.stderr


def test_missing_certificate_is_a_start_error(ser_factory, certs, tmp_path):
    port, tport = free_port(), free_port()
    text = tls_cfg(certs, port, tport).replace(certs.server, str(tmp_path / "nope.pem"))
    ser = ser_factory(text, port=port, start=False)
    r = subprocess.run(ser.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"cannot load certificate {tmp_path / 'nope.pem'}: no such file" in r.stderr


def _check(tmp_path: Path, text: str) -> tuple[int, str, str]:
    """`ser -c` on ``text`` (a tls_cfg, formatted): exit code, output, the cfg path."""
    cfg = tmp_path / "check.cfg"
    cfg.write_text(text)
    r = subprocess.run([SER, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr, str(cfg)


def _line_col(text: str, needle: str) -> str:
    """line:col (1-based) of the first ``needle`` in ``text``."""
    i = text.index(needle)
    return f"{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)}"


def test_check_mode_loads_the_certificates(certs, tmp_path):
    """`ser -c` builds the TLS contexts as the start does: a good config passes;
    a key of another certificate fails with the place of the modparam and the
    file; a certificate or CA file that does not exist (yet) is a warning with
    that place (Kamailio's -c does not look at the files; the start fails)."""
    good = tls_cfg(certs, free_port(), free_port()).format()
    code, out, _ = _check(tmp_path, good)
    assert code == 0, out
    assert "config file ok" in out
    nope = str(tmp_path / "nope.pem")
    for param, swap, want in (
            ("certificate", certs.server, f"cannot load certificate {nope}: no such file"),
            ("ca_list", certs.ca, f"cannot load ca_list {nope}: no such file"),
            ("private_key", certs.server_key, f"cannot load private key {certs.alice_key}")):
        text = good.replace(f'"{swap}"', f'"{certs.alice_key if param == "private_key" else nope}"')
        code, out, cfg = _check(tmp_path, text)
        at = _line_col(text, f'modparam("tls", "{param}", "').split(":")
        col = int(at[1]) + len(f'modparam("tls", "{param}", ')
        where = f"{cfg}:{at[0]}:{col}: tls profile server:default (modparam): {want}"
        if param == "private_key":
            assert code == 1, (param, out)
            assert where in out, out
            assert "ERROR: bad config file (1 error found)" in out
        else:
            assert code == 0, (param, out)
            assert f"WARNING: {where} (ser will not start until it exists)" in out, out
            assert "config file ok" in out


@pytest.mark.parametrize(("ini", "line", "why"), [
    ("[server:default]\nmethod = SSLv3\n", 2,
     "[server:default] method: 'SSLv3' allows SSLv2/SSLv3/TLSv1.0, which are insecure"),
    ("[server:127.0.0.1:5061]\nmethod = TLSv1.2+\n\n[server:127.0.0.1:5061]\n", 4,
     "[server:127.0.0.1:5061] (give each server section of an address its own server_name) "
     "is defined twice"),
    ("[server:default]\nserver_name = a.test\nserver_name_mode = 5\n", 3,
     "[server:default] server_name_mode: 5 is not 0, 1 or 2"),
    ("# profiles\n[client:default]\nverify_certificate = maybe\n", 3,
     "[client:default] verify_certificate: 'maybe' is not yes or no"),
    ("[server:default]\ncertifcate = /x.pem\n", 2, "[server:default] certifcate: unknown option"),
    ("[server:default]\nthis is not an option\n", 2,
     "cannot parse 'this is not an option' (want 'name = value')"),
])
def test_check_mode_reports_the_tls_config_file_line(certs, tmp_path, ini, line, why):
    ini_file = tmp_path / "tls.ini"
    ini = ini.replace("NOPE", str(tmp_path / "nope.pem"))
    why = why.replace("NOPE", str(tmp_path / "nope.pem")).replace("CFG", str(ini_file))
    ini_file.write_text(ini)
    text = tls_cfg(certs, free_port(), free_port(),
                   extra_params=f'modparam("tls", "config", "{ini_file}")').format()
    code, out, _ = _check(tmp_path, text)
    assert code == 1, out
    assert f"{ini_file}:{line}: {why}" in out, out


def test_check_mode_missing_tls_config_file(certs, tmp_path):
    """A profile file not installed yet: `ser -c` warns at the modparam (as
    Kamailio's -c, which does not read it, passes); the start fails."""
    text = tls_cfg(certs, free_port(), free_port(),
                   extra_params='modparam("tls", "config", "missing-tls.cfg")').format()
    code, out, cfg = _check(tmp_path, text)
    assert code == 0, out
    at = _line_col(text, '"missing-tls.cfg"')
    assert f"WARNING: {cfg}:{at}: tls config file {tmp_path / 'missing-tls.cfg'}: " \
        "No such file or directory (ser will not start until it exists)" in out, out
    ini = tmp_path / "tls.ini"
    ini.write_text(f"[server:default]\ncertificate = {tmp_path / 'nope.pem'}\n")
    text = tls_cfg(certs, free_port(), free_port(),
                   extra_params=f'modparam("tls", "config", "{ini}")').format()
    code, out, _ = _check(tmp_path, text)
    assert code == 0, out
    assert f"WARNING: {ini}:2: tls profile server:default ({ini}:1): cannot load " \
        f"certificate {tmp_path / 'nope.pem'}: no such file" in out, out


@pytest.mark.parametrize("name", ["06-tls.cfg", "07-tls-config-file.cfg"])
def test_seed_tls_snippets_pass_check_as_written(name):
    """As written (their /etc/ser files absent here) the seed's TLS snippets
    pass `ser -c`, as they pass Kamailio's -c, with a warning naming the file."""
    r = subprocess.run([SER, "-c", "-f", str(SNIPPETS / name)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config file ok" in r.stdout
    assert re.search(rf"^WARNING: {re.escape(str(SNIPPETS / name))}:\d+:\d+: .*/etc/ser/.*"
                     r"\(ser will not start until it exists\)$", r.stderr, re.M), r.stderr


def test_tls_reload_new_certificate_without_restart(ser_factory, certs, tmp_path):
    port, tport = free_port(), free_port()
    key, cert = tmp_path / "live.key", tmp_path / "live.pem"
    key.write_bytes(Path(certs.server_key).read_bytes())
    cert.write_bytes(Path(certs.server).read_bytes())
    text = tls_cfg(certs, port, tport).replace(certs.server_key, str(key)) \
        .replace(certs.server, str(cert))
    ser = start(ser_factory, text, port)
    first = Peer.tls(tport, client_ctx(certs))
    serial1 = first.sock.getpeercert()["serialNumber"]
    new_key, new_cert = _issue("ser.test", certs.ca_key, "ser test CA")
    _write(tmp_path / "live", new_key, new_cert)
    assert "ok" in ser.rpc("tls.reload")
    time.sleep(1.5)                      # workers pick it up within a second
    second = Peer.tls(tport, client_ctx(certs))
    try:
        assert second.sock.getpeercert()["serialNumber"] != serial1
        # the old connection keeps working
        assert options(first, "TLS", "z9hG4bKold").startswith("SIP/2.0 200")
    finally:
        first.close()
        second.close()
    # a broken file: the reload is refused and the old settings stay
    cert.write_text("garbage")
    with pytest.raises(AssertionError, match="reload failed"):
        ser.rpc("tls.reload")


def test_serctl_tls_gencert_makes_a_usable_pair(ser_factory, certs, tmp_path):
    key, cert = tmp_path / "q.key", tmp_path / "q.pem"
    r = subprocess.run([SERCTL, "tls", "gencert", "--key", str(key), "--cert", str(cert),
                        "--cn", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    port, tport = free_port(), free_port()
    text = tls_cfg(certs, port, tport).replace(certs.server_key, str(key)) \
        .replace(certs.server, str(cert))
    start(ser_factory, text, port)
    phone = Peer.tls(tport, client_ctx())
    try:
        assert phone.sock.getpeercert(binary_form=True)
        assert options(phone, "TLS", "z9hG4bKgen").startswith("SIP/2.0 200")
    finally:
        phone.close()


def test_crl_revoked_client_certificate_refused(ser_factory, certs, tmp_path):
    """A client certificate on the CRL fails the handshake; ser keeps serving."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    alice = x509.load_pem_x509_certificate(Path(certs.alice).read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    revoked = (x509.RevokedCertificateBuilder().serial_number(alice.serial_number)
               .revocation_date(now - datetime.timedelta(minutes=1)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(_name("ser test CA"))
           .last_update(now - datetime.timedelta(minutes=5))
           .next_update(now + datetime.timedelta(days=1)).add_revoked_certificate(revoked)
           .sign(certs.ca_key, hashes.SHA256()))
    crl_path = tmp_path / "ca.crl"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    port, tport = free_port(), free_port()
    ser = start(ser_factory, tls_cfg(certs, port, tport, extra_params=f'''
modparam("tls", "verify_certificate", 1)
modparam("tls", "require_certificate", 1)
modparam("tls", "crl", "{crl_path}")'''), port)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        p = Peer.tls(tport, client_ctx(certs, with_cert=True))
        try:
            options(p, "TLS", "z9hG4bKcrl")
        finally:
            p.close()
    time.sleep(0.3)
    assert "failed: certificate verify failed" in ser.logtext()
