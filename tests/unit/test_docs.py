"""The generated reference docs: in sync with the declarations, and built from them."""

from __future__ import annotations

import subprocess
import sys

from ser.core import docs
from ser.core.module import Arg, Function, Module, Param, RouteType, RPCMethod
from ser.core.pv import PVDecl


def _ok(ctx: object, *args: object) -> int:
    return 1


DEMO = Module(
    name="demo",
    doc="A module that exists only in this test.",
    params=(Param("frobnicate_level", int, 7, "How hard to frobnicate."),
            Param("greeting", str, "hello", "", multi=True)),
    functions=(Function("frob", _ok, (Arg("count", "int"), Arg("tag", optional=True)),
                        RouteType.REQUEST | RouteType.FAILURE, doc="Frobnicate the message."),),
    pvs=(PVDecl("frob", lambda ctx, name: None, doc="the last frob"),),
    rpc=(RPCMethod("demo.frobs", _ok, "List the frobs.", ("filter",)),),
)


def test_committed_docs_match_the_declarations():
    problems = docs.drift(docs.generate())
    assert not problems, "docs drifted, run 'make docs':\n" + "\n".join(problems)


def test_a_declared_parameter_shows_up_in_man_page_and_markdown():
    files = docs.generate([DEMO])
    assert set(files) == {"man/ser.cfg.5", "man/modules/demo.md"}
    man, md = files["man/ser.cfg.5"], files["man/modules/demo.md"]
    assert '.SH "MODULE demo"' in man
    assert "\\fBfrobnicate_level\\fR (int, default 7)\nHow hard to frobnicate." in man
    assert "\\fBfrob(count[, tag])\\fR" in man
    assert "Routes: request_route, failure_route." in man
    assert "### `frobnicate_level`\n\nType `int`, default `7`.\n\nHow hard to frobnicate." in md
    assert "Type `str`, default `\"hello\"`, may be repeated." in md
    assert "### `frob(count[, tag])`" in md
    assert "- `$frob`: the last frob" in md
    assert "### `demo.frobs filter`\n\nList the frobs." in md
    assert docs.undocumented([DEMO]) == ["demo: param greeting"]


def test_output_is_deterministic_and_roff_safe():
    first = docs.generate([DEMO])
    assert docs.generate([DEMO]) == first
    for line in first["man/ser.cfg.5"].splitlines():
        assert not line.startswith("'"), line


def test_check_reports_a_drifted_file(tmp_path):
    files = docs.generate([DEMO])
    docs.write(files, tmp_path)
    assert docs.drift(files, tmp_path) == []
    (tmp_path / "man/modules/demo.md").write_text("stale\n")
    (tmp_path / "man/modules/gone.md").write_text("old module\n")
    (tmp_path / "man/ser.cfg.5").unlink()
    assert docs.drift(files, tmp_path) == [
        "man/modules/demo.md: differs", "man/ser.cfg.5: missing",
        "man/modules/gone.md: extra (no such module)"]


def test_check_command_exits_0_when_in_sync():
    r = subprocess.run([sys.executable, "-m", "ser.core.docs", "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
