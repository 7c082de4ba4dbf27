"""TCP workers: each accepts on the shared listening sockets and owns its connections.

Theory of operation. A worker runs one ``selectors`` loop over the listening
sockets and the connections it accepted; nothing blocks, so a slow or
hostile client costs a buffer, never the worker. Every connection has a
stream framer (``ser.core.parser.StreamFramer``): whole messages go to the
core, CRLF keep-alive pings get a CRLF pong, a broken or oversized stream
closes the connection. Housekeeping once a second closes connections that
were idle longer than ``tcp_connection_lifetime``, that have held a partial
message longer than ``tcp_msg_read_timeout``, or whose output has not drained
within ``tcp_send_timeout``. Limits: ``tcp_max_connections`` (shared out
over the workers) and ``tcp_max_connections_per_ip`` per source address.

A reply goes back over the connection its request came in on; a request to
a TCP destination reuses a connection this worker has to it or opens one.
(Handing messages to connections owned by other processes comes with TLS.)
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
import traceback

from ser.core.log import RateLimited, log
from ser.core.net import SocketInfo
from ser.core.parser import ProtocolError, StreamFramer
from ser.core.receive import Core, Dest
from ser.core.roles import Env, Role

_log = RateLimited(interval=10.0, burst=5)
READ_SIZE = 65536


class Conn:
    __slots__ = ("sock", "si", "addr", "framer", "out", "last", "partial_since",
                 "send_since", "created", "outgoing")

    def __init__(self, sock: socket.socket, si: SocketInfo, addr: tuple[str, int],
                 max_size: int, outgoing: bool = False) -> None:
        self.sock = sock
        self.si = si
        self.addr = addr
        self.framer = StreamFramer(max_size)
        self.out = bytearray()
        now = time.monotonic()
        self.last = now
        self.created = now
        self.partial_since = 0.0
        self.send_since = 0.0
        self.outgoing = outgoing


class TcpWorker(Role):
    kind = "tcp"

    def __init__(self, rank: int, index: int, listeners: list[SocketInfo]) -> None:
        super().__init__(rank, f"tcp receiver child={index}")
        self.listeners = listeners

    def run(self, env: Env) -> int:
        assert env.rt is not None
        values = env.cfg.settings.values
        workers = max(1, env.options.get("tcp_workers", 1))
        self.lifetime = float(values.get("tcp_connection_lifetime", 120))
        self.read_timeout = float(values.get("tcp_msg_read_timeout", 20))
        self.send_timeout = float(values.get("tcp_send_timeout", 10))
        self.connect_timeout = float(values.get("tcp_connect_timeout", 10))
        self.max_conns = max(1, int(values.get("tcp_max_connections", 2048)) // workers)
        self.max_per_ip = int(values.get("tcp_max_connections_per_ip", 256))
        self.max_size = int(values.get("tcp_max_message_size", 65535))
        self.core = Core(env.cfg, env.rt, env.sockets, env.stats)
        self.core.tcp_send = self.send
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.per_ip: dict[str, int] = {}
        self.by_dest: dict[tuple[str, str, int], Conn] = {}
        for si in self.listeners:
            assert si.sock is not None
            si.sock.setblocking(False)
            self.sel.register(si.sock, selectors.EVENT_READ, si)
        next_house = time.monotonic() + 1.0
        while True:
            for key, events in self.sel.select(1.0):
                data = key.data
                if isinstance(data, SocketInfo):
                    self._accept(data)
                elif events & selectors.EVENT_WRITE:
                    self._flush(data)
                    if events & selectors.EVENT_READ and data.sock.fileno() >= 0:
                        self._read(data)
                else:
                    self._read(data)
            now = time.monotonic()
            if now >= next_house:
                self._housekeeping(now)
                next_house = now + 1.0

    # -- connections ----------------------------------------------------------------
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
            if len(self.conns) >= self.max_conns or self.per_ip.get(ip, 0) >= self.max_per_ip:
                self.core.stats.inc("core:tcp_refused")
                _log(logging.WARNING, "tcp connection from %s:%s refused: limit reached",
                     ip, addr[1])
                sock.close()
                continue
            self._add(Conn(sock, si, (ip, addr[1]), self.max_size))

    def _add(self, c: Conn) -> None:
        c.sock.setblocking(False)
        self.conns[c.sock.fileno()] = c
        self.per_ip[c.addr[0]] = self.per_ip.get(c.addr[0], 0) + 1
        self.by_dest[(c.si.proto, c.addr[0], c.addr[1])] = c
        self.sel.register(c.sock, selectors.EVENT_READ, c)

    def _close(self, c: Conn, why: str = "") -> None:
        fd = c.sock.fileno()
        if fd < 0 or self.conns.get(fd) is not c:
            return
        if why:
            log.debug("closing tcp connection %s:%s: %s", c.addr[0], c.addr[1], why)
        self.sel.unregister(c.sock)
        del self.conns[fd]
        n = self.per_ip.get(c.addr[0], 1) - 1
        if n:
            self.per_ip[c.addr[0]] = n
        else:
            self.per_ip.pop(c.addr[0], None)
        key = (c.si.proto, c.addr[0], c.addr[1])
        if self.by_dest.get(key) is c:
            del self.by_dest[key]
        c.sock.close()

    def _read(self, c: Conn) -> None:
        try:
            data = c.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close(c, f"read error: {e}")
            return
        if not data:
            self._close(c, "closed by peer")
            return
        now = time.monotonic()
        c.last = now
        try:
            msgs = c.framer.feed(data)
        except ProtocolError as e:
            self.core.stats.inc("core:err_requests")
            _log(logging.WARNING, "bad stream from tcp:%s:%s: %s; connection closed",
                 c.addr[0], c.addr[1], e.reason)
            self._close(c, e.reason)
            return
        pings = c.framer.pings
        if pings:
            c.framer.pings = 0
            self._write(c, b"\r\n" * pings)
        for m in msgs:
            try:
                self.core.receive(m, c.si, c.addr, c)
            except Exception:  # noqa: BLE001 - one message must never cost the worker
                self.core.stats.inc("core:err_requests")
                _log(logging.ERROR, "message from tcp:%s:%s not handled:\n%s", c.addr[0],
                     c.addr[1], traceback.format_exc())
            if c.sock.fileno() < 0:
                return
        c.partial_since = (c.partial_since or now) if c.framer.pending else 0.0

    # -- sending --------------------------------------------------------------------
    def send(self, dest: Dest, data: bytes) -> bool:
        c = dest.conn
        if c is None or c.sock.fileno() < 0:
            c = self.by_dest.get((dest.proto, dest.host, dest.port))
        if c is None:
            c = self._connect(dest)
            if c is None:
                return False
        return self._write(c, data)

    def _connect(self, dest: Dest) -> Conn | None:
        if dest.proto != "tcp":
            _log(logging.ERROR, "no %s transport to send to %s", dest.proto, dest)
            return None
        si = dest.si if dest.si and dest.si.proto == "tcp" else self.core.socket_for("tcp", dest.host)
        fam = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect((dest.host, dest.port))
        except OSError as e:
            sock.close()
            _log(logging.ERROR, "tcp connect to %s failed: %s", dest, e)
            return None
        c = Conn(sock, si or self.listeners[0], (dest.host, dest.port), self.max_size, True)
        self._add(c)
        return c

    def _write(self, c: Conn, data: bytes) -> bool:
        if c.out:
            c.out += data
            return True
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._close(c, f"write error: {e}")
            return False
        if n < len(data):
            c.out += data[n:]
            c.send_since = time.monotonic()
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        return True

    def _flush(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno != errno.EAGAIN:
                self._close(c, f"write error: {e}")
            return
        del c.out[:n]
        if not c.out:
            c.send_since = 0.0
            self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def _housekeeping(self, now: float) -> None:
        for c in list(self.conns.values()):
            if c.partial_since and now - c.partial_since > self.read_timeout:
                self.core.stats.inc("core:err_requests")
                _log(logging.WARNING, "tcp:%s:%s sent no whole message in %.0f s; closed",
                     c.addr[0], c.addr[1], self.read_timeout)
                self._close(c, "read timeout")
            elif c.send_since and now - c.send_since > self.send_timeout:
                self._close(c, "send timeout")
            elif now - c.last > self.lifetime:
                self._close(c, "idle")

