"""The `ser` command line (Kamailio's flags)."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CFG = "cfg/ser.cfg"


def default_rundir() -> str:
    """Kamailio's /run/kamailio for root; a private directory otherwise."""
    return "/run/ser" if os.geteuid() == 0 else f"/tmp/ser-{os.geteuid()}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ser", add_help=False,
        description="SIP server (proxy, registrar, location service) in the SER/Kamailio "
                    "tradition.")
    a = p.add_argument
    a("-f", dest="cfg", metavar="FILE", default=DEFAULT_CFG,
      help=f"configuration file (default: {DEFAULT_CFG})")
    a("-c", dest="check", action="store_true", help="check the configuration file and exit")
    a("-D", dest="foreground", action="count", default=0,
      help="do not daemonize (-DD: keep the creator in the foreground too)")
    a("-E", dest="stderr", action="store_true", help="log to stderr (default: syslog)")
    a("-n", dest="children", type=int, metavar="N", help="UDP children per socket")
    a("-l", dest="listen", action="append", default=[], metavar="ADDR",
      help="listen on [proto:]addr[:port]; repeatable; replaces the config's listen")
    a("-m", dest="shm", type=int, metavar="MB", help="shared memory size in megabytes")
    a("-P", dest="pid_file", metavar="FILE", help="write the master's pid to FILE")
    a("-Y", dest="rundir", metavar="DIR", help="runtime directory for the FIFO and sockets "
      f"(default: {default_rundir()})")
    a("-A", dest="defines", action="append", default=[], metavar="NAME[=VAL]",
      help="define a preprocessor name, as #!define does")
    a("-u", dest="user", metavar="USER", help="run as USER after binding the sockets")
    a("-g", dest="group", metavar="GROUP", help="run as GROUP after binding the sockets")
    a("-d", dest="debug", action="count", default=0, help="more debug output (repeatable)")
    a("-V", dest="version", action="store_true", help="print the version and exit")
    a("-h", dest="help", action="store_true", help="this help")
    return p


def check(path: str, defines: dict[str, str | None]) -> int:
    from ser.core.cfg.load import check_config

    cfg = check_config(path, defines)
    for w in cfg.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    errors = [str(e) for e in cfg.errors]
    if not errors:
        from ser.core.master import check_modules
        errors, warnings = check_modules(cfg)
        for w in warnings:
            print(f"WARNING: {w}", file=sys.stderr)
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        print(f"ERROR: bad config file ({len(errors)} error"
              f"{'' if len(errors) == 1 else 's'} found)", file=sys.stderr)
        return 1
    print(f"config file ok, exiting... ({path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ser import __version__
    from ser.core.cfg.preproc import parse_cli_defines

    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.help:
        parser.print_help()
        return 0
    if args.version:
        print(f"version: ser {__version__}")
        return 0
    defines = parse_cli_defines(args.defines)
    if args.check:
        return check(args.cfg, defines)
    return serve(args, defines)


def serve(args: argparse.Namespace, defines: dict[str, str | None]) -> int:
    from ser.core.cfg.load import check_config
    from ser.core.master import Master, Options
    from ser.core.net import parse_cli_listen

    cfg = check_config(args.cfg, defines)
    for w in cfg.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if cfg.errors:
        for e in cfg.errors:
            print(str(e), file=sys.stderr)
        print("ERROR: bad config file, nothing started", file=sys.stderr)
        return 1
    try:
        listens = [parse_cli_listen(x) for x in args.listen]
    except ValueError as e:
        print(f"ser: bad -l value: {e}", file=sys.stderr)
        return 1
    rundir = os.path.abspath(args.rundir or default_rundir())
    opts = Options(cfg_path=os.path.abspath(args.cfg), foreground=args.foreground > 0,
                   stderr=args.stderr, children=args.children, listens=listens,
                   shm_mb=args.shm,
                   pid_file=os.path.abspath(args.pid_file) if args.pid_file else None,
                   rundir=rundir, user=args.user, group=args.group, debug=args.debug)
    return Master(cfg, opts).run()


if __name__ == "__main__":
    sys.exit(main())
