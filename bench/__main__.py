"""`python -m bench` (make bench): every benchmark that exists so far."""

from __future__ import annotations

import importlib

for name in ("bench.parser", "bench.cfg", "bench.shm", "bench.worker", "bench.daemon",
             "bench.registrar", "bench.proxy", "bench.auth", "bench.antiabuse", "bench.tls",
             "bench.usrloc"):
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    mod.main()
