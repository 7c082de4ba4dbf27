"""The lexer and parser: every construct of the language becomes the right AST."""

from __future__ import annotations

import glob
import ipaddress
import os
import re

import pytest

from ser.core.cfg import ast
from ser.core.cfg.load import check_config
from ser.core.cfg.parser import parse_tokens
from ser.core.cfg.preproc import preprocess_file, preprocess_text
from ser.core.module import available_modules

SEEDS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "data",
                                      "seed-snippets", "*.cfg")))
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "cfg")


def parse(text: str) -> ast.Script:
    r = preprocess_text(text, "t.cfg")
    script, errors = parse_tokens(r.tokens)
    assert [str(e) for e in r.errors + errors] == []
    return script


def body(text: str) -> tuple[ast.Stmt, ...]:
    return parse("request_route {\n" + text + "\n}\n").routes[0].body.stmts


def cond(text: str) -> ast.Expr:
    st = body(f"if ({text}) exit;")[0]
    assert isinstance(st, ast.If)
    return st.cond


@pytest.mark.parametrize("path", SEEDS, ids=[os.path.basename(p) for p in SEEDS])
def test_seed_snippet_parses(path):
    r = preprocess_file(path)
    script, errors = parse_tokens(r.tokens)
    assert [str(e) for e in r.errors + errors] == []
    assert script.routes


@pytest.mark.parametrize("path", SEEDS, ids=[os.path.basename(p) for p in SEEDS])
def test_seed_snippet_checks_with_the_modules_ser_has(path):
    """Modules that exist load; a missing one is only 'not available', and
    the snippets whose modules all exist pass the whole check."""
    text = open(path).read()
    needs = re.search(r"# needs: ([\w ]+)", text).group(1).split()
    missing = [m for m in needs if m not in available_modules()]
    cfg = check_config(path)
    not_available = {e.message for e in cfg.errors if "not available in ser" in e.message}
    loaded = re.findall(r'loadmodule "(\w+)\.so"', text)
    assert not_available == {f"module '{m}' is not available in ser"
                             for m in loaded if m in missing}
    if not missing:
        assert [str(e) for e in cfg.errors] == []


def test_everything_config_passes():
    cfg = check_config(os.path.join(DATA, "ok-everything.cfg"))
    assert [str(e) for e in cfg.errors] == []
    assert cfg.warnings == ["parameters without meaning in ser, ignored: memdbg, memlog"]
    s = cfg.settings
    assert s["debug"] == 3 and s["log_stderror"] is True and s["server_signature"] is False
    listen = s["listen"]
    assert [(x.proto, x.host, x.port, x.advertise_host, x.advertise_port) for x in listen] == [
        ("udp", "127.0.0.1", 5060, "1.2.3.4", 5060), ("tcp", "::1", 5060, None, 0)]
    assert s["alias"] == ("sip.example.com",)
    assert s["log_prefix"] == "{$rm $ci} "
    assert cfg.modules["sl"].params["bind_tm"] == 0
    assert cfg.modules["xlog"].params["force_color"] == 1
    kinds = {(r.kind, r.name) for r in cfg.script.routes}
    assert kinds == {("request", ""), ("route", "RELAY"), ("failure", "MANAGE_FAILURE"),
                     ("onreply", "MANAGE_REPLY"), ("reply", ""), ("branch", "MANAGE_BRANCH"),
                     ("onsend", ""), ("event", "htable:mod-init")}


def test_route_aliases():
    s = parse("route { exit; }\nroute[0] { exit; }\nonreply_route { exit; }\n"
              "route[\"quoted\"] { exit; }\nroute[2] { exit; }")
    assert [(r.kind, r.name) for r in s.routes] == [
        ("request", ""), ("request", ""), ("reply", ""), ("route", "quoted"), ("route", "2")]


def test_global_values():
    s = parse("debug=-1\nfork=no\nchildren=4;port=5070\nalias=sip.example.com:5060\n"
              "listen=tls:10.0.0.1:5061 advertise 1.2.3.4:5061 name \"pub\"\n")
    assert [(g.name, g.value) for g in s.globals] == [
        ("debug", -1), ("fork", "no"), ("children", 4), ("port", 5070),
        ("alias", "sip.example.com:5060"),
        ("listen", 'tls:10.0.0.1:5061 advertise 1.2.3.4:5061 name pub')]


def test_modparam_and_loadmodule():
    s = parse('loadmodule "tm.so"\nmodparam("auth_db|usrloc", "db_url", "sqlite://x")\n'
              'modparam("tm", "fr_timer", -1)')
    assert s.loadmodules[0].path == "tm.so"
    assert [(m.module, m.name, m.value) for m in s.modparams] == [
        ("auth_db|usrloc", "db_url", "sqlite://x"), ("tm", "fr_timer", -1)]


