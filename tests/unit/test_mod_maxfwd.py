"""maxfwd: add, decrement and compare Max-Forwards through a compiled script."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message

REQ = ("MESSAGE sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n"
       "From: <sip:a@b>;tag=1\r\nTo: <sip:u@example.com>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n"
       "{mf}Content-Length: 0\r\n\r\n")


def run(mf: str, body: str, params: str = "") -> Context:
    cfg = check_text('loadmodule "maxfwd.so"\n' + params + "request_route {\n" + body + "\n}\n",
                     "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    raw = REQ.format(mf=f"Max-Forwards: {mf}\r\n" if mf is not None else "").encode()
    ctx = Context(parse_message(raw), Runtime(cfg.settings, cfg.modules))
    cfg.routes.request(ctx)
    return ctx


def sent_value(ctx: Context) -> list[str]:
    return parse_message(ctx.msg.serialize()).headers("max-forwards")


@pytest.mark.parametrize("mf,rc,out,lt", [
    (None, 2, ["10"], -1),         # added with max_value; 10 is not below 5
    ("70", 1, ["69"], -1),
    ("5", 1, ["4"], 1),
    ("1", 1, ["0"], 1),
    ("0", -1, ["0"], 1),           # cannot be decremented: the script answers 483
    ("255", 1, ["70"], -1),        # capped by max_limit
    ("abc", -2, ["abc"], -3),
])
def test_process_and_compare(mf, rc, out, lt):
    ctx = run(mf, 'mf_process_maxfwd_header("10"); $var(rc) = $rc; is_maxfwd_lt("5"); '
                  '$var(lt) = $rc;')
    assert (ctx.rt.vars["rc"], sent_value(ctx), ctx.rt.vars["lt"]) == (rc, out, lt)


def test_is_maxfwd_lt_without_the_header():
    ctx = run(None, 'is_maxfwd_lt("5"); $var(lt) = $rc;')
    assert ctx.rt.vars["lt"] == -2


def test_max_limit_and_aliases():
    ctx = run("50", 'maxfwd_process("10"); process_maxfwd("10");',
              'modparam("maxfwd", "max_limit", 32)\n')
    assert sent_value(ctx) == ["32"]      # processed once per message


def test_bad_values_are_refused_at_load():
    cfg = check_text('loadmodule "maxfwd.so"\nmodparam("maxfwd", "max_limit", 0)\n'
                     'request_route { mf_process_maxfwd_header("300"); }\n', "t.cfg")
    errors = " ".join(str(e) for e in cfg.errors)
    assert "max_limit" in errors and "300" in errors
