"""TLS profiles and contexts (pyOpenSSL), as Kamailio's tls module defines them.

Theory of operation. A *profile* is one set of TLS settings (method,
certificate, key, CA list, CRL, verification, ciphers, SNI name) for one
role: ``server`` (connections accepted on a ``listen=tls:`` socket) or
``client`` (connections ser opens). The module parameters make the
``default`` profile of both roles; the ``config`` file (Kamailio's ini-like
``tls.cfg``) adds ``[server:default]``, ``[client:default]``,
``[server:IP:PORT]`` and ``[client:IP:PORT]`` sections, a specific section
starting from the module parameters. A server section with ``server_name``
is an SNI profile: several may share one address (the section name may
repeat). A connection starts with the profile of the listening address (or
``server:default``); when the client's SNI name matches the ``server_name``
of an SNI profile of that address, or else of ``[server:default]``, the
handshake switches to that profile's context (its certificate);
``server_name_mode`` 1 matches subdomains too, 2 only subdomains. A name
that matches nothing keeps the address's profile. :func:`load_profiles` reads and checks
everything (files readable, key matching the certificate, method allowed)
and builds one ``SSL.Context`` per profile; the master does it before the
fork, ``tls.reload`` does it again in every TCP worker.

Connections themselves live in ``ser.core.tcp``: a TLS connection is a TCP
connection with an ``SSL.Connection`` over its non-blocking socket.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from OpenSSL import SSL, crypto

# method name -> (min version, max version); None: refused as insecure
_V12, _V13, _V11 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION, SSL.TLS1_1_VERSION
METHODS: dict[str, tuple[int, int] | None] = {
    "TLSv1.2+": (_V12, 0), "TLSv1.3+": (_V13, 0), "TLSv1.1+": (_V11, 0),
    "TLSv1.2": (_V12, _V12), "TLSv1.3": (_V13, _V13), "TLSv1.1": (_V11, _V11),
    "SSLv2": None, "SSLv3": None, "SSLv23": None, "TLSv1": None, "TLSv1.0": None,
    "TLSv1+": None, "TLSv1.0+": None,
}
DEFAULT_METHOD = "TLSv1.2+"


class TlsError(Exception):
    """A TLS setting or file that cannot be used; the message says which."""


class TlsFileMissing(TlsError):
    """A file a TLS setting names does not exist (yet): an error at start,
    only a warning for `ser -c`, which may run before the files are installed
    (as Kamailio's -c does not look at them)."""


def _file_error(msg: str, path: str) -> TlsError:
    return TlsError(msg) if os.path.exists(path) else TlsFileMissing(msg)


def check_method(value: Any) -> str | None:
    """The error of a ``tls_method`` value, or None."""
    name = str(value).strip()
    if not name:
        return None
    for known, rng in METHODS.items():
        if known.lower() == name.lower():
            if rng is None:
                return (f"'{name}' allows SSLv2/SSLv3/TLSv1.0, which are insecure and "
                        f"refused; use TLSv1.2+ (or TLSv1.1+, TLSv1.2, TLSv1.3)")
            return None
    return f"unknown TLS method '{name}' (use one of {', '.join(k for k, v in METHODS.items() if v)})"


@dataclass
class Profile:
    role: str = "server"                  # "server" or "client"
    addr: str = "default"                 # "default" or "IP:PORT"
    method: str = DEFAULT_METHOD
    certificate: str = ""
    private_key: str = ""
    ca_list: str = ""
    crl: str = ""
    cipher_list: str = ""
    verify_certificate: bool = False
    verify_depth: int = 9
    require_certificate: bool = False
    server_name: str = ""
    server_name_mode: int = 0
    origin: str = "modparam"
    # setting -> "file:line[:col]" it was given at (a modparam or a line of the file)
    where: dict[str, str] = field(default_factory=dict, repr=False)
    ctx: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        sni = f"/{self.server_name}" if self.role == "server" and self.server_name else ""
        return f"{self.role}:{self.addr}{sni}"

    def matches(self, sni: str) -> bool:
        """Does the client's SNI name select this (server) profile?"""
        want = self.server_name.lower().rstrip(".")
        sni = sni.lower().rstrip(".")
        if not want:
            return False
        sub = sni.endswith("." + want)
        if self.server_name_mode == 1:
            return sni == want or sub
        if self.server_name_mode == 2:
            return sub
        return sni == want


_KEYS = {"method": "method", "tls_method": "method", "certificate": "certificate",
         "private_key": "private_key", "pkey": "private_key", "ca_list": "ca_list",
         "crl": "crl", "cipher_list": "cipher_list", "verify_certificate": "verify_certificate",
         "verify_cert": "verify_certificate", "verify_depth": "verify_depth",
         "require_certificate": "require_certificate", "require_cert": "require_certificate",
         "server_name": "server_name", "server_id": None,
         "server_name_mode": "server_name_mode",
         "ca_path": None, "verify_client": None}
_BOOL = {"yes": True, "on": True, "true": True, "1": True, "enable": True,
         "no": False, "off": False, "false": False, "0": False, "disable": False}


def _bool(v: Any) -> bool:
    if isinstance(v, int):
        return bool(v)
    b = _BOOL.get(str(v).strip().lower())
    if b is None:
        raise TlsError(f"'{v}' is not yes or no")
    return b


def resolve_path(path: str, cfg_dir: str) -> str:
    """Kamailio's rule: absolute stays, './x' is relative to the working
    directory, anything else to the main config file's directory."""
    if not path or os.path.isabs(path) or path.startswith("."):
        return path
    return os.path.join(cfg_dir, path)


_PARAM_ATTR = {"tls_method": "method", "certificate": "certificate",
               "private_key": "private_key", "ca_list": "ca_list", "crl": "crl",
               "cipher_list": "cipher_list"}


def _at(pos: Any) -> str:
    return ":".join(str(x) for x in pos)


def base_profiles(params: dict[str, Any], pos: dict[str, Any] | None = None) -> Profile:
    """The profile the module parameters make; ``pos``: where each was set."""
    pos = pos or {}
    where = {attr: _at(pos[name]) for name, attr in _PARAM_ATTR.items() if name in pos}
    return Profile(where=where, method=str(params.get("tls_method") or DEFAULT_METHOD),
                   certificate=str(params.get("certificate") or ""),
                   private_key=str(params.get("private_key") or ""),
                   ca_list=str(params.get("ca_list") or ""),
                   crl=str(params.get("crl") or ""),
                   cipher_list=str(params.get("cipher_list") or ""),
                   verify_certificate=bool(int(params.get("verify_certificate") or 0)),
                   verify_depth=int(params.get("verify_depth") or 9),
                   require_certificate=bool(int(params.get("require_certificate") or 0)),
                   server_name=str(params.get("server_name") or ""))


def parse_config_file(path: str, base: Profile) -> list[Profile]:
    """The profiles of a tls.cfg file; TlsError says ``path:line: what is wrong``."""
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       inline_comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path) as f:
            text, where = _number_sections(f.read())
        parser.read_string(text, path)
    except OSError as e:
        raise _file_error(f"tls config file {path}: {e.strerror}", path) from None
    except configparser.Error as e:
        raise TlsError(_parse_error(path, e)) from None
    out: list[Profile] = []
    seen: set[str] = set()
    for numbered in parser.sections():
        sect = numbered.rpartition(_SECT_NO)[0]
        line, keys = where[int(numbered.rpartition(_SECT_NO)[2]) - 1]
        at = f"{path}:{line}: [{sect}]"
        role, _, addr = sect.partition(":")
        role = role.strip().lower()
        addr = addr.strip() or "default"
        if role not in ("server", "client"):
            raise TlsError(f"{at} must be [server:...] or [client:...]")
        if addr.lower() in ("default", "any"):
            addr = "default"
        # the server_name module parameter is the name ser sends as a client
        prof = replace(base, role=role, addr=_norm_addr(addr), origin=f"{path}:{line}",
                       server_name=base.server_name if role == "client" else "",
                       where=dict(base.where))
        for key, value in parser.items(numbered):
            kat = f"{path}:{keys.get(key.strip().lower(), line)}: [{sect}] {key}"
            attr = _KEYS.get(key.strip().lower(), "?")
            if attr == "?":
                raise TlsError(f"{kat}: unknown option (known: "
                               f"{', '.join(k for k, v in _KEYS.items() if v)})")
            if attr is None:
                continue
            value = value.strip()
            try:
                if attr in ("verify_certificate", "require_certificate"):
                    setattr(prof, attr, _bool(value))
                elif attr in ("verify_depth", "server_name_mode"):
                    setattr(prof, attr, int(value))
                else:
                    setattr(prof, attr, value)
                    prof.where[attr] = f"{path}:{keys.get(key.strip().lower(), line)}"
            except (TlsError, ValueError) as e:
                raise TlsError(f"{kat}: {e}") from None
        err = check_method(prof.method)
        if err:
            raise TlsError(f"{path}:{keys.get('method', keys.get('tls_method', line))}: "
                           f"[{sect}] method: {err}")
        if prof.server_name_mode not in (0, 1, 2):
            raise TlsError(f"{path}:{keys.get('server_name_mode', line)}: [{sect}] "
                           f"server_name_mode: {prof.server_name_mode} is not 0, 1 or 2")
        if prof.name in seen:
            what = "" if prof.role == "client" else \
                f" with server_name {prof.server_name}" if prof.server_name else \
                " (give each server section of an address its own server_name)"
            raise TlsError(f"{at}{what} is defined twice")
        seen.add(prof.name)
        out.append(prof)
    return out