def test_precedence():
    e = cond("a() || b() && !c() == 1 + 2 * 3")
    assert isinstance(e, ast.BinOp) and e.op == "||"
    assert isinstance(e.right, ast.BinOp) and e.right.op == "&&"
    eq = e.right.right
    assert isinstance(eq, ast.BinOp) and eq.op == "=="
    assert isinstance(eq.left, ast.UnOp) and eq.left.op == "!"
    assert isinstance(eq.right, ast.BinOp) and eq.right.op == "+"
    assert isinstance(eq.right.right, ast.BinOp) and eq.right.right.op == "*"


@pytest.mark.parametrize("text,net", [
    ("src_ip==10.1.1.0/24", "10.1.1.0/24"),
    ("src_ip==::1", "::1/128"),
    ("src_ip==[2001:db8::1]", "2001:db8::1/128"),
    ("src_ip!=192.168.1.25", "192.168.1.25/32"),
    ("src_ip==2001:db8::/32", "2001:db8::/32"),
])
def test_ip_literals(text, net):
    e = cond(text)
    assert isinstance(e, ast.BinOp) and isinstance(e.left, ast.Keyword)
    assert isinstance(e.right, ast.IPNet) and e.right.net == ipaddress.ip_network(net)


@pytest.mark.parametrize("raw,name,inner,index,trs", [
    ("$var(x)", "var", "x", None, ()),
    ("$avp(i:12)", "avp", "i:12", None, ()),
    ("$hdr(Via)[1]", "hdr", "Via", "1", ()),
    ("$sht(a=>$au::auth_count)", "sht", "a=>$au::auth_count", None, ()),
    ("$sht(a->$au::last_auth)", "sht", "a->$au::last_auth", None, ()),
    ("$T_req($fu)", "T_req", "$fu", None, ()),
    ("$(ru{uri.user}{s.len})", "ru", None, None, (("uri.user", ()), ("s.len", ()))),
    ("$(hdr(X)[1])", "hdr", "X", "1", ()),
    ("$(ru{s.substr,1,2})", "ru", None, None, (("s.substr", ("1", "2")),)),
    ("$(ru{s.select,1,,})", "ru", None, None, (("s.select", ("1", ",")),)),
    ("$tls_peer_subject_cn", "tls_peer_subject_cn", None, None, ()),
])
def test_pseudo_variables(raw, name, inner, index, trs):
    st = body(f"{raw} = 1;")[0]
    assert isinstance(st, ast.Assign)
    pv = st.target
    assert (pv.name, pv.inner, pv.index) == (name, inner, index)
    assert tuple((t.name, t.args) for t in pv.transforms) == trs


def test_statements():
    stmts = body("""
    if (method=="INVITE") xlog("x"); else if ($rU) exit; else { drop; }
    switch ($retcode) { case -1: break; case "s": default: exit; }
    while ($var(i) < 3) $var(i) += 1;
    return;
    return $var(i) + 1;
    t_relay;
    route(NAME);
    """)
    kinds = [type(s).__name__ for s in stmts]
    assert kinds == ["If", "Switch", "While", "Return", "Return", "ExprStmt", "ExprStmt"]
    sw = stmts[1]
    assert isinstance(sw, ast.Switch)
    assert [c.value.value if c.value else None for c in sw.cases] == [-1, "s", None]
    assert sw.cases[1].body == ()
    assert isinstance(stmts[6], ast.ExprStmt) and stmts[6].expr.args == (
        ast.Name("NAME", ("t.cfg", 9, 11)),)


def test_null_and_defined_and_keywords():
    e = cond("defined $avp(x) && $var(y) == $null && uri == myself && proto == TLS")
    names = []

    def walk(n: object) -> None:
        names.append(type(n).__name__)
        for attr in ("left", "right", "operand", "pv"):
            if hasattr(n, attr):
                walk(getattr(n, attr))
    walk(e)
    assert {"Defined", "Null", "Keyword", "Int"} <= set(names)


def test_adjacent_strings_concatenate_and_escapes():
    st = body('xlog("a" "b\\n\\t\\"q\\"");')[0]
    assert isinstance(st, ast.ExprStmt)
    assert st.expr.args == (ast.Str('ab\n\t"q"', ("t.cfg", 2, 6)),)


def test_comments():
    s = parse("/* block\n comment */ # line\n// also\nrequest_route { exit; } # end")
    assert len(s.routes) == 1
