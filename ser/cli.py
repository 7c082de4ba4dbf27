"""The `ser` command line (Kamailio's flags)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ser import __version__

    args = sys.argv[1:] if argv is None else argv
    if "-V" in args or "--version" in args:
        print(f"version: ser {__version__}")
        return 0
    print("ser: the daemon is not built yet (see the daemon issue); nothing was started",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