_SECT_NO = "~~"
_KEY_LINE = re.compile(r"\s*([^\s#;=:\[][^=:]*?)\s*[=:]")


def _number_sections(text: str) -> tuple[str, list[tuple[int, dict[str, int]]]]:
    """Make repeated section names distinct for configparser: ``[a]`` becomes
    ``[a~~N]``, N counting the sections (``parse_config_file`` strips it).
    Also where each section and each of its keys is: (line, {key: line})."""
    out: list[str] = []
    where: list[tuple[int, dict[str, int]]] = []
    for no, line in enumerate(text.splitlines(), 1):
        t = line.strip()
        if t.startswith("[") and t.endswith("]"):
            where.append((no, {}))
            line = f"[{t[1:-1]}{_SECT_NO}{len(where)}]"
        elif where and (m := _KEY_LINE.match(line)):
            where[-1][1].setdefault(m.group(1).lower(), no)
        out.append(line)
    return "\n".join(out) + "\n", where


def _parse_error(path: str, e: configparser.Error) -> str:
    """``path:line: what`` for what configparser refused."""
    if isinstance(e, configparser.MissingSectionHeaderError):
        return (f"{path}:{e.lineno}: '{e.line.strip()}' comes before any section "
                f"(start with [server:default], [client:default], [server:IP:PORT] ...)")
    if isinstance(e, configparser.ParsingError) and e.errors:
        lineno, line = e.errors[0]          # line is repr()'d by configparser
        with contextlib.suppress(ValueError, SyntaxError):
            line = ast.literal_eval(line)
        return f"{path}:{lineno}: cannot parse '{str(line).strip()}' (want 'name = value')"
    if isinstance(e, configparser.DuplicateOptionError):
        sect = e.section.rpartition(_SECT_NO)[0]
        return f"{path}:{e.lineno}: [{sect}] option '{e.option}' is given twice"
    why = re.sub(re.escape(_SECT_NO) + r"\d+", "", str(e)).replace("\n", " ")
    return f"tls config file {path}: {why}"


