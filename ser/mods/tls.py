"""tls: TLS transport settings, connection facts and control (Kamailio's tls module).

The module declares what the operator sets (certificate, key, CA list, CRL,
method, verification, ciphers, SNI name and the ``config`` profile file),
checks it at start and in `ser -c` (``ser.core.tls.load_profiles``: a missing file, a key
that does not match, or SSLv2/SSLv3/TLSv1.0 stop the start with a message),
and offers the ``$tls_*`` variables of the connection a message came in on,
and ``tls.list``/``tls.info``/``tls.reload``. The connections themselves are
the TCP workers' (``ser.core.tcp``).
"""

from __future__ import annotations

import time
from typing import Any

from ser.core.module import CheckWarning, Module, Param, RPCMethod
from ser.core.pv import PVDecl
from ser.core.rpc import RpcError
from ser.core.tls import DEFAULT_METHOD, TlsError, TlsFileMissing, check_method, load_profiles


def _bool_check(v: Any) -> str | None:
    return None if int(v) in (0, 1) else "must be 0 or 1"


def _load(inst: Any) -> Any:
    return load_profiles(inst.params, inst.state.get("cfg_dir", "."),
                         bool(inst.state.get("listen_tls", False)), inst.param_pos)


def _check(inst: Any) -> str | None:
    """`ser -c`: every profile read and its context built, as at start."""
    try:
        _load(inst)
    except TlsFileMissing as e:
        raise CheckWarning(f"{e} (ser will not start until it exists)") from None
    except TlsError as e:
        return str(e)
    return None


STATS = ("tls:handshakes", "tls:handshake_failures")


def _mod_init(inst: Any) -> None:
    inst.state["profiles"] = _load(inst)
    shm = inst.state.get("shm")
    if shm is not None:
        for name in STATS:
            shm.stats.declare(name)

    def reload() -> None:
        inst.state["profiles"] = _load(inst)
    inst.state["reload"] = reload


# ------------------------------------------------------------------ variables

def _conn(ctx: Any) -> Any:
    rcv = getattr(ctx, "rcv", None)
    c = getattr(rcv, "conn", None) if rcv is not None else None
    return c if c is not None and getattr(c, "tls", None) is not None else None


def _facts(ctx: Any) -> dict[str, Any]:
    c = _conn(ctx)
    return c.tls_facts() if c is not None else {}


def _top(key: str) -> Any:
    def get(ctx: Any, _: Any) -> Any:
        v = _facts(ctx).get(key)
        return v if v not in (None, "") else None
    return get


def _cert(side: str, key: str) -> Any:
    def get(ctx: Any, _: Any) -> Any:
        v = _facts(ctx).get(side, {}).get(key)
        return v if v not in (None, "") else None
    return get


_PVS = [
    PVDecl("tls_version", _top("version"), doc="TLS protocol version of the connection"),
    PVDecl("tls_description", _top("description"), doc="cipher description"),
    PVDecl("tls_cipher_info", _top("cipher"), doc="cipher name"),
    PVDecl("tls_cipher_bits", _top("bits"), doc="cipher key bits"),
]
for _side in ("peer", "my"):
    _who = "the peer's" if _side == "peer" else "ser's"
    _PVS += [
        PVDecl(f"tls_{_side}_subject", _cert(_side, "subject"), doc=f"subject of {_who} certificate"),
        PVDecl(f"tls_{_side}_issuer", _cert(_side, "issuer"), doc=f"issuer of {_who} certificate"),
        PVDecl(f"tls_{_side}_version", _cert(_side, "version"), doc=f"version of {_who} certificate"),
        PVDecl(f"tls_{_side}_serial", _cert(_side, "serial"), doc=f"serial of {_who} certificate"),
        PVDecl(f"tls_{_side}_subject_cn", _cert(_side, "subject_cn"),
               doc=f"common name of the subject of {_who} certificate"),
        PVDecl(f"tls_{_side}_issuer_cn", _cert(_side, "issuer_cn"),
               doc=f"common name of the issuer of {_who} certificate"),
    ]


# ------------------------------------------------------------------ RPC

def _table(ctx: Any) -> Any:
    from ser.core.tcp import TABLE, ConnTable
    try:
        return ConnTable(ctx.shm.table(TABLE))
    except KeyError:
        raise RpcError(500, "no TCP/TLS workers are running") from None


