"""Benchmark of the compiled routing script: microseconds per request_route run.

The route is the core of the seed's security block (src_ip checks, pike,
htable brute-force counter, authentication, permissions, group check) as 12
top-level statements; the module functions it calls are stubs declared in
this file with the real declaration API, so only the script engine is
measured. The message is parsed once; every run gets a fresh Context, as a
worker does per message. Target: <= 6 microseconds.

    python -m bench.cfg [-n RUNS]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.module import Arg, Function, Module
from ser.core.parser import parse_message

SCRIPT = r"""
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"

request_route {
    if (src_ip == 10.1.1.10) {
        sl_send_reply("403", "Forbidden");
        exit;
    }
    if (src_ip == 10.1.1.0/24) {
        sl_send_reply("403", "Forbidden");
        exit;
    }
    if ((src_ip != 192.168.1.25) && !pike_check_req()) {
        xlog("pike filter: $rm from $fu (IP:$si:$sp)\n");
        exit;
    }
    $var(myip) = "10.1.1.10";
    if ($si == $var(myip)) {
        sl_send_reply("403", "Forbidden");
        exit;
    }
    if (is_present_hf("Authorization")) {
        if ($sht(a=>$au::auth_count) == 3) {
            sl_send_reply("403", "Try later");
            exit;
        }
    }
    if (!www_authenticate("$td", "subscriber")) {
        switch ($retcode) {
            case -1:
                sl_send_reply("403", "Forbidden");
                exit;
            case -2:
                $sht(a=>$au::auth_count) = $sht(a=>$au::auth_count) + 1;
                break;
        }
        www_challenge("$td", "0");
        exit;
    }
    $sht(a=>$au::auth_count) = 0;
    if (!allow_source_address("1")) {
        sl_send_reply("403", "Forbidden");
        exit;
    }
    if (method == "INVITE" && uri =~ "sip:00[1-9][0-9]+@.*") {
        if (!is_user_in("From", "international")) {
            sl_send_reply("403", "No permission for international calls");
            exit;
        }
    }
    sl_send_reply("200", "OK");
}
"""

MESSAGE = (
    b"INVITE sip:0049301234@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.2.2.2:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"To: <sip:0049301234@example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"abc\", "
    b"uri=\"sip:0049301234@example.com\", response=\"0123456789abcdef\"\r\n"
    b"Content-Length: 0\r\n\r\n")


def _true(ctx: Any, *args: Any) -> int:
    return 1


def _sht_name(inner: str | None, index: str | None, res: Any) -> Any:
    # STUB of htable's $sht: "table=>key" with the key formatted per message
    assert inner is not None
    table, _, key = inner.replace("->", "=>").partition("=>")
    return (table, res.format(key, ("bench", 0, 0)))


def _sht_get(ctx: Any, name: Any) -> Any:
    return ctx.rt.shv.get((name[0], name[1](ctx)))


def _sht_set(ctx: Any, name: Any, value: Any) -> None:
    ctx.rt.shv[(name[0], name[1](ctx))] = value


from ser.core.pv import PVDecl  # noqa: E402

STUBS = Module(
    name="bench_stubs",
    doc="Stub functions of pike, auth, permissions, group and htable.",
    functions=(
        Function("pike_check_req", _true, doc="stub"),
        Function("www_authenticate", _true, (Arg("realm"), Arg("table")), doc="stub"),
        Function("www_challenge", _true, (Arg("realm"), Arg("flags")), doc="stub"),
        Function("allow_source_address", _true, (Arg("group", "int"),), doc="stub"),
        Function("is_user_in", _true, (Arg("uri"), Arg("group")), doc="stub"),
    ),
    pvs=(PVDecl("sht", _sht_get, _sht_set, _sht_name, doc="stub"),),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="runs (default 200000)")
    args = ap.parse_args(argv)
    cfg = check_text(SCRIPT, "bench.cfg", extra_modules=[STUBS])
    if cfg.errors:
        for e in cfg.errors:
            print(e)
        return 1
    assert cfg.routes is not None
    route = cfg.routes.request
    rt = Runtime(cfg.settings, cfg.modules)
    msg = parse_message(MESSAGE)
    ctx = Context(msg, rt, "10.2.2.2", 5060)
    route(ctx)
    assert ctx.actions == [("reply", 200, "OK")], ctx.actions
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(args.n):
            route(Context(msg, rt, "10.2.2.2", 5060))
        best = min(best, time.perf_counter() - t0)
    us = best / args.n * 1e6
    print(f"request_route (12 statements, compiled): {us:.2f} us per run "
          f"(best of 5 x {args.n} runs; target <= 6)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