def _norm_addr(addr: str) -> str:
    if addr == "default":
        return addr
    host, _, port = addr.rpartition(":")
    return f"{host.strip('[]')}:{port}"


class Profiles:
    """Every profile, with a context built for each; lookups by role and address."""

    def __init__(self, profiles: list[Profile]) -> None:
        self.by_name = {p.name: p for p in profiles}

    def server(self, host: str, port: int) -> Profile:
        """The profile a connection accepted on ``host:port`` starts with: the
        address's section without server_name, else its first SNI section,
        else server:default."""
        addr = f"{host.strip('[]')}:{port}"
        return self.by_name.get(f"server:{addr}") or next(
            (p for p in self.by_name.values() if p.role == "server" and p.addr == addr),
            self.by_name["server:default"])

    def sni_candidates(self, start: Profile) -> list[Profile]:
        """The SNI profiles a connection that started with ``start`` may switch
        to, in the order they are tried: its address's, then the default ones."""
        sni = [p for p in self.by_name.values() if p.role == "server" and p.server_name]
        return [p for p in sni if p.addr == start.addr] + \
            [p for p in sni if p.addr == "default" and start.addr != "default"]

    def client(self, host: str, port: int) -> Profile:
        return self.by_name.get(f"client:{host}:{port}") or self.by_name["client:default"]

    def describe(self) -> list[dict[str, Any]]:
        return [{"profile": p.name, "method": p.method, "certificate": p.certificate,
                 "verify_certificate": int(p.verify_certificate),
                 "require_certificate": int(p.require_certificate),
                 "server_name": p.server_name, "server_name_mode": p.server_name_mode,
                 "source": p.origin}
                for p in self.by_name.values()]


