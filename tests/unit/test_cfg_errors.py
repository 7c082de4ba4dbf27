"""A broken config gives every error at the right original file:line:col."""

from __future__ import annotations

import os

import pytest

from ser.core.cfg.load import check_config

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "cfg")

HEAD = 'loadmodule "sl.so"\nloadmodule "xlog.so"\n'

# (name, config text, expected errors in order, as printed by ser -c)
CASES = [
    ("unbalanced-brace",
     HEAD + 'request_route {\n    if (1) {\n        exit;\n}\n',
     ["t.cfg:3:15: unbalanced '{': this block is never closed"]),
    ("extra-closing-brace",
     HEAD + 'request_route {\n    exit;\n}\n}\n',
     ["t.cfg:6:1: unbalanced '}': no block is open here"]),
    ("unknown-function",
     HEAD + 'request_route {\n    sl_send_replyy("404", "x");\n}\n',
     ["t.cfg:4:5: unknown function 'sl_send_replyy' (did you mean 'sl_send_reply'?)"]),
    ("unknown-modparam",
     HEAD + 'modparam("sl", "bind_tn", 1)\n',
     ["t.cfg:3:16: unknown parameter 'bind_tn' of module 'sl' (did you mean 'bind_tm'?)"]),
    ("modparam-wrong-type",
     HEAD + 'modparam("sl", "bind_tm", "yes")\n',
     ["t.cfg:3:27: modparam 'sl.bind_tm' needs a number, got a string"]),
    ("wrong-arg-count",
     HEAD + 'request_route {\n    sl_send_reply("404");\n}\n',
     ["t.cfg:4:5: function 'sl_send_reply' takes 2 arguments, got 1"]),
    ("bad-endif",
     HEAD + '#!endif\n',
     ["t.cfg:3:1: #!endif without #!ifdef or #!ifndef"]),
    ("missing-endif",
     HEAD + '#!ifdef X\nchildren=2\n',
     ["t.cfg:3:1: missing #!endif for this #!ifdef"]),
    ("unknown-global",
     HEAD + 'chlidren=4\n',
     ["t.cfg:3:1: unknown global parameter 'chlidren' (did you mean 'children'?)"]),
    ("unterminated-string",
     HEAD + 'request_route {\n    xlog("L_INFO", "oops);\n}\n',
     ["t.cfg:4:20: unterminated string"]),
    ("missing-semicolon",
     HEAD + 'request_route {\n    xlog("a")\n    exit;\n}\n',
     ["t.cfg:4:14: missing ';' before 'exit'"]),
    ("define-expands-into-error",
     HEAD + '#!define REPLY sl_send_reply("404")\nrequest_route {\n    REPLY;\n}\n',
     ["t.cfg:5:5: function 'sl_send_reply' takes 2 arguments, got 1"]),
    ("define-bad-number",
     HEAD + '#!define CODE "abc"\nrequest_route {\n    sl_send_reply(CODE, "x");\n}\n',
     ['t.cfg:5:19: argument 1 of \'sl_send_reply\' must be a number, got "abc"']),
    ("module-not-available",
     HEAD + 'loadmodule "app_lua.so"\n',
     ["t.cfg:3:1: module 'app_lua' is not available in ser"]),
    ("unknown-route",
     HEAD + 'request_route {\n    route(RELAI);\n}\nroute[RELAY] {\n    exit;\n}\n',
     ["t.cfg:4:11: route 'RELAI' is not defined (did you mean 'RELAY'?)"]),
    ("function-in-wrong-route",
     HEAD + 'request_route {\n    exit;\n}\nonreply_route[R] {\n    sl_send_reply("200", "OK");\n}\n',
     ["t.cfg:7:5: function 'sl_send_reply' cannot be used in onreply_route"]),
    ("wrong-route-through-subroute",
     HEAD + 'failure_route[F] {\n    route(R);\n}\nroute[R] {\n    sl_send_reply("200", "OK");\n}\n',
     ["t.cfg:7:5: function 'sl_send_reply' cannot be used in failure_route"]),
    ("unknown-pv",
     HEAD + 'request_route {\n    xlog("from $fuu\\n");\n}\n',
     ["t.cfg:4:10: unknown pseudo-variable '$fuu' (did you mean 'fu'?)"]),
    ("read-only-pv",
     HEAD + 'request_route {\n    $si = "1.2.3.4";\n}\n',
     ["t.cfg:4:5: pseudo-variable '$si' is read-only"]),
    ("bad-transformation",
     HEAD + 'request_route {\n    $var(x) = $(ru{s.lenn});\n}\n',
     ["t.cfg:4:15: unknown transformation '{s.lenn}' (did you mean 's.len'?)"]),
    ("bad-regex",
     HEAD + 'request_route {\n    if ($ru =~ "sip:(") exit;\n}\n',
     ["t.cfg:4:16: bad regular expression: missing ), unterminated subpattern at position 4"]),
    ("bad-log-level",
     HEAD + 'request_route {\n    xlog("L_INFOO", "x");\n}\n',
     ["t.cfg:4:10: xlog: unknown log level 'L_INFOO' (did you mean 'L_INFO'?)"]),
    ("bad-reply-code",
     HEAD + 'request_route {\n    sl_send_reply("99", "x");\n}\n',
     ["t.cfg:4:19: sl_send_reply: bad reply code 99 (100..699)"]),
    ("break-outside",
     HEAD + 'request_route {\n    break;\n}\n',
     ["t.cfg:4:5: 'break' outside of switch or while (use 'return' to leave a route)"]),
    ("bad-bool-global",
     HEAD + 'log_stderror=maybe\n',
     ["t.cfg:3:14: 'log_stderror' needs yes/no/on/off/true/false or a number, found 'maybe'"]),
    ("define-twice",
     '#!define A 1\n#!define A 2\n',
     ["t.cfg:2:10: 'A' is already defined (at t.cfg:1) (use #!redefine or #!trydef)"]),
    ("modparam-unloaded-module",
     HEAD + 'modparam("tm", "fr_timer", 1)\n',
     ["t.cfg:3:1: modparam for module 'tm' which is not loaded"]),
    ("several-errors-at-once",
     HEAD + 'request_route {\n    foo();\n    sl_send_reply("404");\n    $si = 1;\n}\n',
     ["t.cfg:4:5: unknown function 'foo'",
      "t.cfg:5:5: function 'sl_send_reply' takes 2 arguments, got 1",
      "t.cfg:6:5: pseudo-variable '$si' is read-only"]),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_broken_config(tmp_path, monkeypatch, name, text, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.cfg").write_text(text)
    cfg = check_config("t.cfg")
    assert [str(e) for e in cfg.errors] == expected


def test_at_least_15_distinct_mistakes():
    assert len({c[0] for c in CASES}) >= 15


def test_error_in_included_file_names_that_file():
    cfg = check_config(os.path.join(DATA, "main-include-error.cfg"))
    assert [(os.path.basename(e.file), e.line, e.col, e.message) for e in cfg.errors] == [
        ("broken.cfg", 2, 31, "missing ';' before '}'")]
    assert cfg.errors[0].file.endswith(os.path.join("inc", "broken.cfg"))


def test_missing_include_is_an_error_import_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.cfg").write_text('import_file "nope.cfg"\ninclude_file "gone.cfg"\n')
    cfg = check_config("t.cfg")
    assert [str(e) for e in cfg.errors] == ["t.cfg:2:1: included file 'gone.cfg' not found"]
