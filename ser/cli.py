"""The `ser` command line (Kamailio's flags)."""

from __future__ import annotations

import sys

USAGE = """usage: ser [options]
  -f FILE      configuration file (default: cfg/ser.cfg)
  -c           check the configuration file and exit
  -A NAME[=V]  define a preprocessor name (may be repeated)
  -V           print the version and exit
"""


def check(path: str, defines: dict[str, str | None]) -> int:
    from ser.core.cfg.load import check_config

    cfg = check_config(path, defines)
    for w in cfg.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if cfg.errors:
        for e in cfg.errors:
            print(str(e), file=sys.stderr)
        print(f"ERROR: bad config file ({len(cfg.errors)} error"
              f"{'' if len(cfg.errors) == 1 else 's'} found)", file=sys.stderr)
        return 1
    print(f"config file ok, exiting... ({path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ser import __version__

    args = sys.argv[1:] if argv is None else list(argv)
    if "-V" in args or "--version" in args:
        print(f"version: ser {__version__}")
        return 0
    if "-h" in args or "--help" in args:
        print(USAGE, end="")
        return 0
    cfg_file = "cfg/ser.cfg"
    check_only = False
    defines: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-f", "-A"):
            if i + 1 >= len(args):
                print(f"ser: option {a} needs an argument", file=sys.stderr)
                return 1
            value = args[i + 1]
            i += 2
            if a == "-f":
                cfg_file = value
            else:
                name, eq, val = value.partition("=")
                defines[name] = val if eq else None
            continue
        if a == "-c":
            check_only = True
        elif a.startswith("-f") and len(a) > 2:
            cfg_file = a[2:]
        elif a.startswith("-A") and len(a) > 2:
            name, eq, val = a[2:].partition("=")
            defines[name] = val if eq else None
        else:
            print(f"ser: option {a} is not implemented yet", file=sys.stderr)
            return 1
        i += 1
    if check_only:
        return check(cfg_file, defines)
    print("ser: the daemon is not built yet (see the daemon issue); nothing was started",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