def load_profiles(params: dict[str, Any], cfg_dir: str, need_server: bool,
                  pos: dict[str, Any] | None = None) -> Profiles:
    """Read every profile and build its context; TlsError on the first problem.
    ``pos`` (param name -> (file, line, col) of its modparam) puts the
    place of a bad setting in front of the message."""
    err = check_method(params.get("tls_method") or DEFAULT_METHOD)
    if err:
        raise TlsError(f"tls_method: {err}")
    base = base_profiles(params, pos)
    profiles = {"server:default": replace(base, role="server", server_name=""),
                "client:default": replace(base, role="client")}
    cfile = str(params.get("config") or "")
    if cfile:
        cfile = resolve_path(cfile, cfg_dir)
        try:
            for p in parse_config_file(cfile, base):
                profiles[p.name] = p
        except TlsError as e:
            if pos and "config" in pos and not str(e).startswith(cfile + ":"):
                raise type(e)(f"{_at(pos['config'])}: {e}") from None
            raise
    for p in profiles.values():
        for attr in ("certificate", "private_key", "ca_list", "crl"):
            setattr(p, attr, resolve_path(getattr(p, attr), cfg_dir))
        if p.role == "server" and not need_server:
            continue
        p.ctx = build_context(p)
    out = Profiles(list(profiles.values()))
    for p in out.by_name.values():
        if p.ctx is not None and p.role == "server":
            cands = [c for c in out.sni_candidates(p) if c.ctx is not None]
            if cands:
                p.ctx.set_tlsext_servername_callback(_sni_switch(cands))
    return out


def _sni_switch(cands: list[Profile]) -> Any:
    """The servername callback of a server context: the client's SNI name
    picks the first matching profile of ``cands``; no match keeps the context."""
    def cb(conn: Any) -> None:
        raw = conn.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace")
        for p in cands:
            if p.matches(name):
                if conn.get_context() is not p.ctx:
                    conn.set_context(p.ctx)
                    conn.set_verify(p.ctx.get_verify_mode(), _verify_cb(p))
                return
    return cb


