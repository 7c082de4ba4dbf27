"""`serctl`: the operator's control client (kamctl/kamcmd for ser).

    serctl [-s SOCKET | --fifo FIFO] rpc METHOD [ARGS...]
    serctl ul show [AOR]            ul.dump / ul.lookup
    serctl ul rm AOR                ul.rm
    serctl db init [URL]            create Kamailio's tables (default: $SER_DB_URL
                                    or sqlite:///var/lib/ser/ser.db)
    serctl [--db URL] add USER@DOMAIN PASSWORD    a subscriber (password, ha1, ha1b)
    serctl [--db URL] passwd USER@DOMAIN PASSWORD
    serctl [--db URL] rm USER@DOMAIN
    serctl [--db URL] show [USER@DOMAIN]
    serctl [--db URL] acl grant|revoke|show [USER@DOMAIN] [GROUP]
    serctl [--db URL] address add GRP IP[/MASK] [PORT] [TAG]
    serctl [--db URL] address rm GRP IP[/MASK] [PORT]
    serctl [--db URL] address list
    serctl address reload           permissions.addressReload
    serctl monitor [--count N]      a live view, refreshed every second

The database of the provisioning commands is ``--db``, else $SER_DB_URL,
else ``DBURL`` of a serctlrc file ($SERCTLRC, ~/.serctlrc, /etc/ser/serctlrc;
shell syntax as kamctlrc: ``DBURL="sqlite:///var/lib/ser/ser.db"``), else the
default above. After changing subscribers serctl asks the running ser to
drop its credentials cache (``auth_db.flush``), so the change counts at once.

Talks JSON-RPC 2.0 to the control process over its UNIX datagram socket
(default: the default runtime directory's ``ser_rpc.sock``) or its FIFO.
Arguments that look like integers are sent as numbers; prefix ``s:`` to
force a string, ``i:`` a number (as kamctl does).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import tempfile
import time
from typing import Any

from ser.cli import default_rundir

TIMEOUT = 5.0


class CtlError(Exception):
    pass


def _param(text: str) -> Any:
    if text.startswith("s:"):
        return text[2:]
    if text.startswith("i:"):
        return int(text[2:])
    try:
        return int(text)
    except ValueError:
        return text


def request(method: str, params: list[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": os.getpid()}


def call_dgram(path: str, req: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="serctl-") as d:
        me = os.path.join(d, "c.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind(me)
            # the server may run as another user (ser -u): let it answer
            os.chmod(d, 0o755)
            os.chmod(me, 0o777)
            s.settimeout(timeout)
            try:
                s.sendto(json.dumps(req).encode(), path)
            except OSError as e:
                raise CtlError(f"cannot reach {path}: {e.strerror}") from None
            try:
                data = s.recv(1 << 20)
            except TimeoutError:
                raise CtlError(f"no answer from {path} in {timeout:.0f} s") from None
        finally:
            s.close()
    return json.loads(data)


def call_fifo(path: str, req: dict[str, Any], timeout: float = TIMEOUT,
              reply_dir: str = "/tmp") -> dict[str, Any]:
    name = f"serctl_reply_{os.getpid()}_{int(time.time() * 1000)}"
    reply = os.path.join(reply_dir, name)
    os.mkfifo(reply, 0o600)
    os.chmod(reply, 0o622)           # the server may run as another user (ser -u)
    try:
        rfd = os.open(reply, os.O_RDONLY | os.O_NONBLOCK)
        try:
            try:
                wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                raise CtlError(f"cannot open {path}: {e.strerror}") from None
            try:
                os.write(wfd, json.dumps({**req, "reply_name": name}).encode() + b"\n")
            finally:
                os.close(wfd)
            data = b""
            deadline = time.monotonic() + timeout
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CtlError(f"no answer on {reply} in {timeout:.0f} s")
                r, _, _ = select.select([rfd], [], [], left)
                if r:
                    data += os.read(rfd, 1 << 20)
            return json.loads(data)
        finally:
            os.close(rfd)
    finally:
        os.unlink(reply)


def tls_gencert(key: str, cert: str, cn: str, days: int) -> int:
    """`serctl tls gencert`: a self-signed key and certificate for a quick start."""
    from ser.core.tls import gencert
    try:
        gencert(key, cert, cn, days)
    except OSError as e:
        print(f"serctl: tls gencert: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {key} (private key, mode 0600) and {cert} (self-signed, CN={cn}, "
          f"{days} days)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serctl", description="Control a running ser.")
    p.add_argument("-s", dest="socket", help="the control datagram socket "
                   f"(default: {default_rundir()}/ser_rpc.sock)")
    p.add_argument("--fifo", help="use the control FIFO instead of the socket")
    p.add_argument("-t", dest="timeout", type=float, default=TIMEOUT, help="seconds to wait")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rpc", help="call an RPC method")
    r.add_argument("method")
    r.add_argument("params", nargs="*")
    ul = sub.add_parser("ul", help="the location service")
    ul.add_argument("action", choices=("show", "rm"))
    ul.add_argument("aor", nargs="?")
    ul.add_argument("--table", default="location")
    db = sub.add_parser("db", help="the database")
    db.add_argument("action", choices=("init",))
    db.add_argument("url", nargs="?")
    p.add_argument("--db", dest="db_url", help="database URL of the provisioning commands")
    a = sub.add_parser("add", help="add a subscriber")
    a.add_argument("user")
    a.add_argument("password")
    a = sub.add_parser("passwd", help="change a subscriber's password")
    a.add_argument("user")
    a.add_argument("password")
    a = sub.add_parser("rm", help="remove a subscriber")
    a.add_argument("user")
    a = sub.add_parser("show", help="show subscribers")
    a.add_argument("user", nargs="?")
    a = sub.add_parser("acl", help="group membership (the grp table)")
    a.add_argument("action", choices=("grant", "revoke", "show"))
    a.add_argument("user", nargs="?")
    a.add_argument("group", nargs="?")
    a = sub.add_parser("address", help="the permissions address table")
    a.add_argument("action", choices=("add", "rm", "list", "reload"))
    a.add_argument("args", nargs="*")
    a = sub.add_parser("monitor", help="a live view refreshed every second (kamctl monitor)")
    a.add_argument("--count", type=int, default=0, help="stop after N screens")
    a = sub.add_parser("tls", help="TLS: gencert (a self-signed key and certificate), "
                       "list, info, reload")
    a.add_argument("action", choices=("gencert", "list", "info", "reload"))
    a.add_argument("--key", default="ser-selfsigned.key", help="key file (gencert)")
    a.add_argument("--cert", default="ser-selfsigned.pem", help="certificate file (gencert)")
    a.add_argument("--cn", default="localhost", help="common name (gencert)")
    a.add_argument("--days", type=int, default=365, help="validity (gencert)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "tls":
        if args.action == "gencert":
            return tls_gencert(args.key, args.cert, args.cn, args.days)
        req = request(f"tls.{args.action}", [])
    if args.cmd == "db":
        return db_init(args.url)
    if args.cmd in ("add", "passwd", "rm", "show", "acl", "address"):
        if not (args.cmd == "address" and args.action == "reload"):
            from ser.provision import ProvisionError, run
            try:
                out, notify = run(args, db_url(args.db_url))
            except ProvisionError as e:
                print(f"serctl: {e}", file=sys.stderr)
                return 1
            if out:
                print(out)
            if notify:
                _notify(args, notify)
            return 0
        req = request("permissions.addressReload", [])
    if args.cmd == "monitor":
        from ser.monitor import monitor
        path = (args.socket or os.path.join(default_rundir(), "ser_rpc.sock")).removeprefix("unix:")

        def call(method: str, params: list[Any]) -> dict[str, Any]:
            req = request(method, params)
            return call_fifo(args.fifo, req, args.timeout) if args.fifo else \
                call_dgram(path, req, args.timeout)
        try:
            return monitor(call, count=args.count)
        except CtlError as e:
            print(f"serctl: {e}", file=sys.stderr)
            return 1
    if args.cmd == "ul":
        if args.action == "rm" and not args.aor:
            p.error("ul rm needs an AOR")
        if args.action == "rm":
            req = request("ul.rm", [args.table, args.aor])
        elif args.aor:
            req = request("ul.lookup", [args.table, args.aor])
        else:
            req = request("ul.dump", [])
    elif args.cmd == "rpc":
        req = request(args.method, [_param(x) for x in args.params])
    try:
        if args.fifo:
            resp = call_fifo(args.fifo, req, args.timeout)
        else:
            path = args.socket or os.path.join(default_rundir(), "ser_rpc.sock")
            path = path.removeprefix("unix:")
            resp = call_dgram(path, req, args.timeout)
    except CtlError as e:
        print(f"serctl: {e}", file=sys.stderr)
        return 1
    if "error" in resp:
        err = resp["error"]
        print(f"error: {err.get('code')} - {err.get('message')}", file=sys.stderr)
        return 1
    print(json.dumps(resp.get("result"), indent=2))
    return 0


DEFAULT_DB_URL = "sqlite:///var/lib/ser/ser.db"
RC_FILES = ("~/.serctlrc", "/etc/ser/serctlrc")


def _rc_url() -> str | None:
    """DBURL of the first serctlrc found (kamctlrc's shell syntax)."""
    import re
    import shlex
    paths = [os.environ["SERCTLRC"]] if os.environ.get("SERCTLRC") else []
    for path in [*paths, *RC_FILES]:
        try:
            text = open(os.path.expanduser(path)).read()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*(?:export\s+)?DBURL\s*=\s*(.*)$", line)
            if m:
                v = shlex.split(m.group(1), comments=True)
                return v[0] if v else None
    return None


def db_url(given: str | None) -> str:
    return given or os.environ.get("SER_DB_URL") or _rc_url() or DEFAULT_DB_URL


def _notify(args: argparse.Namespace, method: str) -> None:
    """Tell a running ser (best effort): no ser running is not an error."""
    req = request(method, [])
    try:
        if args.fifo:
            resp = call_fifo(args.fifo, req, args.timeout)
        else:
            path = args.socket or os.path.join(default_rundir(), "ser_rpc.sock")
            resp = call_dgram(path.removeprefix("unix:"), req, args.timeout)
    except (CtlError, OSError):
        return
    err = resp.get("error")
    if err and err.get("code") != -32601:        # auth_db not loaded: nothing cached
        print(f"serctl: {method}: {err.get('message')}", file=sys.stderr)


def db_init(url: str | None) -> int:
    """Create Kamailio's tables and version rows in the database at ``url``."""
    from ser.core.db import DbError, connect, parse_url
    from ser.core.db.schema import init_db

    url = db_url(url)
    try:
        u = parse_url(url)
        if u.scheme == "sqlite":
            d = os.path.dirname(u.database)
            if d:
                os.makedirs(d, exist_ok=True)
        conn = connect(u)
    except (ValueError, DbError) as e:
        print(f"serctl: {e}", file=sys.stderr)
        return 1
    try:
        names = init_db(conn)
    except DbError as e:
        print(f"serctl: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"created {', '.join(names)} in {u.redacted()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
