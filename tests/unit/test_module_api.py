"""The module declaration API: loading, modparam checks, fixups, route types."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ser.core.cfg.errors import CfgError
from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.module import (
    Arg,
    FixedArg,
    FixupError,
    Function,
    Module,
    Param,
    RouteType,
    load_module,
    module_name,
)
from ser.core.pv import PVDecl

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.mark.parametrize("spec", ["sl", "sl.so", "/usr/lib/x86_64-linux-gnu/kamailio/modules/sl.so"])
def test_loadmodule_spellings_load_the_same_module(spec):
    assert module_name(spec) == "sl"
    assert load_module(spec, ("t", 1, 1)).name == "sl"


def test_missing_module_is_a_clear_error():
    with pytest.raises(CfgError) as e:
        load_module("dispatcher.so", ("t.cfg", 4, 1))
    assert str(e.value) == "t.cfg:4:1: module 'dispatcher' is not available in ser"


def test_each_shipped_module_has_one_consistent_declaration():
    for name in ("sl", "pv", "xlog", "textops"):
        mod = load_module(name, ("t", 1, 1))
        assert mod.name == name
        fnames = [f.name for f in mod.functions]
        assert len(fnames) == len(set(fnames))
        for f in mod.functions:
            assert f.doc and all(a.kind in ("str", "int", "pv", "const") for a in f.args)


def _count(ctx, n: int, label: str = "") -> int:
    ctx.actions.append(("count", n, label))
    return n


def _positive(args: list[FixedArg]) -> list[FixedArg]:
    if args[0].is_const and args[0].const < 0:
        raise FixupError("must not be negative", 0)
    return args


def _name(inner, index, res):
    if not inner:
        raise ValueError("a name is needed")
    return inner.upper()


DEMO = Module(
    name="demo",
    doc="A module declared by a test.",
    params=(Param("size", int, 4, "Table size.", check=lambda v: None if v > 0 else "must be > 0"),
            Param("mode", (int, str), "a", "Either."),
            Param("old", int, 0, "Ignored.", ignored=True),
            Param("item", str, "", "Repeatable.", multi=True)),
    functions=(Function("count", _count, (Arg("n", "int"), Arg("label", optional=True)),
                        RouteType.REQUEST | RouteType.FAILURE, _positive, "Count."),),
    pvs=(PVDecl("demo", lambda ctx, name: f"<{name}>", parse_name=_name, doc="Demo PV."),),
)


def test_declared_module_params_functions_pvs():
    cfg = check_text('modparam("demo", "size", 8)\nmodparam("demo", "mode", 3)\n'
                     'modparam("demo", "old", 1)\nmodparam("demo", "item", "a")\n'
                     'modparam("demo", "item", "b")\n'
                     'request_route {\n    count("$var(n)", "$demo(x)");\n    count(2);\n}\n',
                     "t.cfg", extra_modules=[DEMO])
    assert [str(e) for e in cfg.errors] == []
    assert cfg.modules["demo"].params == {"size": 8, "mode": 3, "old": 1, "item": ["a", "b"]}
    assert cfg.warnings == ["module parameters without meaning in ser, ignored: demo.old"]
    rt = Runtime()
    rt.vars["n"] = 5
    ctx = Context(None, rt)
    assert cfg.routes.request(ctx) == 1
    assert ctx.actions == [("count", 5, "<X>"), ("count", 2, "")]
    assert ctx.retcode == 2


@pytest.mark.parametrize("text,error", [
    ('modparam("demo", "size", 0)', "t.cfg:1:26: modparam 'demo.size': must be > 0"),
    ('modparam("demo", "size", "8")', "t.cfg:1:26: modparam 'demo.size' needs a number, got a string"),
    ('modparam("demo", "sise", 8)', "t.cfg:1:18: unknown parameter 'sise' of module 'demo' (did you mean 'size'?)"),
    ('modparam("dem[o", "size", 8)', "t.cfg:1:1: bad module name pattern 'dem[o': unterminated character set at position 3"),
    ('request_route {\n    count(-1);\n}', "t.cfg:2:11: count: must not be negative"),
    ('request_route {\n    count("x");\n}', "t.cfg:2:11: argument 1 of 'count' must be a number, got \"x\""),
    ('request_route {\n    count(1, "a", "b");\n}', "t.cfg:2:5: function 'count' takes 1 to 2 arguments, got 3"),
    ('onsend_route {\n    count(1);\n}', "t.cfg:2:5: function 'count' cannot be used in onsend_route"),
    ('request_route {\n    $var(x) = $demo;\n}', "t.cfg:2:15: bad pseudo-variable '$demo': a name is needed"),
])
def test_declaration_checks(text, error):
    cfg = check_text(text, "t.cfg", extra_modules=[DEMO])
    assert [str(e) for e in cfg.errors] == [error]


def test_modparam_module_regex_sets_every_matching_module():
    cfg = check_text('loadmodule "sl"\nloadmodule "xlog"\n'
                     'modparam("sl|xlog", "bind_tm", 0)\nmodparam("x.*", "force_color", 1)\n'
                     'modparam("sl|xlog", "nothere", 0)\n', "t.cfg")
    assert [str(e) for e in cfg.errors] == [
        "t.cfg:5:21: unknown parameter 'nothere' of module 'sl'"]
    assert cfg.modules["sl"].params["bind_tm"] == 0
    assert cfg.modules["xlog"].params["force_color"] == 1


def test_ser_c_ok_and_errors(tmp_path):
    good = tmp_path / "good.cfg"
    good.write_text('loadmodule "sl.so"\nrequest_route {\n    sl_send_reply("200", "OK");\n}\n')
    bad = tmp_path / "bad.cfg"
    bad.write_text('#!ifdef WITH_X\nloadmodule "sl.so"\n#!endif\nrequest_route {\n'
                   '    sl_send_reply("200", "OK");\n    foo(;\n}\n')
    env = dict(os.environ, PYTHONPATH=ROOT)

    def ser(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ser.cli", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path)
    r = ser("-c", "-f", "good.cfg")
    assert (r.returncode, r.stdout, r.stderr) == (0, "config file ok, exiting... (good.cfg)\n", "")
    r = ser("-c", "-f", "bad.cfg")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "bad.cfg:5:5: unknown function 'sl_send_reply'",
        "bad.cfg:6:9: unexpected ';' in expression",
        "ERROR: bad config file (2 errors found)"]
    r = ser("-c", "-A", "WITH_X", "-f", "bad.cfg")
    assert r.stderr.splitlines() == [
        "bad.cfg:6:9: unexpected ';' in expression", "ERROR: bad config file (1 error found)"]
    r = ser("-V")
    assert r.returncode == 0 and r.stdout.startswith("version: ser ")
