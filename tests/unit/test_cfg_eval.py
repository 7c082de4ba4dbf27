"""Golden tests of compiled scripts: what a route does with a real message."""

from __future__ import annotations

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import PROTO_TLS, Context, Runtime
from ser.core.parser import parse_message

INVITE = (
    b"INVITE sip:0049301234@example.com:5080;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhdt\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"Alice A\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"User-Agent: test-ua/1.0\r\n"
    b"Contact: <sip:alice@10.0.0.1>\r\n"
    b"Content-Length: 0\r\n\r\n")

HEAD = 'loadmodule "sl.so"\nloadmodule "pv.so"\nloadmodule "textops.so"\n' \
       'loadmodule "xlog.so"\nalias="example.com"\nlisten=udp:127.0.0.1:5080\n'


def run(body: str, src_ip: str = "10.1.1.10", proto: int = 1, raw: bytes = INVITE,
        routes: str = "", rt: Runtime | None = None) -> tuple[Context, int]:
    cfg = check_text(HEAD + "request_route {\n" + body + "\n}\n" + routes, "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    assert cfg.routes is not None
    rt = rt or Runtime(cfg.settings, cfg.modules)
    ctx = Context(parse_message(raw), rt, src_ip=src_ip, src_port=5062, proto=proto)
    rc = cfg.routes.request(ctx)
    return ctx, rc


def replies(ctx: Context) -> list[tuple[object, ...]]:
    return [a for a in ctx.actions if a[0] == "reply"]


@pytest.mark.parametrize("expr,expected", [
    ("1 + 2 * 3 == 7", True),
    ("(1 + 2) * 3 == 9", True),
    ("10 / 3 == 3 && 10 % 3 == 1", True),
    ("5 / 0 == 0", True),
    ("(6 | 1) == 7 && (6 & 3) == 2 && (6 ^ 3) == 5 && ~0 == -1", True),
    ("-3 < 2", True),
    ('"abc" + "def" == "abcdef"', True),
    ('"b" > "a" && "a" <= "a"', True),
    ('$rm == "INVITE" && method == "invite"', True),
    ('$rm != "INVITE"', False),
    ('$ru =~ "^sip:00[1-9][0-9]+@.*"', True),
    ('uri =~ "EXAMPLE\\.COM"', True),
    ('$fu !~ "atlanta"', False),
    ("!(1 == 1) || 2 == 2", True),
    ('$var(unset) == 0', True),
    ('$avp(nothing) == $null', True),
    ("defined $avp(nothing)", False),
    ("defined $ru", True),
    ('$fn == "Alice A" && $ft == "1928301774" && $fU == "alice"', True),
    ('$tU == "bob" && $td == "biloxi.example.com" && $tt == $null', True),
    ('$rU == "0049301234" && $rd == "example.com" && $rp == 5080', True),
    ('$ci == "a84b4c76e66710" && $cs == 314159 && $ua == "test-ua/1.0"', True),
    ('$hdr(Via)[1] =~ "10.0.0.2" && $hdr(Max-Forwards) == "70"', True),
    ('$si == "10.1.1.10" && $sp == 5062 && $pr == "udp"', True),
    ("$mt == 1 && $ml > 100", True),
    ("uri == myself", True),
    ("from_uri == myself", False),
    ("status == 0 || 1", True),
    ('"010" == 10', False),     # a string on the left: compared as strings
    ('10 == "010"', True),      # a number on the left: compared as numbers
])
def test_expression(expr, expected):
    ctx, _ = run(f"if ({expr}) {{ $var(r) = 1; }} else {{ $var(r) = 2; }}")
    assert ctx.rt.vars["r"] == (1 if expected else 2)


@pytest.mark.parametrize("src,cond,expected", [
    ("10.1.1.10", "src_ip == 10.1.1.10", True),
    ("10.1.1.11", "src_ip == 10.1.1.10", False),
    ("10.1.1.200", "src_ip == 10.1.1.0/24", True),
    ("10.1.2.1", "src_ip == 10.1.1.0/24", False),
    ("192.168.1.25", "src_ip != 192.168.1.25", False),
    ("2001:db8::1", "src_ip == [2001:db8::1]", True),
    ("2001:db8::1", "src_ip == 2001:db8::/32", True),
    ("2001:db9::1", "src_ip == 2001:db8::/32", False),
    ("::1", "src_ip == ::1", True),
    ("::1", "af == INET6", True),
    ("10.1.1.10", "af == INET", True),
    ("2001:db8::1", '$si == 2001:db8::/64', True),
    ("10.1.1.10", 'src_ip == "10.1.1.10"', True),
    ("10.9.9.9", "src_ip == 0.0.0.0/0", True),
    ("::1", "src_ip == 0.0.0.0/0", False),       # an IPv6 source is in no IPv4 network
    ("::ffff:10.1.1.1", "src_ip == 10.1.1.0/24", False),
    ("127.0.0.1", "src_ip == myself", True),
])
def test_src_ip_matching(src, cond, expected):
    ctx, _ = run(f"if ({cond}) $var(r) = 1; else $var(r) = 2;", src_ip=src)
    assert ctx.rt.vars["r"] == (1 if expected else 2)


def test_proto_keyword():
    ctx, _ = run('if (proto == TLS) sl_send_reply("200", "tls");', proto=PROTO_TLS)
    assert replies(ctx) == [("reply", 200, "tls")]
    ctx, _ = run('if (proto == TLS) sl_send_reply("200", "tls");')
    assert replies(ctx) == []


def test_switch_fall_through_on_ints_and_strings():
    body = """
    $var(out) = "";
    switch ($var(k)) {
        case 1: $var(out) = $var(out) + "a";
        case 2: $var(out) = $var(out) + "b"; break;
        case "x": $var(out) = $var(out) + "x";
        default: $var(out) = $var(out) + "d";
    }
    """
    rt = Runtime()
    for k, want in ((1, "ab"), (2, "b"), ("x", "xd"), (7, "d"), ("2", "b")):
        rt.vars["k"] = k
        ctx, _ = run(body, rt=rt)
        assert rt.vars["out"] == want, k


def test_retcode_flow_as_in_the_seed():
    body = """
    route(AUTH);
    switch ($retcode) {
        case -1: sl_send_reply("403", "Forbidden"); exit;
        case -2: $var(failed) = $var(failed) + 1; break;
    }
    $var(rc) = $rc;
    sl_send_reply("401", "Unauthorized");
    """
    routes = 'route[AUTH] {\n    return $var(code);\n}\n'
    rt = Runtime()
    rt.vars["code"] = -1
    ctx, rc = run(body, routes=routes, rt=rt)
    assert (replies(ctx), rc) == ([("reply", 403, "Forbidden")], 0)
    rt.vars["code"] = -2
    ctx, rc = run(body, routes=routes, rt=rt)
    assert replies(ctx) == [("reply", 401, "Unauthorized")]
    assert rt.vars["failed"] == 1 and rt.vars["rc"] == -2


def test_return_zero_and_function_zero_stop_the_script():
    ctx, rc = run('route(Z); sl_send_reply("200", "not reached");',
                  routes="route[Z] {\n    return 0;\n}\n")
    assert (replies(ctx), rc) == ([], 0)


def test_negative_return_is_false_positive_true():
    ctx, _ = run('if (route(N)) $var(a) = 1; else $var(a) = 2;\n'
                 'if (!route(P)) $var(b) = 1; else $var(b) = 2;',
                 routes="route[N] {\n    return -5;\n}\nroute[P] {\n    return 3;\n}\n")
    assert (ctx.rt.vars["a"], ctx.rt.vars["b"]) == (2, 2)
    assert ctx.retcode == 3


def test_retcode_of_a_call_inside_an_expression():
    ctx, _ = run("if (1 == 1 && route(N)) $var(a) = 1; $var(rc) = $rc;",
                 routes="route[N] {\n    return -5;\n}\n")
    assert (ctx.rt.vars["rc"], ctx.rt.vars.get("a")) == (-5, None)


def test_exit_drop_and_while():
    ctx, rc = run("$var(i) = 0; while ($var(i) < 5) { $var(i) = $var(i) + 1; "
                  "if ($var(i) == 3) break; } drop;")
    assert (ctx.rt.vars["i"], ctx.dropped, rc) == (3, True, 0)


def test_pv_in_string_arguments_formatted_at_run_time():
    ctx, _ = run('$var(who) = "carol"; sl_send_reply("404", "no $var(who) from $fU at $si:$sp $avp(x)");')
    assert replies(ctx) == [("reply", 404, "no carol from alice at 10.1.1.10:5062 <null>")]
    # the same compiled route, another value: formatted per call, not at load
    ctx2, _ = run('$var(who) = $rU; sl_send_reply("404", "no $var(who)");')
    assert replies(ctx2) == [("reply", 404, "no 0049301234")]


def test_escaped_dollar_is_literal():
    ctx, _ = run('sl_send_reply("404", "cost \\$5");')
    assert replies(ctx) == [("reply", 404, "cost $5")]


@pytest.mark.parametrize("tr,expected", [
    ("$(ru{uri.user})", "0049301234"),
    ("$(ru{uri.host})", "example.com"),
    ("$(ru{uri.port})", "5080"),
    ("$(ru{uri.param,transport})", "udp"),
    ("$(ru{uri.user}{s.len})", 10),
    ("$(ru{uri.user}{s.substr,2,3})", "493"),
    ("$(ru{uri.user}{s.substr,2,0})", "49301234"),
    ("$(ru{uri.user}{s.strip,4})", "301234"),
    ("$(ru{uri.user}{s.int})", 49301234),
    ("$(hdr(From){nameaddr.name})", "Alice A"),
    ("$(hdr(From){nameaddr.uri}{uri.user}{s.toupper})", "ALICE"),
    ("$(hdr(From){param.value,tag})", "1928301774"),
    ("$(fu{s.tolower}{s.replace,alice,eve})", "sip:eve@atlanta.example.com"),
    ("$(ci{s.md5})", "0b3c6ae5eacb2c3d3f2a6f33e3c8f9b4"),
    ("$(hdr(Via)[1]{s.select,1,;})", "branch=z9hG4bK776asdhdt"),
])
def test_transformations(tr, expected):
    if tr == "$(ci{s.md5})":
        import hashlib
        expected = hashlib.md5(b"a84b4c76e66710").hexdigest()
    ctx, _ = run(f"$var(t) = {tr};")
    assert ctx.rt.vars["t"] == expected


def test_writable_pvs_and_flags():
    ctx, _ = run('$rU = "bob"; $rd = "b.example.org"; $du = "sip:10.0.0.9:5070";'
                 'setflag(3); if (isflagset(3)) $var(f) = $mf; resetflag(3);'
                 '$avp(i:12) = "x"; $avp(s:n) = 2; $shv(total) = 7;')
    assert ctx.ruri == "sip:bob@b.example.org:5080;transport=udp"
    assert ctx.dst_uri == "sip:10.0.0.9:5070"
    assert (ctx.rt.vars["f"], ctx.flags) == (8, 0)
    assert ctx.avps == {"i:12": ["x"], "n": [2]}
    assert ctx.rt.shv["total"] == 7


def test_textops_and_core_functions():
    ctx, _ = run('if (is_method("REGISTER|INVITE") && is_present_hf("User-Agent") '
                 '&& !is_present_hf("X-None")) { force_rport(); forward("10.0.0.5", 5070); }')
    assert ctx.options == {"force_rport": True}
    assert ctx.actions == [("forward", "10.0.0.5", 5070)]


def test_routes_compile_once_and_run_many_times():
    cfg = check_text(HEAD + 'request_route {\n $var(n) = $var(n) + 1;\n}\n', "t.cfg")
    assert cfg.routes is not None
    rt = Runtime()
    msg = parse_message(INVITE)
    for _ in range(3):
        cfg.routes.request(Context(msg, rt))
    assert rt.vars["n"] == 3


def test_cfg_pv_line_file_route():
    # request_route starts on line 7 of t.cfg (HEAD has 6 lines)
    body = ('$var(a) = $cfg(line);\n'
            '$var(f) = $cfg(name) + "|" + $cfg(file);\n'
            '$var(r) = $cfg(route);\n'
            'xlog("at $cfg(line) in $cfg(route)\\n"); $var(s) = $(cfg(line){s.int}) + 1;\n'
            'route(SUB);')
    ctx, _ = run(body, routes='route[SUB] {\n\n    $var(b) = $cfg(line) + 0;\n'
                 '    $var(rs) = $cfg(route);\n}\n')
    v = ctx.rt.vars
    assert v["a"] == 8 and isinstance(v["a"], int)
    assert v["f"] == "t.cfg|t.cfg"
    assert v["r"] == "DEFAULT_ROUTE"
    assert v["s"] == 12
    assert v["b"] == 16 and v["rs"] == "SUB"


@pytest.mark.parametrize("kind,expected", [
    ("failure_route[F]", "F"), ("branch_route[B]", "B"), ("onreply_route", "DEFAULT_ONREPLY"),
    ("event_route[xhttp:request]", "xhttp:request"),
])
def test_cfg_pv_route_names(kind, expected):
    from ser.core.cfg.compile import _cfg_route_name
    name = kind.partition("[")[2].rstrip("]")
    assert _cfg_route_name(kind.split("_")[0], name) == expected


@pytest.mark.parametrize("pv", ["$cfg(lines)", "$cfg", "$cfg(line)[1]"])
def test_cfg_pv_bad_name(pv):
    cfg = check_text(HEAD + f"request_route {{\n $var(x) = {pv};\n}}\n", "t.cfg")
    assert any("cfg" in str(e) and "t.cfg:8:" in str(e) for e in cfg.errors), cfg.errors
