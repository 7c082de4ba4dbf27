"""The control process: JSON-RPC 2.0 over a FIFO and a UNIX datagram socket.

Framing follows Kamailio's jsonrpcs module, so its tools (kamcli, kamctl's
RPCFIFO engine) can talk to ser:

* FIFO (``fifo_name``): a client writes one JSON-RPC request whose
  ``reply_name`` member names its reply FIFO (a file name in
  ``fifo_reply_dir``); the response is written there.
* datagram socket (``dgram_socket``): a client sends the request from its
  own bound UNIX datagram socket and gets the response back on it.
* HTTP (``http_port``, off by default; ``http_address``): ``POST /RPC`` with
  a JSON-RPC body, and ``GET /metrics`` for Prometheus (:mod:`ser.core.http`).

All only frame; :class:`ser.core.rpc.RpcRegistry` does the work.
"""

from __future__ import annotations

import errno
import json
import os
import select
import selectors
import socket
import stat
import time
from typing import Any

from ser.core import http
from ser.core.corerpc import rpc_context
from ser.core.log import log
from ser.core.metrics import collect
from ser.core.roles import Env, Role
from ser.core.rpc import RpcRegistry

MAX_REQUEST = 65535


def ctl_paths(env_cfg: Any, rundir: str) -> tuple[str | None, str | None, str]:
    """(fifo path, datagram socket path, reply dir) from the jsonrpcs params."""
    inst = env_cfg.modules.get("jsonrpcs")
    params = inst.params if inst is not None else {}
    transport = int(params.get("transport", 6))      # 2: FIFO, 4: datagram (Kamailio's bits)
    fifo = str(params.get("fifo_name", "ser_rpc.fifo"))
    dgram = str(params.get("dgram_socket", "ser_rpc.sock")).removeprefix("unix:")
    reply_dir = str(params.get("fifo_reply_dir", "/tmp/"))
    fifo_path = os.path.join(rundir, fifo) if fifo and transport & 2 else None
    dgram_path = os.path.join(rundir, dgram) if dgram and transport & 4 else None
    return fifo_path, dgram_path, reply_dir


def http_endpoint(env_cfg: Any) -> tuple[str, int] | None:
    """(address, port) of the HTTP listener, or None when it is off."""
    inst = env_cfg.modules.get("jsonrpcs")
    params = inst.params if inst is not None else {}
    port = int(params.get("http_port", 0) or 0)
    if port <= 0:
        return None
    return str(params.get("http_address", "127.0.0.1")), port


def create_endpoints(fifo: str | None, dgram: str | None) -> tuple[int, socket.socket | None]:
    """Made (and opened) by the master before the fork and before it drops
    privileges; removed by it at shutdown. Returns (FIFO fd or -1, socket)."""
    fifo_fd = -1
    if fifo:
        if os.path.exists(fifo):
            if not stat.S_ISFIFO(os.stat(fifo).st_mode):
                raise OSError(errno.EEXIST, f"{fifo} exists and is not a FIFO")
            os.unlink(fifo)
        os.mkfifo(fifo, 0o660)
        os.chmod(fifo, 0o660)        # not narrowed by the umask
        # O_RDWR keeps a writer open, so the FIFO never reports EOF
        fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    sock = None
    if dgram:
        if os.path.exists(dgram):
            os.unlink(dgram)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(dgram)
        os.chmod(dgram, 0o660)
    return fifo_fd, sock


