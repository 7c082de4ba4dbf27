"""The debugger's cfgtrace: the hook calls the compiler writes and the lines they log."""

from __future__ import annotations

import logging
import logging.handlers
import socket

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message

OPTIONS = (b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKdbg1\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
           b"Call-ID: dbg1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")

SCRIPT = """\
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
{debugger}
request_route {{
\t$var(x) = 1;
\tif (is_method("OPTIONS") && $var(x) == 1) {{
\t\troute(SUB);
\t}}
\tswitch ($var(x)) {{
\t\tcase 1:
\t\t\tbreak;
\t}}
\texit;
}}
route[SUB] {{
\tif (!is_method("INVITE")) return;
}}
"""
DEBUGGER = ('loadmodule "debugger.so"\nmodparam("debugger", "cfgtrace", {on})\n'
            'modparam("debugger", "log_level_name", "exec")')


def _cfg(debugger: str):
    cfg = check_text(SCRIPT.format(debugger=debugger), "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    return cfg


def _run(cfg) -> Context:
    ctx = Context(parse_message(OPTIONS), Runtime(cfg.settings, cfg.modules))
    cfg.routes.request(ctx)
    return ctx


def test_without_the_module_no_hook_is_compiled():
    cfg = _cfg("")
    assert "_dbg" not in cfg.routes.source


def test_trace_lines_name_route_file_line_and_action(caplog):
    cfg = _cfg(DEBUGGER.format(on=1).replace("\n", " "))   # keep the line numbers
    with caplog.at_level(logging.DEBUG, logger="ser"):
        _run(cfg)
    recs = [r for r in caplog.records if r.name == "ser.cfgtrace"]
    got = [r.getMessage() for r in recs]
    p = "*** cfgtrace:request_route="
    assert got == [
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=6 n=assign",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=7 n=if",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=7 n=is_method",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=8 n=route",
        f"{p}[SUB] c=[t.cfg] l=17 n=if",
        f"{p}[SUB] c=[t.cfg] l=17 n=is_method",
        f"{p}[SUB] c=[t.cfg] l=17 n=return",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=10 n=switch",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=12 n=break",
        f"{p}[DEFAULT_ROUTE] c=[t.cfg] l=14 n=exit",
    ], got
    # at log_level -1 (L_ERR) under the name log_level_name gives
    assert {(r.levelno, r.levelname) for r in recs} == {(logging.ERROR, "exec")}


def test_log_assign(caplog):
    text = SCRIPT.format(debugger='loadmodule "debugger.so" modparam("debugger", "log_assign", 1)')
    text = text.replace("\t$var(x) = 1;\n", '\t$var(x) = 1; $var(s) = "a" + $rm; $avp(n) = $null;\n')
    cfg = check_text(text, "t.cfg")
    assert cfg.ok, cfg.errors
    assert "_dbga(ctx" in cfg.routes.source
    with caplog.at_level(logging.DEBUG, logger="ser"):
        _run(cfg)
    got = [r.getMessage() for r in caplog.records if r.name == "ser.debugger"]
    assert got == ["$var(x):1", '$var(s):"aOPTIONS"', "$avp(n): $null"], got
    # and no trace line: cfgtrace is off
    assert not [r for r in caplog.records if r.name == "ser.cfgtrace"]


def test_no_log_assign_no_call():
    assert "_dbga(ctx" not in _cfg(DEBUGGER.format(on=1).replace("\n", " ")).routes.source


def test_trace_off_then_on_without_recompiling(caplog):
    cfg = _cfg(DEBUGGER.format(on=0).replace("\n", " "))
    assert "_dbg(ctx" in cfg.routes.source        # dbg.trace may turn it on later
    with caplog.at_level(logging.DEBUG, logger="ser"):
        _run(cfg)
        assert not [r for r in caplog.records if r.name == "ser.cfgtrace"]
        cfg.modules["debugger"].state["tracer"].set(True)
        _run(cfg)
    assert len([r for r in caplog.records if r.name == "ser.cfgtrace"]) == 10


def test_prefix_and_level(caplog):
    cfg = _cfg('loadmodule "debugger.so" modparam("debugger", "cfgtrace", 1) '
               'modparam("debugger", "log_prefix", "TRC ") modparam("debugger", "log_level", 3)')
    with caplog.at_level(logging.INFO, logger="ser"):
        _run(cfg)
    assert not [r for r in caplog.records if r.name == "ser.cfgtrace"]   # DEBUG is below INFO
    with caplog.at_level(logging.DEBUG, logger="ser"):
        _run(cfg)
    recs = [r for r in caplog.records if r.name == "ser.cfgtrace"]
    assert recs[0].getMessage() == "TRC request_route=[DEFAULT_ROUTE] c=[t.cfg] l=6 n=assign"
    assert recs[0].levelname == "DEBUG"


@pytest.mark.parametrize("param,value,message", [
    ("breakpoint", "1", "interactive breakpoints are not available in ser"),
    ("mod_level_mode", "1", "per-module log levels are not available in ser"),
    ("log_facility", '"LOG_NOPE"', "unknown facility 'LOG_NOPE'"),
    ("log_level", "7", "a log level is -5 (alert) .. 3 (debug)"),
])
def test_params_for_what_ser_lacks_fail_the_check(param, value, message):
    cfg = check_text(f'loadmodule "debugger.so"\nmodparam("debugger", "{param}", {value})\n'
                     "request_route { exit; }\n", "t.cfg")
    assert any(message in str(e) and str(e).startswith("t.cfg:2:") for e in cfg.errors), \
        cfg.errors


def test_params_without_meaning_are_a_warning():
    cfg = check_text('loadmodule "debugger.so"\nmodparam("debugger", "step_usleep", 5)\n'
                     'modparam("debugger", "breakpoint", 0)\nrequest_route { exit; }\n', "t.cfg")
    assert cfg.ok, cfg.errors
    assert "module parameters without meaning in ser, ignored: debugger.step_usleep" \
        in cfg.warnings


def test_syslog_facility_and_severity():
    """With ser logging to syslog, the trace lines carry log_facility and the
    severity of log_level (not the "warning" an unknown level name maps to)."""
    from ser.mods import debugger
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    ser_log = logging.getLogger("ser")
    saved = (ser_log.handlers[:], ser_log.propagate, ser_log.level)
    core = logging.handlers.SysLogHandler(rx.getsockname())       # facility LOG_USER
    ser_log.handlers[:] = [core]
    ser_log.propagate = False
    ser_log.setLevel(logging.DEBUG)
    try:
        for facility, pri in (("LOG_LOCAL3", 19 * 8 + 3), ("", 1 * 8 + 3)):
            cfg = _cfg(DEBUGGER.format(on=1).replace("\n", " ")
                       + f' modparam("debugger", "log_facility", "{facility}")')
            debugger.mod_init(cfg.modules["debugger"])
            _run(cfg)
            data = rx.recv(4096).decode()
            assert data.startswith(f"<{pri}>"), data      # error (3), LOCAL3 or the core's
            assert "*** cfgtrace:request_route=[DEFAULT_ROUTE] c=[t.cfg] l=6 n=assign" in data
            while True:                                    # the rest of this run's lines
                rx.settimeout(0.2)
                try:
                    rx.recv(4096)
                except TimeoutError:
                    break
            rx.settimeout(5)
    finally:
        for h in debugger.log.handlers:
            h.close()
        debugger.log.handlers.clear()
        debugger.log.propagate = True
        core.close()
        ser_log.handlers[:], ser_log.propagate, _ = saved
        ser_log.setLevel(saved[2])
        rx.close()
