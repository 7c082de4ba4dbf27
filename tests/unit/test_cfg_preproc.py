"""The preprocessor: defines, conditionals, includes, substitutions, source map."""

from __future__ import annotations

import os

from ser.core.cfg.preproc import parse_cli_defines, preprocess_file, preprocess_text

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "cfg")


def toks(text: str, defines: dict[str, str | None] | None = None) -> list[object]:
    r = preprocess_text(text, "t.cfg", defines)
    assert [str(e) for e in r.errors] == []
    return [t.value for t in r.tokens]


def test_define_replaces_identifier_tokens_not_strings():
    assert toks('#!define N 5\n#!define S "x"\nf(N, "N", S, NN);') == [
        "f", "(", 5, ",", "N", ",", "x", ",", "NN", ")", ";"]


def test_nested_conditionals_and_else():
    text = """#!define A
#!ifdef A
a
#!ifndef B
notb
#!ifdef C
c
#!else
notc
#!endif
#!else
b
#!endif
#!else
nota
#!endif
end
"""
    assert toks(text) == ["a", "notb", "notc", "end"]
    assert toks(text, {"B": None}) == ["a", "b", "end"]
    assert toks(text.replace("#!define A\n", "")) == ["nota", "end"]


def test_disabled_block_may_hold_anything():
    assert toks('#!ifdef NO\n"unterminated\n@@@ }\n#!endif\nx') == ["x"]


def test_bang_bang_spelling_and_markers():
    assert toks("#!KAMAILIO\n!!define X 1\n!!ifdef X\ny X\n!!endif\n!z") == ["y", 1, "!", "z"]


def test_trydef_redefine():
    assert toks("#!define A 1\n#!trydef A 2\n#!trydef B 3\nA B") == [1, 3]
    assert toks("#!define A 1\n#!redefine A 2\nA") == [2]


def test_define_expands_recursively_and_multiline():
    assert toks("#!define A B + 1\n#!define B 2\n#!define M f(A, \\\n  3)\nM") == [
        "f", "(", 2, "+", 1, ",", 3, ")"]


def test_define_expanding_into_itself_is_an_error():
    r = preprocess_text("#!define A A\nA", "t.cfg")
    assert [str(e) for e in r.errors] == ["t.cfg:2:1: define 'A' expands into itself"]


def test_expansion_is_reported_at_use_site():
    r = preprocess_text('#!define CALL f("x")\n\n  CALL', "t.cfg")
    assert {t.pos for t in r.tokens} == {("t.cfg", 3, 3)}
    assert {t.origin for t in r.tokens} == {("t.cfg", 1, 1)}


def test_cli_defines_with_and_without_value():
    defines = parse_cli_defines(["WITH_AUTH", 'DBURL="sqlite://x.db"', "N=3"])
    assert defines == {"WITH_AUTH": None, "DBURL": '"sqlite://x.db"', "N": "3"}
    assert toks("#!ifdef WITH_AUTH\nDBURL N\n#!endif", defines) == ["sqlite://x.db", 3]


def test_subst_rewrites_strings_substdef_also_defines():
    assert toks('#!subst "/HOST/example.com/g"\n"sip:HOST HOST" HOST') == [
        "sip:example.com example.com", "HOST"]
    assert toks('#!substdef "!PORT!5060!"\n"x:PORT" PORT') == ["x:5060", 5060]
    assert toks('#!subst "/HOST/h.example/"\n#!define U "sip:HOST"\nU') == ["sip:h.example"]
    assert toks('#!substdefs "/NAME/srv/"\nNAME') == ["srv"]
    assert toks('#!subst "/a(b)/<\\\\1>/i"\n"AB ab"') == ["<B> ab"]


def test_include_relative_to_including_file_keeps_positions():
    r = preprocess_file(os.path.join(DATA, "main-include.cfg"))
    assert [str(e) for e in r.errors] == []
    by_value = {t.value: t.pos for t in r.tokens if t.kind == "STR"}
    file, line, col = by_value["Keepalive"]
    assert (os.path.basename(file), line, col) == ("checks.cfg", 5, 30)
    file, line, col = by_value["Not here"]
    assert (os.path.basename(file), line, col) == ("main-include.cfg", 8, 25)
    # the define from the main file is expanded at its use, with that position
    code = next(t for t in r.tokens if t.value == 404)
    assert (os.path.basename(code.pos[0]), code.pos[1], code.pos[2]) == ("main-include.cfg", 8, 19)


def test_include_directive_spellings(tmp_path):
    (tmp_path / "a.cfg").write_text("a\n")
    (tmp_path / "m.cfg").write_text('#!include_file "a.cfg"\n!!import_file "a.cfg"\n'
                                    'include_file "a.cfg"\nimport_file "missing.cfg"\n')
    r = preprocess_file(str(tmp_path / "m.cfg"))
    assert [t.value for t in r.tokens] == ["a", "a", "a"]
    assert r.errors == []


def test_include_loop_is_stopped(tmp_path):
    (tmp_path / "loop.cfg").write_text('include_file "loop.cfg"\n')
    r = preprocess_file(str(tmp_path / "loop.cfg"))
    assert [e.message for e in r.errors] == ["includes nested deeper than 10"]


def test_else_twice_and_missing_name():
    r = preprocess_text("#!ifdef A\n#!else\n#!else\n#!endif\n#!ifdef\n#!endif", "t.cfg")
    assert [str(e) for e in r.errors] == [
        "t.cfg:3:1: second #!else for the same #!ifdef",
        "t.cfg:5:1: #!ifdef needs one name"]
