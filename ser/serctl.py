"""`serctl`: the operator's control client (kamctl/kamcmd for ser)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("serctl: the control process is not built yet; nothing to talk to", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
