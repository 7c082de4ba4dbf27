"""Stream transports (TCP and TLS): workers that own connections, a shared
connection table, and the hand-off that lets any process send on them.

Theory of operation. A TCP worker runs one ``selectors`` loop over the
listening sockets (tcp and tls), the connections it accepted or opened, and
its *hand-off socket*. Nothing blocks: connects are non-blocking, TLS
handshakes (pyOpenSSL over the non-blocking socket) advance one step per
readiness event, writes that do not fit are queued. Every connection has a
stream framer (``ser.core.parser.StreamFramer``): whole messages go to the
core, CRLF keep-alive pings get a CRLF pong, a broken or oversized stream
closes the connection. Housekeeping once a second closes connections that
were idle longer than ``tcp_connection_lifetime``, that have held a partial
message (or an unfinished handshake) longer than ``tcp_msg_read_timeout``,
whose connect did not finish in ``tcp_connect_timeout`` or whose output has
not drained within ``tcp_send_timeout``. Limits: ``tcp_max_connections``
(every stream connection, accepted or opened) and ``tls_max_connections``
are global: each worker reserves a place in the shared *connection count*
before it keeps a connection and gives it back on every close; the count
is kept per worker rank, so when a worker dies (even by SIGKILL, its
connections dying with it) the master drops that rank's share.
``tcp_max_connections_per_ip`` is global the same way: a record per source
address with a row per rank, counting the connections accepted from it.

One process owns each connection (a TLS session cannot move between
processes). The *connection table* (a shared-memory table, ``tcp_conn``)
maps ``proto|ip|port`` of every connection's peer (and its aliases) to the
owner's rank and the connection id, and keeps a record of facts per
connection for ``tls.list``. A process that must send on a stream
(a UDP worker relaying to a TCP phone, the timer process sending a 408
upstream, another TCP worker) looks the destination up and hands the bytes
to the owner as one datagram on the owner's hand-off socket (a UNIX
datagram socket pair made by the master before the fork). No connection
yet: the bytes go to the worker the destination hashes to, which connects.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import resource
import selectors
import socket
import struct
import time
import traceback
import zlib
from typing import Any

from ser.core.log import RateLimited, log
from ser.core.net import PROTO_IDS, SocketInfo
from ser.core.parser import ProtocolError, StreamFramer
from ser.core.receive import Core, Dest
from ser.core.roles import Env, Role

_log = RateLimited(interval=10.0, burst=5)
READ_SIZE = 65536
TABLE = "tcp_conn"
TABLE_BITS = 14
PROTO_NAMES = {v: k for k, v in PROTO_IDS.items()}
_HDR = struct.Struct("<IHBB")          # conn id, port, proto id, host length
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE
CONNECTING, HANDSHAKE, OPEN = 0, 1, 2
_STATE_NAMES = {CONNECTING: "connecting", HANDSHAKE: "handshake", OPEN: "established"}
_ALIAS_PARAM = re.compile(rb";\s*alias\s*(?:[;,=]|$)", re.I)
_COUNT_KEY = b"n|conns"
_COUNT = struct.Struct("<iII")         # rank, stream connections, of which tls
_IP_PREFIX = b"n|ip|"


def _addr_key(proto: str, host: str, port: int) -> bytes:
    return f"a|{proto}|{host}|{port}".encode()


def _ip_key(ip: str) -> bytes:
    return _IP_PREFIX + ip.encode()


# ---------------------------------------------------------------------- shared side

class Handoff:
    """One UNIX datagram socket pair per TCP worker rank, made before the fork:
    the worker reads its end, every process writes to the other."""

    def __init__(self, ranks: list[int]) -> None:
        self.ranks = sorted(ranks)
        self.pairs: dict[int, tuple[socket.socket, socket.socket]] = {}
        tv = struct.pack("ll", 1, 0)
        for r in self.ranks:
            rd, wr = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for s in (rd, wr):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            wr.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self.pairs[r] = (rd, wr)

    def reader(self, rank: int) -> socket.socket:
        return self.pairs[rank][0]

    def pick(self, dest: Dest) -> int:
        """The worker that opens a new connection to ``dest``."""
        h = zlib.crc32(f"{dest.proto}|{dest.host}|{dest.port}".encode())
        return self.ranks[h % len(self.ranks)]

    def send(self, rank: int, cid: int, dest: Dest, data: bytes) -> bool:
        host = dest.host.encode()
        msg = _HDR.pack(cid, dest.port, PROTO_IDS.get(dest.proto, 2), len(host)) + host + data
        try:
            self.pairs[rank][1].send(msg)
            return True
        except OSError as e:
            _log(logging.ERROR, "hand-off of %d bytes for %s to tcp worker %d failed: %s",
                 len(data), dest, rank, e.strerror or e)
            return False

    @staticmethod
    def decode(msg: bytes) -> tuple[int, Dest, bytes]:
        cid, port, pid, hlen = _HDR.unpack_from(msg)
        off = _HDR.size
        host = msg[off:off + hlen].decode()
        return cid, Dest(PROTO_NAMES.get(pid, "tcp"), host, port), msg[off + hlen:]


class ConnTable:
    """The shared index of stream connections (see the module docstring)."""

    def __init__(self, table: Any) -> None:
        self.t = table

    def lookup(self, proto: str, host: str, port: int) -> tuple[int, int] | None:
        v = self.t.get(_addr_key(proto, host, port))
        if v is None:
            return None
        rank, _, cid = v.partition(b"|")
        return int(rank), int(cid)

    def publish(self, key: bytes, rank: int, cid: int) -> None:
        try:
            self.t.set(key, f"{rank}|{cid}".encode())
        except Exception as e:  # noqa: BLE001 - a full arena only costs reuse
            _log(logging.ERROR, "connection table: %s", e)

    def facts(self, rank: int, cid: int, facts: dict[str, Any]) -> None:
        try:
            self.t.set(f"c|{rank}|{cid}".encode(), json.dumps(facts).encode())
        except Exception as e:  # noqa: BLE001
            _log(logging.ERROR, "connection table: %s", e)

    def drop(self, keys: list[bytes], rank: int, cid: int) -> None:
        mine = f"{rank}|{cid}".encode()
        for k in keys:
            if self.t.get(k) == mine:
                self.t.delete(k)
        self.t.delete(f"c|{rank}|{cid}".encode())

    def forget(self, rank: int) -> int:
        """Remove every entry of ``rank`` (its connections died with it)."""
        mine, facts = f"{rank}|".encode(), f"c|{rank}|".encode()
        n = 0
        for rec in self.t.snapshot():
            if rec.key.startswith(facts) or (rec.key.startswith(b"a|")
                                             and rec.value.startswith(mine)):
                n += self.t.delete(rec.key)
        return n

    # -- the global connection counts (a record of rows per worker rank) -------------
    # _COUNT_KEY: every stream connection (and the TLS ones); _ip_key(ip): the
    # connections accepted from ip (tcp_max_connections_per_ip)
    @staticmethod
    def _counts(v: bytes | None) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for rank, n, n_tls in _COUNT.iter_unpack(v or b""):
            out[rank] = [n, n_tls]
        return out

    @staticmethod
    def _pack(counts: dict[int, list[int]]) -> bytes:
        return b"".join(_COUNT.pack(r, n, t) for r, (n, t) in sorted(counts.items()) if n)

    def _take(self, key: bytes, rank: int, tls: bool, max_all: int, max_tls: int) -> bool:
        ok = False

        def fn(v: bytes | None) -> bytes | None:
            nonlocal ok
            counts = self._counts(v)
            if sum(n for n, _ in counts.values()) >= max_all or \
                    (tls and sum(t for _, t in counts.values()) >= max_tls):
                return v
            row = counts.setdefault(rank, [0, 0])
            row[0] += 1
            row[1] += int(tls)
            ok = True
            return self._pack(counts)
        self.t.update(key, fn)
        return ok

    def _give(self, key: bytes, rank: int, tls: bool) -> None:
        def fn(v: bytes | None) -> bytes | None:
            counts = self._counts(v)
            row = counts.get(rank)
            if row is not None:
                row[0] = max(0, row[0] - 1)
                row[1] = max(0, row[1] - int(tls))
            return self._pack(counts) or None
        self.t.update(key, fn)

    def reserve(self, rank: int, tls: bool, max_all: int, max_tls: int) -> bool:
        """Count one more connection of ``rank`` unless a limit is reached."""
        return self._take(_COUNT_KEY, rank, tls, max_all, max_tls)

    def release(self, rank: int, tls: bool, ip: str = "") -> None:
        """A connection of ``rank`` closed (``ip``: an accepted one, from there)."""
        self._give(_COUNT_KEY, rank, tls)
        if ip:
            self._give(_ip_key(ip), rank, False)

    def admit(self, rank: int, ip: str, tls: bool, max_all: int, max_tls: int,
              max_per_ip: int) -> str | None:
        """Count a connection accepted from ``ip``; the limit that refuses it, or None."""
        if not self._take(_ip_key(ip), rank, False, max_per_ip, 0):
            return "tcp_max_connections_per_ip"
        if self._take(_COUNT_KEY, rank, tls, max_all, max_tls):
            return None
        self._give(_ip_key(ip), rank, False)
        return "tls_max_connections" if tls and self.counts()[0] < max_all \
            else "tcp_max_connections"

    def release_rank(self, rank: int) -> tuple[int, int]:
        """Drop every connection counted for ``rank`` (in the total and in
        every source address's count); returns (all, tls) dropped."""
        dropped = self._drop_rank(_COUNT_KEY, rank)
        for rec in self.t.snapshot():
            if rec.key.startswith(_IP_PREFIX):
                self._drop_rank(rec.key, rank)
        return dropped

    def _drop_rank(self, key: bytes, rank: int) -> tuple[int, int]:
        dropped = (0, 0)

        def fn(v: bytes | None) -> bytes | None:
            nonlocal dropped
            counts = self._counts(v)
            n, t = counts.pop(rank, (0, 0))
            dropped = (n, t)
            return self._pack(counts) or None
        self.t.update(key, fn)
        return dropped

    def per_ip(self, ip: str) -> int:
        """Connections accepted from ``ip`` open in every worker together."""
        return sum(n for n, _ in self._counts(self.t.get(_ip_key(ip))).values())

    def counts(self) -> tuple[int, int]:
        """(stream connections, of which tls) open in every worker together."""
        counts = self._counts(self.t.get(_COUNT_KEY)).values()
        return sum(n for n, _ in counts), sum(t for _, t in counts)

    def connections(self) -> list[dict[str, Any]]:
        out = []
        for rec in self.t.snapshot():
            if rec.key.startswith(b"c|"):
                try:
                    out.append(json.loads(rec.value))
                except ValueError:
                    continue
        return out

    def generation(self, name: bytes = b"g|tls") -> int:
        v = self.t.get(name)
        return struct.unpack("<q", v)[0] if v and len(v) == 8 else 0

    def bump(self, name: bytes = b"g|tls") -> int:
        return self.t.incr(name)


class StreamSender:
    """``Core.tcp_send`` of a process without connections of its own."""

    def __init__(self, shm: Any, handoff: Handoff) -> None:
        self.shm = shm
        self.handoff = handoff
        self._table: ConnTable | None = None

    @property
    def table(self) -> ConnTable:
        if self._table is None:
            self._table = ConnTable(self.shm.table(TABLE))
        return self._table

    def __call__(self, dest: Dest, data: bytes) -> bool:
        hit = self.table.lookup(dest.proto, dest.host, dest.port)
        if hit is not None and hit[0] in self.handoff.pairs:
            return self.handoff.send(hit[0], hit[1], dest, data)
        return self.handoff.send(self.handoff.pick(dest), 0, dest, data)


def create_shared(shm: Any, ranks: list[int]) -> tuple[Handoff, StreamSender]:
    """Before the fork: the connection table and the hand-off sockets."""
    shm.create_table(TABLE, TABLE_BITS)
    handoff = Handoff(ranks)
    return handoff, StreamSender(shm, handoff)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


# ---------------------------------------------------------------------- a connection

class Conn:
    __slots__ = ("sock", "si", "addr", "framer", "out", "last", "partial_since",
                 "send_since", "created", "outgoing", "proto", "tls", "state", "cid",
                 "keys", "dests", "ev", "fd", "peer_facts", "started", "close_after")

    def __init__(self, sock: socket.socket, si: SocketInfo, addr: tuple[str, int],
                 max_size: int, proto: str, cid: int, outgoing: bool = False,
                 accept_no_cl: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.si = si
        self.addr = addr
        self.proto = proto
        self.cid = cid
        self.framer = StreamFramer(max_size, accept_no_cl)
        self.close_after = False     # close once the output is written (set_reply_close)
        self.out = bytearray()
        now = time.monotonic()
        self.last = now
        self.created = now
        self.started = time.time()
        self.partial_since = 0.0
        self.send_since = 0.0
        self.outgoing = outgoing
        self.tls: Any = None
        self.state = OPEN
        self.keys: list[bytes] = []
        self.dests: list[tuple[str, str, int]] = []
        self.ev = 0
        self.peer_facts: dict[str, Any] | None = None

    @property
    def alive(self) -> bool:
        return self.fd >= 0

    def tls_facts(self) -> dict[str, Any]:
        """What the $tls_* variables read (cached: the session does not change)."""
        if self.peer_facts is None:
            from ser.core.tls import cert_facts, description
            t = self.tls
            if t is None or self.state != OPEN:
                return {}
            self.peer_facts = {
                "version": t.get_protocol_version_name(), "description": description(t),
                "cipher": t.get_cipher_name() or "", "bits": t.get_cipher_bits() or 0,
                "peer": cert_facts(t.get_peer_certificate()),
                "my": cert_facts(t.get_certificate()),
            }
        return self.peer_facts


# ---------------------------------------------------------------------- the worker

class TcpWorker(Role):
    kind = "tcp"

    def __init__(self, rank: int, index: int, listeners: list[SocketInfo]) -> None:
        super().__init__(rank, f"tcp receiver child={index}")
        self.listeners = listeners

    def run(self, env: Env) -> int:
        assert env.rt is not None
        raise_fd_limit()
        values = env.cfg.settings.values
        self.lifetime = float(values.get("tcp_connection_lifetime", 120))
        self.read_timeout = float(values.get("tcp_msg_read_timeout", 20))
        self.send_timeout = float(values.get("tcp_send_timeout", 10))
        self.connect_timeout = float(values.get("tcp_connect_timeout", 10))
        self.max_conns = int(values.get("tcp_max_connections", 2048))
        self.max_tls = int(values.get("tls_max_connections", 2048))
        self.max_per_ip = int(values.get("tcp_max_connections_per_ip", 256))
        self.max_size = int(values.get("tcp_max_message_size", 65535))
        self.rd_size = int(values.get("tcp_rd_buf_size", READ_SIZE)) or READ_SIZE
        self.accept_aliases = bool(values.get("tcp_accept_aliases", False))
        self.accept_no_cl = bool(values.get("tcp_accept_no_cl", False))
        self.core = Core(env.cfg, env.rt, env.sockets, env.stats, env)
        self.core.tcp_send = self.send
        self.core.tcp_alias = self.add_alias
        self.handoff: Handoff = env.options["handoff"]
        self.table = ConnTable(env.shm.table(TABLE))
        tls = env.cfg.modules.get("tls")
        self.tls_state: dict[str, Any] | None = tls.state if tls is not None else None
        # a worker re-forked after a tls.reload loads the new settings at once
        self.tls_gen = 0
        self.reaped(env)                   # what a previous life of this rank left
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.by_id: dict[int, Conn] = {}
        self.by_dest: dict[tuple[str, str, int], Conn] = {}
        self.next_id = 1
        for si in self.listeners:
            assert si.sock is not None
            si.sock.setblocking(False)
            self.sel.register(si.sock, _R, si)
        hs = self.handoff.reader(self.rank)
        hs.setblocking(False)
        self.sel.register(hs, _R, None)
        self.hsock = hs
        next_house = time.monotonic() + 1.0
        poll = env.cfgvars.poll if env.cfgvars is not None else lambda: False
        while True:
            ready = self.sel.select(1.0)
            poll()                        # run-time values changed (SIGUSR2)
            for key, events in ready:
                data = key.data
                if data is None:
                    self._handoff_in()
                elif isinstance(data, SocketInfo):
                    self._accept(data)
                else:
                    self._event(data, events)
            now = time.monotonic()
            if now >= next_house:
                self._housekeeping(now)
                next_house = now + 1.0

    def reaped(self, env: Env) -> None:
        """This rank's connections are gone (its process died, or a new one
        starts): forget them in the connection table and the global count."""
        table = ConnTable(env.shm.table(TABLE))
        table.forget(self.rank)
        n, _ = table.release_rank(self.rank)
        if n:
            log.info("tcp worker rank %d: %d connection(s) closed by its end", self.rank, n)

    # -- connections ----------------------------------------------------------------
    def _profiles(self) -> Any:
        return self.tls_state.get("profiles") if self.tls_state is not None else None

    def _accept(self, si: SocketInfo) -> None:
        assert si.sock is not None
        for _ in range(64):
            try:
                sock, addr = si.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                _log(logging.ERROR, "accept on %s failed: %s", si, e)
                return
            ip = addr[0]
            limit = self.table.admit(self.rank, ip, si.proto == "tls", self.max_conns,
                                     self.max_tls, self.max_per_ip)
            if limit:
                self.core.stats.inc("core:tcp_refused")
                _log(logging.WARNING, "%s connection from %s:%s refused: limit reached (%s)",
                     si.proto, ip, addr[1], limit)
                sock.close()
                continue
            c = Conn(sock, si, (ip, addr[1]), self.max_size, si.proto, self._new_id(),
                     accept_no_cl=self.accept_no_cl)
            if si.proto == "tls":
                profiles = self._profiles()
                if profiles is None:
                    self.table.release(self.rank, True, ip)
                    sock.close()
                    continue
                from OpenSSL import SSL
                prof = profiles.server(si.host, si.port)
                c.tls = SSL.Connection(prof.ctx, sock)
                c.tls.set_accept_state()
                c.state = HANDSHAKE
            self._add(c)

    def _new_id(self) -> int:
        cid = self.next_id
        self.next_id = cid + 1 if cid < 0xFFFFFFFF else 1
        return cid

    def _add(self, c: Conn) -> None:
        c.sock.setblocking(False)
        self.conns[c.fd] = c
        self.by_id[c.cid] = c
        c.dests.append((c.proto, c.addr[0], c.addr[1]))
        self.by_dest[c.dests[0]] = c
        c.ev = _W if c.state == CONNECTING else _R
        self.sel.register(c.sock, c.ev, c)
        key = _addr_key(c.proto, c.addr[0], c.addr[1])
        c.keys.append(key)
        self.table.publish(key, self.rank, c.cid)
        self._publish_facts(c)

    def add_alias(self, c: Conn, port: int) -> None:
        """Another port of the peer reached over this connection (Via alias)."""
        key = _addr_key(c.proto, c.addr[0], port)
        if c.alive and key not in c.keys:
            c.keys.append(key)
            c.dests.append((c.proto, c.addr[0], port))
            self.by_dest[c.dests[-1]] = c
            self.table.publish(key, self.rank, c.cid)

    def _publish_facts(self, c: Conn) -> None:
        lhost, lport = c.sock.getsockname()[:2]
        facts: dict[str, Any] = {
            "id": c.cid, "proto": c.proto, "src_ip": c.addr[0], "src_port": c.addr[1],
            "dst_ip": lhost, "dst_port": lport, "outgoing": int(c.outgoing),
            "owner": self.rank, "started": int(c.started), "state": _STATE_NAMES[c.state],
        }
        if c.tls is not None and c.state == OPEN:
            f = c.tls_facts()
            facts.update(cipher=f.get("cipher", ""), version=f.get("version", ""),
                         bits=f.get("bits", 0),
                         peer_subject=f.get("peer", {}).get("subject", ""),
                         server_name=(c.tls.get_servername() or b"").decode())
        self.table.facts(self.rank, c.cid, facts)

    def _close(self, c: Conn, why: str = "") -> None:
        fd = c.fd
        if fd < 0 or self.conns.get(fd) is not c:
            return
        if why:
            log.debug("closing %s connection %s:%s: %s", c.proto, c.addr[0], c.addr[1], why)
        self.sel.unregister(c.sock)
        del self.conns[fd]
        self.by_id.pop(c.cid, None)
        for d in c.dests:
            if self.by_dest.get(d) is c:
                del self.by_dest[d]
        try:
            self.table.drop(c.keys, self.rank, c.cid)
            self.table.release(self.rank, c.proto == "tls", "" if c.outgoing else c.addr[0])
        except Exception as e:  # noqa: BLE001
            _log(logging.ERROR, "connection table: %s", e)
        c.fd = -1
        c.tls = None
        c.sock.close()

    def _want(self, c: Conn, ev: int) -> None:
        if c.ev != ev and c.fd >= 0:
            c.ev = ev
            self.sel.modify(c.sock, ev, c)

    # -- events ---------------------------------------------------------------------
    def _event(self, c: Conn, events: int) -> None:
        if c.state == CONNECTING:
            self._connected(c)
        elif c.state == HANDSHAKE:
            self._handshake(c)
        else:
            if events & _W:
                self._flush(c)
            if events & _R and c.fd >= 0:
                self._read(c)

    def _connected(self, c: Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            _log(logging.ERROR, "%s connect to %s:%s failed: %s", c.proto, c.addr[0], c.addr[1],
                 errno.errorcode.get(err, err))
            self._close(c, "connect failed")
            return
        if c.proto == "tls":
            from OpenSSL import SSL
            profiles = self._profiles()
            if profiles is None:
                _log(logging.ERROR, "tls to %s:%s: the tls module is not loaded", *c.addr)
                self._close(c, "no tls")
                return
            prof = profiles.client(c.addr[0], c.addr[1])
            c.tls = SSL.Connection(prof.ctx, c.sock)
            if prof.server_name:
                c.tls.set_tlsext_host_name(prof.server_name.encode())
            c.tls.set_connect_state()
            c.state = HANDSHAKE
            self._handshake(c)
            return
        c.state = OPEN
        self._publish_facts(c)
        self._want(c, _R | _W if c.out else _R)

    def _handshake(self, c: Conn) -> None:
        from OpenSSL import SSL
        try:
            c.tls.do_handshake()
        except SSL.WantReadError:
            self._want(c, _R)
            return
        except SSL.WantWriteError:
            self._want(c, _R | _W)
            return
        except (SSL.Error, OSError) as e:
            self.core.stats.inc("core:err_requests")
            self.core.stats.inc("tls:handshake_failures")
            _log(logging.WARNING, "tls handshake with %s:%s failed: %s", c.addr[0], c.addr[1],
                 _ssl_reason(e))
            self._close(c, "handshake failed")
            return
        self.core.stats.inc("tls:handshakes")
        c.state = OPEN
        c.last = time.monotonic()
        self._publish_facts(c)
        if c.out:
            self._want(c, _R | _W)
            self._flush(c)
        else:
            self._want(c, _R)
        if c.fd >= 0 and c.tls is not None and c.tls.pending():
            self._read(c)

    def _recv(self, c: Conn) -> bytes | None:
        """Bytes read (b"" when nothing is ready); None: the connection is gone."""
        if c.tls is None:
            try:
                data = c.sock.recv(self.rd_size)
            except (BlockingIOError, InterruptedError):
                return b""
            except OSError as e:
                self._close(c, f"read error: {e}")
                return None
            if not data:
                self._close(c, "closed by peer")
                return None
            return data
        from OpenSSL import SSL
        chunks = []
        while True:
            try:
                d = c.tls.recv(self.rd_size)
            except (SSL.WantReadError, SSL.WantWriteError):
                break
            except SSL.ZeroReturnError:
                self._close(c, "closed by peer (close_notify)")
                return None
            except (SSL.Error, OSError) as e:
                self._close(c, f"tls read error: {_ssl_reason(e)}")
                return None
            if not d:
                self._close(c, "closed by peer")
                return None
            chunks.append(d)
            if not c.tls.pending():
                break
        return b"".join(chunks)

    def _read(self, c: Conn) -> None:
        data = self._recv(c)
        if not data:
            return
        now = time.monotonic()
        c.last = now
        try:
            msgs = c.framer.feed(data)
        except ProtocolError as e:
            self.core.stats.inc("core:err_requests")
            _log(logging.WARNING, "bad stream from %s:%s:%s: %s; connection closed",
                 c.proto, c.addr[0], c.addr[1], e.reason)
            self._close(c, e.reason)
            return
        pings = c.framer.pings
        if pings:
            c.framer.pings = 0
            self._write(c, b"\r\n" * pings)
        for m in msgs:
            if self.accept_aliases:
                self._via_alias(c, m)
            try:
                self.core.receive(m, c.si, c.addr, c)
            except Exception:  # noqa: BLE001 - one message must never cost the worker
                self.core.stats.inc("core:err_requests")
                _log(logging.ERROR, "message from %s:%s:%s not handled:\n%s", c.proto,
                     c.addr[0], c.addr[1], traceback.format_exc())
            if c.fd < 0:
                return
            if c.close_after and not c.out:
                self._close(c, "closed after the reply")
                return
        c.partial_since = (c.partial_since or now) if c.framer.pending else 0.0

    def _via_alias(self, c: Conn, m: bytes) -> None:
        """RFC 5923: ``;alias`` on the top Via makes its port reach this connection."""
        head = m[:m.find(b"\r\n\r\n")]
        i = head.lower().find(b"\nvia:")
        if i < 0:
            i = head.lower().find(b"\nv:")
        if i < 0:
            return
        line = head[i + 1:head.find(b"\r\n", i + 1)].split(b",")[0]
        if _ALIAS_PARAM.search(line) is None:
            return
        try:
            sent_by = line.split(b":", 1)[1].split()[1].split(b";")[0]
            port = int(sent_by.rsplit(b":", 1)[1]) if b":" in sent_by.lstrip(b"[") \
                .split(b"]")[-1] else 5060
        except (IndexError, ValueError):
            return
        self.add_alias(c, port)

    # -- hand-off -------------------------------------------------------------------
    def _handoff_in(self) -> None:
        for _ in range(256):
            try:
                msg = self.hsock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            try:
                cid, dest, data = Handoff.decode(msg)
            except (struct.error, UnicodeDecodeError):
                continue
            c = self.by_id.get(cid) if cid else None
            if c is not None and c.alive:
                self._write(c, data)
            else:
                self._send_local(dest, data)

    # -- sending --------------------------------------------------------------------
    def send(self, dest: Dest, data: bytes) -> bool:
        c = dest.conn
        if isinstance(c, Conn) and c.alive and self.conns.get(c.fd) is c:
            return self._write(c, data)
        c = self.by_dest.get((dest.proto, dest.host, dest.port))
        if c is not None and c.alive:
            return self._write(c, data)
        hit = self.table.lookup(dest.proto, dest.host, dest.port)
        if hit is not None and hit[0] != self.rank and hit[0] in self.handoff.pairs:
            return self.handoff.send(hit[0], hit[1], dest, data)
        return self._send_local(dest, data)

    def _send_local(self, dest: Dest, data: bytes) -> bool:
        c = self.by_dest.get((dest.proto, dest.host, dest.port))
        if c is None or not c.alive:
            c = self._connect(dest)
            if c is None:
                return False
        return self._write(c, data)

    def _connect(self, dest: Dest) -> Conn | None:
        if dest.proto not in ("tcp", "tls"):
            _log(logging.ERROR, "no %s transport to send to %s", dest.proto, dest)
            return None
        if not self.table.reserve(self.rank, dest.proto == "tls", self.max_conns, self.max_tls):
            _log(logging.ERROR, "cannot connect to %s: %s_max_connections reached", dest,
                 dest.proto)
            return None
        si = dest.si if dest.si and dest.si.proto == dest.proto else \
            self.core.socket_for(dest.proto, dest.host) or self.core.socket_for("tcp", dest.host)
        fam = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((dest.host, dest.port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self.table.release(self.rank, dest.proto == "tls")
            _log(logging.ERROR, "%s connect to %s failed: %s", dest.proto, dest,
                 errno.errorcode.get(err, err))
            return None
        c = Conn(sock, si or self.listeners[0], (dest.host, dest.port), self.max_size,
                 dest.proto, self._new_id(), outgoing=True)
        c.state = CONNECTING
        self._add(c)
        return c

    def _write(self, c: Conn, data: bytes) -> bool:
        if c.out or c.state != OPEN:
            if len(c.out) + len(data) > 4 * 1024 * 1024:
                self._close(c, "output queue full")
                return False
            c.out += data
            c.send_since = c.send_since or time.monotonic()
            return True
        n = self._sendsome(c, data)
        if n < 0:
            return False
        if n < len(data):
            c.out += data[n:]
            c.send_since = time.monotonic()
            self._want(c, _R | _W)
        return True

    def _sendsome(self, c: Conn, data: bytes | bytearray) -> int:
        """Bytes written now (0 when the socket is full); -1: connection closed."""
        if c.tls is not None:
            from OpenSSL import SSL
            try:
                return c.tls.send(bytes(data[:16384]))
            except (SSL.WantWriteError, SSL.WantReadError):
                return 0
            except (SSL.Error, OSError) as e:
                self._close(c, f"tls write error: {_ssl_reason(e)}")
                return -1
        try:
            return c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self._close(c, f"write error: {e}")
            return -1

    def _flush(self, c: Conn) -> None:
        while c.out:
            n = self._sendsome(c, c.out)
            if n <= 0:
                return
            del c.out[:n]
        c.send_since = 0.0
        if c.close_after:
            self._close(c, "closed after the reply")
            return
        self._want(c, _R)

    # -- housekeeping ---------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        for c in list(self.conns.values()):
            if c.state == CONNECTING:
                if now - c.created > self.connect_timeout:
                    _log(logging.ERROR, "%s connect to %s:%s timed out", c.proto, *c.addr)
                    self._close(c, "connect timeout")
            elif c.state == HANDSHAKE:
                if now - c.created > self.read_timeout:
                    self._close(c, "handshake timeout")
            elif c.partial_since and now - c.partial_since > self.read_timeout:
                self.core.stats.inc("core:err_requests")
                _log(logging.WARNING, "%s:%s:%s sent no whole message in %.0f s; closed",
                     c.proto, c.addr[0], c.addr[1], self.read_timeout)
                self._close(c, "read timeout")
            elif c.send_since and now - c.send_since > self.send_timeout:
                self._close(c, "send timeout")
            elif now - c.last > self.lifetime:
                self._close(c, "idle")
        if self.tls_state is not None:
            gen = self.table.generation()
            if gen != self.tls_gen:
                self.tls_gen = gen
                reload = self.tls_state.get("reload")
                if reload is not None:
                    try:
                        reload()
                        log.info("tls: certificates reloaded (generation %d)", gen)
                    except Exception as e:  # noqa: BLE001 - keep the old contexts
                        log.error("tls: reload failed, keeping the old settings: %s", e)


def _ssl_reason(e: Exception) -> str:
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(x[-1]) for x in args[0] if isinstance(x, tuple)) or str(e)
    return str(e) or type(e).__name__
