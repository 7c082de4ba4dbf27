"""textops, textopsx, kex, corex, counters, cfg_rpc and ctl through a real config
and the wire: what the next hop receives (the script forwards to a UDP socket
of the test) and what the client gets back (reply code, append_to_reply
headers)."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest

from tests.integration.conftest import BASE_CFG, SER, free_port, sip_options, udp_exchange

pytestmark = pytest.mark.integration

MODULES = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{port} name "main"
listen=udp:127.0.0.1:@PORT2@

loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "textopsx.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "counters.so"
loadmodule "cfg_rpc.so"
loadmodule "ctl.so"
loadmodule "jsonrpcs.so"

modparam("counters", "script_counter", "reqs requests seen")
modparam("counters", "script_counter", "test.fwd:forwarded requests")
modparam("ctl", "binrpc", "unix:/run/kamailio/kamailio_ctl")
modparam("ctl", "binrpc_max_body_size", 64)
"""


def request(method: str, user: str, port: int, extra: str = "", body: str = "",
            branch: str = "z9hG4bKcm1") -> bytes:
    ctype = "Content-Type: text/plain\r\n" if body else ""
    return (f"{method} sip:{user}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:tester@127.0.0.1>;tag=t1\r\n"
            f"To: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {branch}@127.0.0.1\r\n"
            f"CSeq: 1 {method}\r\n{extra}{ctype}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


class Hop:
    """The next hop: a UDP socket of the test that the script forwards to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)
        self.port = self.sock.getsockname()[1]

    def recv(self) -> tuple[str, tuple[str, int]]:
        data, addr = self.sock.recvfrom(65535)
        return data.decode(), addr

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hop():
    h = Hop()
    yield h
    h.close()


def start(ser_factory, routes: str, hop: Hop | None = None, **subst: str):
    port2 = free_port()
    text = (MODULES + routes).replace("@PORT2@", str(port2))
    text = text.replace("@HOP@", str(hop.port if hop is not None else 9))
    for k, v in subst.items():
        text = text.replace(f"@{k}@", v)
    ser = ser_factory(braces(text))
    ser.port2 = port2
    return ser


def braces(text: str) -> str:
    """Escape a config for ser_factory's str.format, keeping {port}."""
    return text.replace("{", "{{").replace("}", "}}").replace("{{port}}", "{port}")


def send(data: bytes, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(data, ("127.0.0.1", port))
    finally:
        s.close()


def headers_of(text: str) -> list[str]:
    return text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]


CHECKS = r"""
request_route {
    cnt_inc("reqs");
    if (is_method("ACK")) { exit; }
    if (is_method("INVITE|OPTIONS")) { append_to_reply("R-Method: yes\r\n"); }
    if (!is_method("INVITE|BYE")) { append_to_reply("R-NotMethod: yes\r\n"); }
    if (is_present_hf("x-present")) { append_to_reply("R-Present: yes\r\n"); }
    if (!is_present_hf("X-Absent")) { append_to_reply("R-Absent: yes\r\n"); }
    if (is_present_hf_re("^P-Asserted")) { append_to_reply("R-Re: yes\r\n"); }
    if (!is_present_hf_re("^Q-")) { append_to_reply("R-NotRe: yes\r\n"); }
    if (search("hello world [[:digit:]]+")) { append_to_reply("R-Search: yes\r\n"); }
    if (!search("no such text")) { append_to_reply("R-NotSearch: yes\r\n"); }
    if (search_body("^hello")) { append_to_reply("R-SearchBody: yes\r\n"); }
    if (!search_body("^Call-ID")) { append_to_reply("R-NotSearchBody: yes\r\n"); }
    if (has_body()) { append_to_reply("R-Body: yes\r\n"); }
    if (has_body("text/plain")) { append_to_reply("R-BodyType: yes\r\n"); }
    if (!has_body("application/sdp")) { append_to_reply("R-NotSdp: yes\r\n"); }
    if (is_privacy("header")) { append_to_reply("R-Privacy: yes\r\n"); }
    if (!is_privacy("user")) { append_to_reply("R-NotPrivacy: yes\r\n"); }
    if (in_list("fi", "dk,fi,no", ",")) { append_to_reply("R-InList: yes\r\n"); }
    if (!in_list("f", "dk,fi,no", ",")) { append_to_reply("R-NotInList: yes\r\n"); }
    if (cmp_str("$rU", "check")) { append_to_reply("R-Cmp: yes\r\n"); }
    if (!cmp_str("$rU", "Check")) { append_to_reply("R-NotCmp: yes\r\n"); }
    if (starts_with("$fu", "sip:tester")) { append_to_reply("R-Starts: yes\r\n"); }
    if (!starts_with("$fu", "sip:other")) { append_to_reply("R-NotStarts: yes\r\n"); }
    if (fnmatch("$rU", "ch*")) { append_to_reply("R-Fnmatch: yes\r\n"); }
    if (fnmatch("$rU", "CH?CK", "i")) { append_to_reply("R-FnmatchI: yes\r\n"); }
    if (!fnmatch("$rU", "CH?CK")) { append_to_reply("R-NotFnmatch: yes\r\n"); }
    if (is_socket_name("main")) { append_to_reply("R-SockName: yes\r\n"); }
    if (!is_socket_name("nope")) { append_to_reply("R-NotSockName: yes\r\n"); }
    if (is_myself("sip:x@127.0.0.1:{port}")) { append_to_reply("R-Myself: yes\r\n"); }
    if (!is_myself("sip:x@192.0.2.9")) { append_to_reply("R-NotMyself: yes\r\n"); }
    if (file_read("@FILE@", "$var(f)")) { append_to_reply("R-File: $var(f)\r\n"); }
    if (!file_read("@FILE@.missing", "$var(g)")) { append_to_reply("R-NoFile: yes\r\n"); }
    pv_printf("$var(p)", "u=$rU");
    append_to_reply("R-Printf: $var(p)\r\n");
    if (km_append_branch("sip:other@192.0.2.1")) { append_to_reply("R-Branch: yes\r\n"); }
    sl_send_reply("200", "Checked");
}
"""

EXPECTED = ("Method", "NotMethod", "Present", "Absent", "Re", "NotRe", "Search", "NotSearch",
            "SearchBody", "NotSearchBody", "Body", "BodyType", "NotSdp", "Privacy",
            "NotPrivacy", "InList", "NotInList", "Cmp", "NotCmp", "Starts", "NotStarts",
            "Fnmatch", "FnmatchI", "NotFnmatch", "SockName", "NotSockName", "Myself",
            "NotMyself", "NoFile", "Branch")


def test_conditions_answer_with_append_to_reply_headers(ser_factory, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("from-a-file")
    ser = start(ser_factory, CHECKS, FILE=str(data))
    req = request("OPTIONS", "check", ser.port,
                  "X-Present: 1\r\nP-Asserted-Identity: <sip:a@b>\r\nPrivacy: id;header\r\n",
                  "hello world 123\r\n")
    raw = udp_exchange(req, ser.port)
    assert raw is not None, ser.logtext()
    reply = raw.decode()
    assert reply.startswith("SIP/2.0 200 Checked\r\n"), reply
    hdrs = headers_of(reply)
    missing = [n for n in EXPECTED if f"R-{n}: yes" not in hdrs]
    assert not missing, reply
    assert "R-File: from-a-file" in hdrs
    assert "R-Printf: u=check" in hdrs
    # the same script, the opposite answers
    req = request("BYE", "check", ser.port)
    reply = udp_exchange(req, ser.port).decode()
    hdrs = headers_of(reply)
    for name in ("Method", "NotMethod", "Present", "Re", "Search", "Body", "Privacy"):
        assert f"R-{name}: yes" not in hdrs, (name, reply)
    assert "R-Absent: yes" in hdrs and "R-NotPrivacy: yes" in hdrs


HEADERS = r"""
request_route {
    if (is_method("ACK")) { exit; }
    if ($rU == "hf") {
        remove_hf("X-Drop");
        remove_hf_re("^X-Re-");
        append_hf("X-App: 1\r\n");
        append_hf("X-After-Callid: $rm\r\n", "Call-ID");
        insert_hf("X-First: 1\r\n");
        insert_hf("X-Before-CSeq: 1\r\n", "CSeq");
        if (!remove_hf("X-Never")) { append_hf("X-Remove-False: 1\r\n"); }
        cnt_add("test.fwd", 5);
        forward("127.0.0.1", "@HOP@");
        exit;
    }
    if ($rU == "text") {
        replace("old subject", "new subject");
        replace_all("aaa", "bbb");
        search_append("^Subject: new subject", " (appended)");
        subst('/^User-Agent: (.*)$/User-Agent: UA-\1/');
        subst_body('/hello ([0-9]+)/bye \1/');
        subst_uri('/^sip:text@(.*)$/sip:text2@\1/');
        subst_user('/^text2$/texted/');
        forward("127.0.0.1", "@HOP@");
        exit;
    }
    if ($rU == "keep") {
        keep_hf("^X-Keep");
        remove_body();
        forward("127.0.0.1", "@HOP@");
        exit;
    }
    if ($rU == "apply") {
        append_hf("X-Added: yes\r\n");
        if (is_present_hf("X-Added")) { append_to_reply("R-Before: seen\r\n"); }
        msg_apply_changes();
        if (is_present_hf("X-Added")) { append_to_reply("R-After: seen\r\n"); }
        sl_send_reply("200", "Applied");
        exit;
    }
    if ($rU == "raw") {
        send_udp("127.0.0.1:@HOP@");
        set_send_socket("udp:127.0.0.1:@PORT2@");
        send_udp("127.0.0.1:@HOP@");
        exit;
    }
    if ($rU == "fwdsock") {
        set_send_socket("udp:127.0.0.1:@PORT2@");
        forward("127.0.0.1", "@HOP@");
        exit;
    }
    if ($rU == "recv") {
        set_recv_socket("udp:127.0.0.1:@PORT2@");
        sl_send_reply("200", "Moved");
        exit;
    }
    sl_send_reply("404", "Not Here");
}
"""


def test_header_functions_on_the_forwarded_request(ser_factory, hop):
    ser = start(ser_factory, HEADERS, hop)
    extra = ("X-Drop: 1\r\n"
             "x-drop  : 2\r\n"          # CVE-2020-28361: other case, space before colon
             "X-DROP\t: 3\r\n"
             "X-Re-One: a\r\n"
             "X-Re-Two: b\r\n"
             "X-Keep: k\r\n")
    send(request("MESSAGE", "hf", ser.port, extra), ser.port)
    fwd, _ = hop.recv()
    lines = headers_of(fwd)
    assert not [ln for ln in lines if ln.lower().startswith("x-drop")], fwd
    assert not [ln for ln in lines if ln.startswith("X-Re-")], fwd
    assert "X-Keep: k" in lines and "X-App: 1" in lines and "X-Remove-False: 1" in lines
    names = [ln.split(":", 1)[0] for ln in lines]
    assert names[names.index("Call-ID") + 1] == "X-After-Callid"
    assert lines[names.index("X-After-Callid")] == "X-After-Callid: MESSAGE"
    assert names[names.index("CSeq") - 1] == "X-Before-CSeq"
    # before every header received; forward() re-adds the previous hop's Via on top
    # (with received/rport), so the Vias come first
    assert names.index("X-First") < names.index("Max-Forwards")
    assert names[:2] == ["Via", "Via"] and names.count("Via") == 2, fwd
    assert fwd.endswith("Content-Length: 0\r\n\r\n")
    assert ser.rpc("cnt.get", "test", "fwd") == 5


def test_regex_and_substitutions_on_the_forwarded_request(ser_factory, hop):
    ser = start(ser_factory, HEADERS, hop)
    body = "o=hello 123\r\nline aaa aaa\r\n"
    send(request("MESSAGE", "text", ser.port,
                 "Subject: old subject\r\nUser-Agent: phone\r\n", body), ser.port)
    fwd, _ = hop.recv()
    first, rest = fwd.split("\r\n", 1)
    assert first == f"MESSAGE sip:texted@127.0.0.1:{ser.port} SIP/2.0"
    lines = headers_of(fwd)
    assert "Subject: new subject (appended)" in lines, fwd
    assert "User-Agent: UA-phone" in lines
    new_body = "o=bye 123\r\nline bbb bbb\r\n"
    assert fwd.endswith("\r\n\r\n" + new_body), fwd
    assert f"Content-Length: {len(new_body)}" in lines


def test_keep_hf_and_remove_body(ser_factory, hop):
    ser = start(ser_factory, HEADERS, hop)
    send(request("MESSAGE", "keep", ser.port, "X-Keep-Me: 1\r\nX-Other: 2\r\nSubject: s\r\n",
                 "some body"), ser.port)
    fwd, _ = hop.recv()
    names = [ln.split(":", 1)[0] for ln in headers_of(fwd)]
    assert "X-Keep-Me" in names and "X-Other" not in names and "Subject" not in names
    for kept in ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type"):
        assert kept in names, fwd
    assert fwd.endswith("Content-Length: 0\r\n\r\n"), fwd


def test_msg_apply_changes_makes_edits_readable(ser_factory):
    ser = start(ser_factory, HEADERS)
    reply = udp_exchange(request("OPTIONS", "apply", ser.port), ser.port).decode()
    assert reply.startswith("SIP/2.0 200 Applied\r\n"), reply
    hdrs = headers_of(reply)
    assert "R-After: seen" in hdrs and "R-Before: seen" not in hdrs


def test_send_udp_sends_the_received_message_from_the_chosen_socket(ser_factory, hop):
    ser = start(ser_factory, HEADERS, hop)
    req = request("MESSAGE", "raw", ser.port, "X-Mark: 1\r\n", "payload")
    send(req, ser.port)
    first, addr1 = hop.recv()
    second, addr2 = hop.recv()
    assert first.encode() == req and second.encode() == req     # unchanged, no Via added
    assert addr1 == ("127.0.0.1", ser.port)
    assert addr2 == ("127.0.0.1", ser.port2)                    # set_send_socket


def test_forward_leaves_from_the_socket_set_send_socket_chose(ser_factory, hop):
    ser = start(ser_factory, HEADERS, hop)
    send(request("MESSAGE", "fwdsock", ser.port, "", "x"), ser.port)
    got, addr = hop.recv()
    assert addr == ("127.0.0.1", ser.port2)
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{ser.port2};branch=" in got


def test_set_recv_socket_moves_the_reply_to_the_other_socket(ser_factory):
    ser = start(ser_factory, HEADERS)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3.0)
        s.sendto(request("OPTIONS", "recv", ser.port), ("127.0.0.1", ser.port))
        data, addr = s.recvfrom(65535)
    finally:
        s.close()
    assert data.startswith(b"SIP/2.0 200 Moved\r\n")
    assert addr == ("127.0.0.1", ser.port2)


DEBUG = r"""
request_route {
    cnt_inc("reqs");
    if ($rU == "local") {
        setdebug(3);
        xlog("L_DBG", "dbg-local-visible-$ci\n");
        resetdebug();
        xlog("L_DBG", "dbg-local-hidden-$ci\n");
    }
    if ($rU == "reset") { cnt_reset("reqs"); }
    xlog("L_DBG", "dbg-shared-$ci\n");
    sl_send_reply("200", "OK");
}
"""


def _ask(ser, user: str, n: int, tag: str) -> None:
    """n requests from n source ports, so that every worker sees some."""
    for i in range(n):
        raw = udp_exchange(request("OPTIONS", user, ser.port, branch=f"z9hG4bK{tag}{i}"),
                           ser.port)
        assert raw is not None and raw.startswith(b"SIP/2.0 200 "), ser.logtext()


def _wait_log(ser, pattern: str, count: int, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ser.logtext()
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.05)
    return ser.logtext()


def test_setdebug_resetdebug_and_cfg_debug_in_every_process(ser_factory):
    ser = start(ser_factory, DEBUG)
    _ask(ser, "local", 1, "loc")
    text = _wait_log(ser, "dbg-local-visible-z9hG4bKloc0", 1)
    assert "dbg-local-visible-z9hG4bKloc0" in text
    assert "dbg-local-hidden" not in text and "dbg-shared" not in text

    assert ser.rpc("cfg.get", "core", "debug") == 2
    assert "core: debug" in ser.rpc("cfg.list")
    assert ser.rpc("cfg.seti", "core", "debug", 3) == 0
    assert ser.rpc("cfg.get", "core") == {"debug": 3}
    _ask(ser, "all", 8, "up")
    text = _wait_log(ser, r"dbg-shared-z9hG4bKup\d", 8)
    assert len(set(re.findall(r"dbg-shared-(z9hG4bKup\d)", text))) == 8, text
    pids = set(re.findall(r"(\d+)/udp\d+ DEBUG: dbg-shared", text))
    assert len(pids) == 2, text                                  # both workers
    assert ser.rpc("cfg.sets", "core", "debug", "2") == 0
    _ask(ser, "all", 8, "down")
    assert "dbg-shared-z9hG4bKdown" not in _wait_log(ser, "dbg-shared-z9hG4bKdown", 1, 0.5)


def _tcp_options(port: int, branch: str) -> bytes:
    """One OPTIONS on a new TCP connection; the reply (or b"")."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(request("OPTIONS", "all", port, branch=branch)
                  .replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
    return data


def test_cfg_debug_reaches_the_tcp_workers(ser_factory):
    """The SIGUSR2 handler only records; a TCP worker applies the new level
    in its loop, before the next message it reads."""
    text = (MODULES + DEBUG).replace("children=2\n", "children=2\ntcp_children=2\n"
                                     "listen=tcp:127.0.0.1:{port}\n", 1)
    ser = ser_factory(braces(text.replace("@PORT2@", str(free_port()))))
    assert _tcp_options(ser.port, "z9hG4bKtcpbefore").startswith(b"SIP/2.0 200")
    assert ser.rpc("cfg.seti", "core", "debug", 3) == 0
    for i in range(6):
        assert _tcp_options(ser.port, f"z9hG4bKtcpup{i}").startswith(b"SIP/2.0 200")
    text = _wait_log(ser, r"tcp\d+ DEBUG: dbg-shared-z9hG4bKtcpup\d", 6)
    assert len(set(re.findall(r"dbg-shared-(z9hG4bKtcpup\d)", text))) == 6, text
    assert "dbg-shared-z9hG4bKtcpbefore" not in text
    assert ser.rpc("cfg.seti", "core", "debug", 2) == 0
    assert _tcp_options(ser.port, "z9hG4bKtcpdown").startswith(b"SIP/2.0 200")
    assert "dbg-shared-z9hG4bKtcpdown" not in _wait_log(ser, "dbg-shared-z9hG4bKtcpdown", 1, 0.5)


def test_counters_and_their_rpc(ser_factory):
    ser = start(ser_factory, DEBUG)
    _ask(ser, "x", 3, "cnt")
    assert ser.rpc("cnt.get", "script", "reqs") == 3
    assert "script:reqs = 3" in ser.rpc("stats.get_statistics", "script:")
    assert ser.rpc("cnt.grp_get_all", "test") == {"fwd": 0}
    assert {"script", "test", "core"} <= set(ser.rpc("cnt.list_groups"))
    assert ser.rpc("cnt.list_vars", "script") == ["reqs"]
    assert ser.rpc("cnt.help", "script", "reqs") == "requests seen"
    ser.rpc("cnt.reset", "script", "reqs")
    assert ser.rpc("cnt.get", "script", "reqs") == 0
    _ask(ser, "x", 2, "cnt2")
    _ask(ser, "reset", 1, "cnt3")         # cnt_inc, then cnt_reset in the script
    assert ser.rpc("cnt.get", "script", "reqs") == 0
    _ask(ser, "x", 1, "cnt4")
    assert ser.rpc("cnt.get", "script", "reqs") == 1


def test_kex_corex_rpc_and_ctl_warning(ser_factory):
    ser = start(ser_factory, DEBUG)
    _ask(ser, "x", 1, "rpc")
    rows = ser.rpc("pkg.stats")
    assert {r["pid"] for r in rows} >= {ser.pid, *ser.children()}
    assert all(r["used"] > 0 for r in rows)
    assert [r["pid"] for r in ser.rpc("pkg.stats", "pid", ser.pid)] == [ser.pid]
    mods = ser.rpc("mod.stats", "all", "all")
    assert {m["module"] for m in mods} >= {"core", "kex", "textops"}
    assert "kex" in ser.rpc("core.modules")
    assert "script:reqs = 1" in ser.rpc("stats.clear_statistics", "script:")
    assert ser.rpc("cnt.get", "script", "reqs") == 0
    socks = ser.rpc("corex.list_sockets")
    assert {(s["PORT"], s["NAME"]) for s in socks} == {(ser.port, "main"), (ser.port2, "")}
    assert "127.0.0.1" in ser.rpc("corex.list_aliases")
    # core methods keep working with kex loaded
    assert ser.rpc("core.uptime")["uptime"] >= 0
    assert len(ser.rpc("core.ps")) == len(ser.children()) + 1
    log = ser.logtext()
    assert len(re.findall(r"WARNING: ctl: binrpc \(kamcmd\) is not available", log)) == 1, log


def test_ser_c_accepts_the_modules(tmp_path):
    cfg = tmp_path / "ser.cfg"
    cfg.write_text(braces((MODULES + HEADERS).replace("@PORT2@", "5070")
                          .replace("@HOP@", "5080")).format(port=5060))
    out = subprocess.run([SER, "-c", "-f", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    bad = cfg.read_text().replace('remove_hf_re("^X-Re-")', 'remove_hf_re("([")')
    cfg.write_text(bad)
    out = subprocess.run([SER, "-c", "-f", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "bad regular expression" in out.stderr, out.stderr


CFG_PV_CFG = BASE_CFG.replace('''        sl_send_reply("200", "OK");''', '''        route(PING);
        xlog("L_INFO", "cfgpv-main line=$cfg(line) route=$cfg(route) file=$cfg(file)\\n");
        sl_send_reply("200", "OK");''') + '''
route[PING] {{
    xlog("L_INFO", "cfgpv-sub line=$cfg(line) route=$cfg(route)\\n");
}}
'''


def test_cfg_pv_gives_the_line_of_the_xlog(ser_factory):
    ser = ser_factory(CFG_PV_CFG)
    lines = ser.cfg.read_text().splitlines()
    main_line = next(i for i, t in enumerate(lines, 1) if "cfgpv-main" in t)
    sub_line = next(i for i, t in enumerate(lines, 1) if "cfgpv-sub" in t)
    raw = udp_exchange(sip_options(ser.port, branch="z9hG4bKcfgpv"), ser.port)
    assert raw is not None and raw.startswith(b"SIP/2.0 200 "), ser.logtext()
    want = [f"cfgpv-sub line={sub_line} route=PING",
            f"cfgpv-main line={main_line} route=DEFAULT_ROUTE file={ser.cfg}"]
    deadline = time.monotonic() + 5
    while not all(w in ser.logtext() for w in want) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = ser.logtext()
    assert all(w in log for w in want), log[-3000:]
