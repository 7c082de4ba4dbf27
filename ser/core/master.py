"""The master: declare, bind, fork, supervise (one arbiter loop, as gunicorn's).

Theory of operation. ``Master.run()`` gets a checked configuration. It binds
every listen socket, creates the shared-memory state, the control endpoints
and the process table, builds one :class:`~ser.core.roles.Role` per child
rank, daemonizes unless told not to, then forks every child. Signal handlers
only record the signal (``signal.set_wakeup_fd`` wakes the loop); the loop
drains them and dispatches to ``handle_<sig>``, reaps dead children (logged
with their exit cause, their shared-memory locks recovered) and re-forks
them with a back-off, while the others keep serving. SIGTERM/SIGINT stop
the children, reap them, and remove the shared memory, the FIFO, the
sockets and the pid file.

Readiness: every child writes its rank to a pipe once initialised. When all
of the first generation have, the master writes the pid file and, when
daemonized, tells the waiting creator, which then exits 0.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ser.core import log as logmod
from ser.core.cfgvars import NOTIFY_SIGNAL
from ser.core.corerpc import build_registry
from ser.core.ctl import CtlProcess, create_endpoints, ctl_paths
from ser.core.log import log
from ser.core.module import CheckWarning
from ser.core.net import BindError, SocketInfo, bind, expand, local_addresses
from ser.core.procs import ProcTable, set_title
from ser.core.roles import Env, Role, child_main
from ser.core.tcp import TcpWorker, create_shared
from ser.core.timer import TimerProcess
from ser.core.tls import TlsError
from ser.core.udp import UdpReceiver

SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
           NOTIFY_SIGNAL)
SIGNAMES = {int(s): s.name[3:].lower() for s in signal.Signals}
STOP_TIMEOUT = 5.0
READY_TIMEOUT = 30.0


def _sockets(cfg: Any, listens: list[Any]) -> list[SocketInfo]:
    """The listen sockets (not bound yet); tells the tls module whether it
    serves and where relative file names start. BindError: TLS without tls."""
    values = cfg.settings.values
    sockets = expand(listens or list(values.get("listen", ())), int(values.get("port", 5060)),
                     bool(values.get("disable_tcp")), bool(values.get("enable_tls")))
    tls = cfg.modules.get("tls")
    for si in sockets:
        if si.proto == "tls" and tls is None:
            raise BindError(f"listen={si}: TLS needs loadmodule \"tls.so\"")
    if tls is not None:
        tls.state["listen_tls"] = any(si.proto == "tls" for si in sockets)
        tls.state["cfg_dir"] = os.path.dirname(os.path.abspath(cfg.path))
    return sockets


def check_modules(cfg: Any) -> tuple[list[str], list[str]]:
    """What `ser -c` checks after the script: the listen sockets against the
    loaded modules and each module's ``check`` hook (files its parameters
    name). No socket is bound and no module initialised. (errors, warnings)"""
    try:
        _sockets(cfg, [])
    except BindError as e:
        return [str(e)], []
    errors: list[str] = []
    warnings: list[str] = []
    for inst in cfg.modules.values():
        if inst.decl.check is not None:
            try:
                err = inst.decl.check(inst)
            except CheckWarning as w:
                warnings.append(str(w))
                continue
            if err:
                errors.append(err)
    return errors, warnings


@dataclass
class Options:
    """What the command line sets (see ser/cli.py)."""
    cfg_path: str
    foreground: bool = False
    stderr: bool = False
    children: int | None = None
    listens: list[Any] = field(default_factory=list)
    shm_mb: int | None = None
    pid_file: str | None = None
    rundir: str = "/run/ser"
    user: str | None = None
    group: str | None = None
    debug: int = 0


@dataclass
class Slot:
    role: Role
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    respawn_at: float = 0.0


class Master:
    def __init__(self, cfg: Any, opts: Options) -> None:
        self.cfg = cfg
        self.opts = opts
        self.values = cfg.settings.values
        self.slots: dict[int, Slot] = {}
        self.by_pid: dict[int, int] = {}
        self.stopping = False
        self.ready_pending: set[int] = set()
        self.notify_fd = -1
        self.cleanup_paths: list[str] = []
        self.db_paths: list[str] = []       # SQLite files (and dirs) made on this start
        self.shm: Any = None
        self.stats: Any = None

    # -- start ----------------------------------------------------------------------
    def run(self) -> int:
        opts = self.opts
        debug = int(self.values.get("debug", 0)) + opts.debug
        logmod.setup(debug, opts.stderr or bool(self.values.get("log_stderror")),
                     str(self.values.get("log_facility", "LOG_DAEMON")))
        try:
            self._prepare()
        except (BindError, OSError, TlsError) as e:
            log.error("%s", e)
            print(f"ser: {e}", file=sys.stderr)
            self._cleanup()
            return 1
        if not opts.foreground:
            self._daemonize()
        self.started = time.time()
        self.env.started = self.started
        set_title("ser:main")
        logmod.set_role("main")
        self.procs.set(0, os.getpid(), "main", "main process - attendant")
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in SIGNALS:
            signal.signal(sig, self._record)
        self.pending: list[int] = []
        for rank in sorted(self.slots):
            self.ready_pending.add(rank)
            self._spawn(self.slots[rank])
        log.info("ser %s started: %d processes, listening on %s", _version(), len(self.slots),
                 ", ".join(str(s) for s in self.sockets))
        try:
            return self._loop()
        finally:
            self._cleanup()

    def _prepare(self) -> None:
        opts = self.opts
        values = self.values
        self.sockets: list[SocketInfo] = _sockets(self.cfg, opts.listens)
        for si in self.sockets:
            bind(si)
        os.makedirs(opts.rundir, exist_ok=True)
        self.procs = ProcTable()
        self.shm, self.stats, cfgvars = _create_shm(self.cfg, opts.shm_mb or int(values.get("shm_mem", 64)),
                                           int(values.get("debug", 0)) + opts.debug)
        self.shm.child_init(0)
        fifo, dgram, reply_dir = ctl_paths(self.cfg, opts.rundir)
        fifo_fd, dgram_sock = create_endpoints(fifo, dgram)
        self.cleanup_paths += [p for p in (fifo, dgram) if p]
        local = set()
        if any(si.host in ("0.0.0.0", "::") for si in self.sockets):
            local = local_addresses()
        self.env = Env(self.cfg, self.sockets, self.procs, self.shm, self.stats, opts.rundir,
                       cfgvars=cfgvars,
                       options={"local_hosts": local})
        registry = build_registry(self.cfg)
        rank = 1
        children = opts.children or int(values.get("children", 8))
        for si in self.sockets:
            if si.proto == "udp":
                for i in range(children):
                    self.slots[rank] = Slot(UdpReceiver(rank, si, i))
                    rank += 1
        listeners = [si for si in self.sockets if si.proto in ("tcp", "tls")]
        if listeners:
            tcp_children = int(values.get("tcp_children", 0)) or children
            self.env.options["tcp_workers"] = tcp_children
            tcp_ranks = []
            for i in range(tcp_children):
                self.slots[rank] = Slot(TcpWorker(rank, i, listeners))
                tcp_ranks.append(rank)
                rank += 1
            handoff, sender = create_shared(self.shm, tcp_ranks)
            self.env.options["handoff"] = handoff
            self.env.options["stream_send"] = sender
        self.slots[rank] = Slot(TimerProcess(rank))
        rank += 1
        self.slots[rank] = Slot(CtlProcess(rank, registry, fifo_fd, dgram_sock, reply_dir))
        self.ready_r, self.ready_w = os.pipe()
        self.env.ready_fd = self.ready_w
        self._create_databases()
        for inst in self.cfg.modules.values():
            if inst.decl.mod_init is not None:
                inst.decl.mod_init(inst)
        # the pid file is opened now (it may be in a directory only root can
        # write) and written once every child is ready
        self.pid_fd = -1
        if opts.pid_file:
            self.pid_fd = os.open(opts.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.cleanup_paths.append(opts.pid_file)
        # last: everything above may need root (or files only root can read)
        self._drop_privileges()

    def _create_databases(self) -> None:
        """First start: a SQLite database that a module's ``db_url`` names
        gets Kamailio's schema if the file or tables are missing (one log
        line each). usrloc counts only with a db_mode."""
        from ser.core.db.schema import create_sqlite
        seen = set()
        for inst in self.cfg.modules.values():
            url = str(inst.params.get("db_url") or "")
            if "db_url" not in inst.set_params or not url.startswith("sqlite:") or url in seen:
                continue
            if inst.decl.name == "usrloc" and not int(inst.params.get("db_mode") or 0):
                continue
            seen.add(url)
            made = create_sqlite(url)
            if made is not None:
                log.info("%s", made[0])
                self.db_paths += made[1]

    def _drop_privileges(self) -> None:
        """-u/-g (or user/group): the runtime dir and the control endpoints are
        handed to that user, then the master (and so every child) becomes it."""
        import grp
        import pwd
        opts = self.opts
        user = opts.user or str(self.values.get("user") or self.values.get("uid") or "")
        group = opts.group or str(self.values.get("group") or self.values.get("gid") or "")
        if not user and not group:
            return
        uid = gid = -1
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        pw = None
        if user:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid = pw.pw_uid
            if gid < 0:
                gid = pw.pw_gid
        shm_file = f"/dev/shm/{self.shm.arena.name.lstrip('/')}" if self.shm else None
        for path in [opts.rundir, *self.cleanup_paths, *self.db_paths, shm_file]:
            if path and path != opts.pid_file and os.path.exists(path):
                os.chown(path, uid, gid)
        if gid >= 0:
            os.setgroups([])
            os.setgid(gid)
        if pw is not None:
            os.setuid(pw.pw_uid)
        log.info("running as uid %d gid %d", os.getuid(), os.getgid())

    def _daemonize(self) -> None:
        """Fork into the background; the creator waits until every child is ready."""
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            code = _wait_ready(r)
            os._exit(code)
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        self.notify_fd = w
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if not (self.opts.stderr or self.values.get("log_stderror")):
            os.dup2(devnull, 2)
        os.close(devnull)

    # -- children ---------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        role = slot.role
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.wake_r)
                os.close(self.wake_w)
                os.close(self.ready_r)
                if self.notify_fd >= 0:
                    os.close(self.notify_fd)
                code = child_main(role, self.env)
            finally:
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        self.by_pid[pid] = role.rank
        self.procs.set(role.rank, pid, role.kind, role.desc)

    def _loop(self) -> int:
        while True:
            timeout = self._next_timeout()
            try:
                rl, _, _ = select.select([self.wake_r, self.ready_r], [], [], timeout)
            except InterruptedError:
                rl = []
            if self.wake_r in rl:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
            if self.ready_r in rl:
                self._read_ready()
            while self.pending:
                sig = self.pending.pop(0)
                handler = getattr(self, f"handle_{SIGNAMES.get(sig, '')}", None)
                if handler is not None:
                    handler()
            if self.stopping:
                return self._stop()
            self._respawn_due()

    def _record(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def handle_chld(self) -> None:
        self._reap()

    def handle_term(self) -> None:
        log.info("SIGTERM received, stopping")
        self.stopping = True

    def handle_int(self) -> None:
        log.info("SIGINT received, stopping")
        self.stopping = True

    def handle_hup(self) -> None:
        log.warning("SIGHUP received: reloading the routing script is not available yet")

    def handle_usr1(self) -> None:
        log.info("processes: %s", self.procs.rows())

    def handle_usr2(self) -> None:
        """cfg.set* changed a run-time value (ser.core.cfgvars): apply it here."""
        self.env.cfgvars.update()

    def _read_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        for (rank,) in struct.iter_unpack("<i", data[:len(data) // 4 * 4]):
            self.ready_pending.discard(rank)
            if rank in self.slots:
                self.slots[rank].failures = 0 if time.monotonic() - self.slots[rank].started > 10 \
                    else self.slots[rank].failures
        if not self.ready_pending and not getattr(self, "_announced", False):
            self._announced = True
            self._write_pid_file()
            if self.notify_fd >= 0:
                try:
                    os.write(self.notify_fd, b"ok\n")
                finally:
                    os.close(self.notify_fd)
                    self.notify_fd = -1

    def _write_pid_file(self) -> None:
        if self.pid_fd >= 0:
            os.write(self.pid_fd, f"{os.getpid()}\n".encode())
            os.close(self.pid_fd)
            self.pid_fd = -1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rank = self.by_pid.pop(pid, None)
            if rank is None:
                continue
            slot = self.slots[rank]
            cause = _exit_cause(status)
            self._recover(pid)
            try:
                slot.role.reaped(self.env)
            except Exception:
                log.exception("clean-up after %s (pid %d) failed", slot.role.desc, pid)
            if self.stopping:
                continue
            ran = time.monotonic() - slot.started
            slot.failures = slot.failures + 1 if ran < 10 else 1
            delay = min(10.0, 0.1 * 2 ** (slot.failures - 1))
            log.error("child %d (%s, rank %d) %s after %.1f s; re-forking in %.1f s",
                      pid, slot.role.desc, rank, cause, ran, delay)
            if self.stats is not None:
                self.stats.inc("core:child_restarts")
            slot.pid = 0
            slot.respawn_at = time.monotonic() + delay

    def _recover(self, pid: int) -> None:
        if self.shm is not None and hasattr(self.shm, "recover"):
            try:
                n = self.shm.recover(pid)
                if n:
                    log.warning("recovered %d shared-memory lock(s) held by dead pid %d", n, pid)
            except Exception:
                log.exception("lock recovery for pid %d failed", pid)

    def _next_timeout(self) -> float:
        due = [s.respawn_at for s in self.slots.values() if not s.pid and s.respawn_at]
        if not due:
            return 1.0
        return max(0.0, min(due) - time.monotonic())

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            if not slot.pid and slot.respawn_at and slot.respawn_at <= now:
                slot.respawn_at = 0.0
                self._spawn(slot)
                log.info("re-forked %s (rank %d) as pid %d", slot.role.desc, slot.role.rank,
                         slot.pid)

    # -- stop -------------------------------------------------------------------------
    def _stop(self) -> int:
        for pid in list(self.by_pid):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.by_pid and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in list(self.by_pid):
            log.warning("child %d did not stop; killing it", pid)
            _kill(pid, signal.SIGKILL)
        while self.by_pid:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.by_pid.pop(pid, None)
        for inst in self.cfg.modules.values():
            if inst.decl.destroy is not None:
                try:
                    inst.decl.destroy(inst)
                except Exception:
                    log.exception("destroy of module %s failed", inst.decl.name)
        log.info("ser stopped")
        return 0

    def _cleanup(self) -> None:
        for si in getattr(self, "sockets", ()):
            if si.sock is not None:
                si.sock.close()
        for path in self.cleanup_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.shm is not None:
            try:
                self.shm.unlink()
            except Exception:
                log.exception("removing shared memory failed")
            self.shm = None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exit_cause(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} (SIG{SIGNAMES.get(sig, '?').upper()})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _wait_ready(fd: int) -> int:
    """In the creator: 0 once the daemon says it is ready, 1 if it died first."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
            if b"ok" in data:
                return 0
    print("ser: the daemon did not start (see the log)", file=sys.stderr)
    return 1


def _version() -> str:
    from ser import __version__
    return __version__


def _create_shm(cfg: Any, mb: int, debug: int) -> tuple[Any, Any, Any]:
    """The shared-memory arena, the statistics counters and the run-time
    configuration values (before the fork)."""
    from ser.core.shmstate import create
    return create(cfg, mb, debug)