class CtlProcess(Role):
    kind = "ctl"

    def __init__(self, rank: int, registry: RpcRegistry, fifo_fd: int,
                 dgram_sock: socket.socket | None, reply_dir: str) -> None:
        super().__init__(rank, "ctl handler (jsonrpcs: fifo, dgram, http)")
        self.registry = registry
        self.fifo_fd = fifo_fd
        self.dgram = dgram_sock
        self.reply_dir = reply_dir

    def run(self, env: Env) -> int:
        self.ctx = rpc_context(env, self.registry)
        sel = selectors.DefaultSelector()
        fifo_fd = self.fifo_fd
        if fifo_fd >= 0:
            sel.register(fifo_fd, selectors.EVENT_READ, "fifo")
        if self.dgram is not None:
            self.dgram.setblocking(False)
            sel.register(self.dgram, selectors.EVENT_READ, "dgram")
        self.sel = sel
        self.http_conns: dict[int, http.HttpConn] = {}
        where = http_endpoint(env.cfg)
        if where is not None:
            try:
                lsock = http.listen(*where)
            except OSError as e:
                log.error("ctl: cannot listen for HTTP on %s:%d: %s", where[0], where[1], e)
            else:
                sel.register(lsock, selectors.EVENT_READ, "http")
                log.info("ctl: JSON-RPC at http://%s:%d/RPC, metrics at /metrics", *where)
        buf = b""
        poll = env.cfgvars.poll if env.cfgvars is not None else lambda: False
        while True:
            ready = sel.select(1.0 if self.http_conns else None)
            poll()                        # run-time values changed (SIGUSR2)
            for key, _ in ready:
                if key.data == "dgram":
                    self._dgram()
                elif key.data == "http":
                    self._http_accept(key.fileobj)  # type: ignore[arg-type]
                elif isinstance(key.data, http.HttpConn):
                    self._http_io(key.data, key.events)
                else:
                    try:
                        chunk = os.read(fifo_fd, MAX_REQUEST)
                    except BlockingIOError:
                        continue
                    buf += chunk
                    buf = self._fifo_requests(buf)
            self._http_expire()

    # ------------------------------------------------------------------ HTTP
    def _http_accept(self, lsock: socket.socket) -> None:
        try:
            sock, _ = lsock.accept()
        except OSError:
            return
        sock.setblocking(False)
        conn = http.HttpConn(sock)
        self.http_conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _http_close(self, conn: http.HttpConn) -> None:
        self.http_conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _http_io(self, conn: http.HttpConn, events: int) -> None:
        try:
            if conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
                if not conn.out:
                    self._http_close(conn)
                return
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._http_close(conn)
            return
        if not chunk:
            self._http_close(conn)
            return
        conn.buf += chunk
        req = conn.request()
        if req is None:
            return
        if isinstance(req, int):
            conn.out = http.response(req, b"bad request\n")
        else:
            conn.out = http.answer(*req, rpc=self._handle,
                                   metrics=lambda: collect(self.ctx))
        self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)

    def _http_expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.http_conns.values() if c.deadline < now]:
            self._http_close(conn)

    def _handle(self, raw: bytes) -> dict[str, Any] | None:
        return self.registry.handle(self.ctx, raw)

    def _dgram(self) -> None:
        assert self.dgram is not None
        try:
            raw, addr = self.dgram.recvfrom(MAX_REQUEST)
        except BlockingIOError:
            return
        resp = self._handle(raw)
        if resp is not None and addr:
            try:
                self.dgram.sendto(json.dumps(resp).encode(), addr)
            except OSError as e:
                log.warning("rpc: cannot answer %s: %s", addr, e)

    def _fifo_requests(self, buf: bytes) -> bytes:
        """Handle every complete JSON document in ``buf``; return the rest."""
        dec = json.JSONDecoder()
        text = buf.decode("utf-8", "replace")
        pos = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos >= len(text):
                return b""
            try:
                req, end = dec.raw_decode(text, pos)
            except ValueError:
                if len(text) - pos > MAX_REQUEST:
                    log.warning("rpc fifo: unparsable request dropped")
                    return b""
                return text[pos:].encode()
            pos = end
            self._fifo_one(req)

    def _fifo_one(self, req: Any) -> None:
        reply_name = req.get("reply_name") if isinstance(req, dict) else None
        resp = self._handle(json.dumps(req).encode())
        if resp is None or not isinstance(reply_name, str):
            return
        if "/" in reply_name or reply_name in ("", ".", ".."):
            log.warning("rpc fifo: bad reply_name %r", reply_name)
            return
        path = os.path.join(self.reply_dir, reply_name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            log.warning("rpc fifo: cannot open reply fifo %s: %s", path, e)
            return
        try:
            _write_all(fd, json.dumps(resp).encode() + b"\n", REPLY_TIMEOUT)
        except OSError as e:
            log.warning("rpc fifo: cannot write reply to %s: %s", path, e)
        finally:
            os.close(fd)


REPLY_TIMEOUT = 5.0


def _write_all(fd: int, data: bytes, timeout: float) -> None:
    """The whole reply, however large, through a non-blocking FIFO whose reader
    is slower than us; a reader that stops reading costs at most ``timeout``."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            n = 0
        view = view[n:]
        if view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, "the reader stopped reading")
            select.select([], [fd], [], left)