def _verify_cb(prof: Profile) -> Any:
    strict = prof.verify_certificate

    def cb(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        return bool(ok) or not strict
    return cb


def build_context(p: Profile) -> SSL.Context:
    rng = METHODS.get(next((k for k in METHODS if k.lower() == p.method.lower()), ""))
    if rng is None:
        raise TlsError(f"{p.name}: {check_method(p.method)}")
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(rng[0])
    if rng[1]:
        ctx.set_max_proto_version(rng[1])
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    def where(attr: str) -> str:
        at = p.where.get(attr) or (p.origin if p.origin != "modparam" else "")
        return f"{at + ': ' if at else ''}tls profile {p.name} ({p.origin})"
    if p.certificate:
        try:
            ctx.use_certificate_chain_file(p.certificate)
        except (SSL.Error, OSError) as e:
            raise _file_error(f"{where('certificate')}: cannot load certificate "
                              f"{p.certificate}: {_why(e, p.certificate)}", p.certificate) from None
        key = p.private_key or p.certificate
        try:
            ctx.use_privatekey_file(key)
            ctx.check_privatekey()
        except (SSL.Error, OSError) as e:
            raise _file_error(f"{where('private_key' if p.private_key else 'certificate')}: "
                              f"cannot load private key {key}: {_why(e, key)}", key) from None
    elif p.role == "server":
        raise TlsError(f"{where('certificate')}: no certificate (set modparam(\"tls\", \"certificate\", ...) "
                       f"or 'certificate' in the config file; `serctl tls gencert` makes one)")
    if p.ca_list:
        try:
            ctx.load_verify_locations(p.ca_list)
        except (SSL.Error, OSError) as e:
            raise _file_error(f"{where('ca_list')}: cannot load ca_list {p.ca_list}: "
                              f"{_why(e, p.ca_list)}", p.ca_list) from None
        if p.role == "server":
            try:
                with open(p.ca_list, "rb") as f:
                    cas = [crypto.load_certificate(crypto.FILETYPE_PEM, b)
                           for b in _pem_blocks(f.read())]
                ctx.set_client_ca_list([c.get_subject() for c in cas])
            except (crypto.Error, OSError):
                pass
    if p.crl:
        try:
            from cryptography import x509
            with open(p.crl, "rb") as f:
                crl = x509.load_pem_x509_crl(f.read())
            ctx.get_cert_store().add_crl(crl)
            ctx.get_cert_store().set_flags(crypto.X509StoreFlags.CRL_CHECK)
        except (crypto.Error, OSError, ValueError) as e:
            raise _file_error(f"{where('crl')}: cannot load crl {p.crl}: {_why(e, p.crl)}",
                              p.crl) from None
    if p.cipher_list:
        try:
            ctx.set_cipher_list(p.cipher_list.encode())
        except SSL.Error as e:
            raise TlsError(f"{where('cipher_list')}: bad cipher_list '{p.cipher_list}': {e}") from None
    mode = SSL.VERIFY_NONE
    if p.role == "server":
        if p.verify_certificate or p.require_certificate:
            mode = SSL.VERIFY_PEER
        if p.require_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    elif p.verify_certificate:
        mode = SSL.VERIFY_PEER
    ctx.set_verify(mode, _verify_cb(p))
    ctx.set_verify_depth(p.verify_depth)
    if p.role == "server":
        ctx.set_session_id(b"ser")
    return ctx


def _pem_blocks(data: bytes) -> list[bytes]:
    out = []
    end = b"-----END CERTIFICATE-----"
    for part in data.split(end)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + end + b"\n")
    return out


def _why(e: Exception, path: str) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if not os.path.exists(path):
        return "no such file"
    return str(e) or type(e).__name__


# ------------------------------------------------------------- connection facts

def _name_oneline(name: Any) -> str:
    if name is None:
        return ""
    return "".join(f"/{k.decode()}={v.decode(errors='replace')}"
                   for k, v in name.get_components())


def cert_facts(cert: Any) -> dict[str, Any]:
    """subject, issuer, version, serial and the CNs of an X509 (pyOpenSSL)."""
    if cert is None:
        return {}
    subj, iss = cert.get_subject(), cert.get_issuer()
    return {"subject": _name_oneline(subj), "issuer": _name_oneline(iss),
            "version": cert.get_version(), "serial": cert.get_serial_number(),
            "subject_cn": subj.CN or "", "issuer_cn": iss.CN or ""}


def description(conn: Any) -> str:
    """SSL_CIPHER_description's shape: name, version, bits."""
    name = conn.get_cipher_name() or ""
    return f"{name} {conn.get_cipher_version() or ''} bits={conn.get_cipher_bits() or 0}"


# ------------------------------------------------------------- gencert

def gencert(key_path: str, cert_path: str, cn: str = "localhost", days: int = 365,
            alt: list[str] | None = None) -> None:
    """A self-signed RSA-2048 key and certificate (PEM) for a quick start."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ser")])
    sans: list[x509.GeneralName] = []
    for a in [cn, *(alt or [])]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            sans.append(x509.DNSName(a))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
