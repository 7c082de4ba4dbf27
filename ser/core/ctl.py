"""The control process: JSON-RPC 2.0 over a FIFO and a UNIX datagram socket.

Framing follows Kamailio's jsonrpcs module, so its tools (kamcli, kamctl's
RPCFIFO engine) can talk to ser:

* FIFO (``fifo_name``): a client writes one JSON-RPC request whose
  ``reply_name`` member names its reply FIFO (a file name in
  ``fifo_reply_dir``); the response is written there.
* datagram socket (``dgram_socket``): a client sends the request from its
  own bound UNIX datagram socket and gets the response back on it.

Both only frame; :class:`ser.core.rpc.RpcRegistry` does the work.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import stat
from typing import Any

from ser.core.log import log
from ser.core.roles import Env, Role
from ser.core.rpc import RpcContext, RpcRegistry

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
        super().__init__(rank, "ctl handler (jsonrpcs: fifo, dgram)")
        self.registry = registry
        self.fifo_fd = fifo_fd
        self.dgram = dgram_sock
        self.reply_dir = reply_dir

    def run(self, env: Env) -> int:
        self.ctx = RpcContext(env=env, procs=env.procs, stats=env.stats, shm=env.shm,
                              cfg=env.cfg, registry=self.registry, started=env.started,
                              rt=env.rt)
        sel = selectors.DefaultSelector()
        fifo_fd = self.fifo_fd
        if fifo_fd >= 0:
            sel.register(fifo_fd, selectors.EVENT_READ, "fifo")
        if self.dgram is not None:
            self.dgram.setblocking(False)
            sel.register(self.dgram, selectors.EVENT_READ, "dgram")
        buf = b""
        while True:
            for key, _ in sel.select():
                if key.data == "dgram":
                    self._dgram()
                else:
                    try:
                        chunk = os.read(fifo_fd, MAX_REQUEST)
                    except BlockingIOError:
                        continue
                    buf += chunk
                    buf = self._fifo_requests(buf)

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
            os.write(fd, json.dumps(resp).encode() + b"\n")
        except OSError as e:
            log.warning("rpc fifo: cannot write reply to %s: %s", path, e)
        finally:
            os.close(fd)