def rpc_list(ctx: Any) -> list[dict[str, Any]]:
    now = int(time.time())
    out = []
    for f in sorted(_table(ctx).connections(), key=lambda f: (f["owner"], f["id"])):
        if f.get("proto") != "tls":
            continue
        e = {"id": f["id"], "owner": f["owner"], "age": now - f["started"],
             "src": f"{f['src_ip']}:{f['src_port']}", "dst": f"{f['dst_ip']}:{f['dst_port']}",
             "state": f["state"], "version": f.get("version", ""),
             "cipher": f.get("cipher", "unknown")}
        for extra in ("peer_subject", "server_name"):
            if f.get(extra):
                e[extra] = f[extra]
        if f.get("outgoing"):
            e["outgoing"] = 1
        out.append(e)
    return out


def rpc_info(ctx: Any) -> dict[str, Any]:
    table = _table(ctx)
    conns = [f for f in table.connections() if f.get("proto") == "tls"]
    values = ctx.cfg.settings.values
    return {"max_connections": int(values.get("tls_max_connections", 2048)),
            "opened_connections": table.counts()[1],
            "established": sum(1 for f in conns if f["state"] == "established"),
            "clear_text_write_queued": 0}


def rpc_options(ctx: Any) -> list[dict[str, Any]]:
    inst = ctx.cfg.modules.get("tls")
    profiles = inst.state.get("profiles") if inst is not None else None
    return profiles.describe() if profiles is not None else []


def rpc_reload(ctx: Any) -> str:
    """Check the certificates and profiles again, then make every TCP worker
    load them (new connections use them; open ones keep their session)."""
    inst = ctx.cfg.modules.get("tls")
    if inst is None:
        raise RpcError(500, "tls is not loaded")
    try:
        inst.state["profiles"] = _load(inst)
    except TlsError as e:
        raise RpcError(500, f"reload failed, the old settings stay: {e}") from None
    gen = _table(ctx).bump()
    return f"ok (generation {gen})"


exports = Module(
    name="tls",
    doc="TLS transport (pyOpenSSL): server and client profiles, the $tls_* variables "
        "and the tls.* RPC methods. Connections are handled by the TCP workers.",
    params=(
        Param("tls_method", str, DEFAULT_METHOD, "Protocol versions: TLSv1.2+ (default), "
              "TLSv1.3+, TLSv1.1+, TLSv1.2, TLSv1.3, TLSv1.1; SSLv2, SSLv3, SSLv23 and "
              "TLSv1(.0) are refused.", check_method),
        Param("certificate", str, "", "PEM certificate (chain) file of ser."),
        Param("private_key", str, "", "PEM private key file (default: the certificate file)."),
        Param("ca_list", str, "", "PEM file of trusted CA certificates."),
        Param("crl", str, "", "PEM certificate revocation list."),
        Param("cipher_list", str, "", "OpenSSL cipher list (TLSv1.2 and older)."),
        Param("verify_certificate", int, 0, "Verify the peer's certificate.", _bool_check),
        Param("verify_depth", int, 9, "Longest certificate chain accepted."),
        Param("require_certificate", int, 0, "A client without a certificate is refused.",
              _bool_check),
        Param("server_name", str, "", "SNI name sent by ser as a client."),
        Param("config", str, "", "Profile file: [server:default], [client:default], "
              "[server:IP:PORT], [client:IP:PORT] sections. A server section with "
              "server_name is chosen by the client's SNI name (server_name_mode 0: exact, "
              "1: the domain and its subdomains, 2: subdomains only); several may share "
              "an address."),
        Param("connection_timeout", int, 600, "Accepted for Kamailio configs; ser uses "
              "tcp_connection_lifetime.", ignored=True),
        Param("tls_log", int, 3, "Accepted for Kamailio configs.", ignored=True),
        Param("session_cache", int, 0, "Accepted for Kamailio configs.", ignored=True),
    ),
    pvs=tuple(_PVS),
    rpc=(
        RPCMethod("tls.list", rpc_list, "Open TLS connections (every TCP worker's)."),
        RPCMethod("tls.info", rpc_info, "TLS connection counts and limits."),
        RPCMethod("tls.options", rpc_options, "The TLS profiles in use."),
        RPCMethod("tls.reload", rpc_reload, "Re-read certificates, keys and the config "
                  "file; new connections use them."),
    ),
    check=_check,
    mod_init=_mod_init,
)
