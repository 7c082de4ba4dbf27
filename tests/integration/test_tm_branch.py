"""tm on the wire, part two: branch_route, CANCEL corner cases (retransmitted,
before any provisional reply), merged challenges, 503 remapping, a full
transaction table and tm.list. Raw UDP peers on 127.0.0.x give exact control
over what each side sends and sees."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.integration.conftest import SERCTL
from tests.integration.test_tm import Peer, ack_of, cancel_of, invite, reply_to

pytestmark = pytest.mark.integration

CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=1
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
modparam("tm", "retr_timer1", 200)
modparam("tm", "fr_timer", 1000)
modparam("tm", "fr_inv_timer", 3000)
modparam("tm", "wt_timer", 500)
REMAP
request_route {{
    if (is_method("CANCEL|ACK")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    if (!t_is_branch_route()) append_hf("X-Req: request_route\\r\\n");
    $du = "sip:127.0.0.2:UAS1";
    if ($rU == "branch") {{
        append_branch("sip:two@127.0.0.3:UAS2");
        append_branch("sip:drop@127.0.0.2:UAS1");
        t_on_branch("PER");
    }}
    if ($rU == "serial") {{
        t_on_branch("PER");
        t_on_failure("NEXT");
    }}
    if ($rU == "drop") t_on_branch("PER");
    if ($rU == "others" || $rU == "this") {{
        append_branch("sip:fork@127.0.0.3:UAS2");
        if ($rU == "others") t_on_reply("OTHERS"); else t_on_reply("THIS");
    }}
    if ($rU == "fork") {{
        append_branch("sip:fork@127.0.0.3:UAS2");
    }}
    if (!t_relay()) sl_send_reply("500", "No branch left");
}}
branch_route[PER] {{
    if ($rU == "drop") drop;
    append_hf("X-Branch: $T_branch_idx $ru\\r\\n");
    if (t_is_branch_route()) append_hf("X-In-Branch-Route: yes\\r\\n");
    if ($rU == "two") t_on_reply("MARK");
}}
onreply_route[MARK] {{
    append_hf("X-Reply-Route: MARK\\r\\n");
}}
onreply_route[OTHERS] {{
    if (t_check_status("183")) t_cancel_branches("others");
}}
onreply_route[THIS] {{
    if (t_check_status("183")) t_cancel_branches("this");
}}
failure_route[NEXT] {{
    if (t_is_canceled()) exit;
    if (!t_is_set("branch_route")) exit;
    $du = "sip:127.0.0.3:UAS2";
    t_relay();
}}
"""


def _cfg(uas1: int, uas2: int, remap: str = "") -> str:
    return CFG.replace("UAS1", str(uas1)).replace("UAS2", str(uas2)).replace("REMAP", remap)


@pytest.fixture
def net(ser_factory):
    """A caller on 127.0.0.1, callees on 127.0.0.2 and .3, and ser."""
    made: list[Peer] = []

    def make(remap: str = "", args: list[str] | None = None):
        uac, uas1, uas2 = Peer("127.0.0.1"), Peer("127.0.0.2"), Peer("127.0.0.3")
        made.extend((uac, uas1, uas2))
        ser = ser_factory(_cfg(uas1.port, uas2.port, remap), args=args)
        return ser, uac, uas1, uas2
    yield make
    for p in made:
        p.close()


def _collect(peer: Peer, seconds: float, until: int = 0) -> list[tuple[float, str]]:
    """Everything ``peer`` receives in the next ``seconds`` (or until it has
    ``until`` messages), with the monotonic time each message came."""
    out: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not (until and len(out) >= until):
        try:
            text = peer.recv(left)[0]
        except TimeoutError:
            break
        out.append((time.monotonic(), text))
    return out


def _hdr(msg: str, name: str) -> list[str]:
    return re.findall(rf"^{name}: (.*)\r$", msg, re.M | re.I)


def _forked(ser, uac: Peer, uas1: Peer, uas2: Peer, user: str, callid: str) -> tuple:
    """An INVITE forked to both callees: (the INVITE sent, what each got and
    where from)."""
    inv = invite(uac, ser.port, user=user, callid=callid)
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd1, addr1 = uas1.expect("INVITE ")
    fwd2, addr2 = uas2.expect("INVITE ")
    return inv, fwd1, addr1, fwd2, addr2


# --------------------------------------------------------------- branch_route
def test_branch_route_edits_and_drops_one_branch_each(net):
    ser, uac, uas1, uas2 = net()
    inv, fwd1, addr1, fwd2, addr2 = _forked(ser, uac, uas1, uas2, "branch", "br1")
    # each branch carries its own header, set by branch_route for it alone
    assert _hdr(fwd1, "X-Branch") == [f"0 sip:branch@127.0.0.1:{ser.port}"]
    assert _hdr(fwd2, "X-Branch") == [f"1 sip:two@127.0.0.3:{uas2.port}"]
    assert fwd2.startswith(f"INVITE sip:two@127.0.0.3:{uas2.port} SIP/2.0")
    for fwd in (fwd1, fwd2):
        assert _hdr(fwd, "X-In-Branch-Route") == ["yes"]       # t_is_branch_route()
        assert _hdr(fwd, "X-Req") == ["request_route"]         # false in request_route
    # the retransmission (T1 = 200 ms) is the branch's own request again
    again, _ = uas1.expect("INVITE ", timeout=1.0)
    assert again == fwd1
    # the dropped branch (sip:drop@ to callee 1) never left
    assert not [m for m in uas1.drain(0.3) if m.startswith("INVITE sip:drop@")]
    uas2.send(reply_to(fwd2, 180, "Ringing", tag="tt2"), addr2)
    ringing, _ = uac.expect("SIP/2.0 180")
    assert _hdr(ringing, "X-Reply-Route") == ["MARK"]       # t_on_reply() in branch_route
    uas1.send(reply_to(fwd1, 200, "OK"), addr1)
    ok, _ = uac.expect("SIP/2.0 200")
    assert "tag=tt1" in ok
    cancel, _ = uas2.expect("CANCEL ")       # the other branch is cancelled, not the dropped
    uas2.send(reply_to(cancel, 200, "OK"), addr2)
    uas2.send(reply_to(fwd2, 487, "Request Terminated", tag="tt2"), addr2)
    uas2.expect("ACK ")
    assert [b["uri"] for b in ser.rpc("tm.list")[0]["branches"]] == \
        [f"sip:branch@127.0.0.1:{ser.port}", f"sip:two@127.0.0.3:{uas2.port}"]


def test_branch_route_dropping_every_branch_fails_t_relay(net):
    ser, uac, uas1, _ = net()
    uac.send(invite(uac, ser.port, user="drop", callid="br3"), ("127.0.0.1", ser.port))
    final, _ = uac.expect("SIP/2.0 500")
    assert final.startswith("SIP/2.0 500 No branch left\r\n")
    assert not [m for m in uas1.drain(0.3) if m.startswith("INVITE ")]
    assert "branch_route[PER] dropped every branch of INVITE" in ser.logtext()


def test_branch_route_runs_for_a_branch_added_in_failure_route(net):
    ser, uac, uas1, uas2 = net()
    inv = invite(uac, ser.port, user="serial", callid="br2")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd1, addr1 = uas1.expect("INVITE ")
    assert _hdr(fwd1, "X-Branch") == [f"0 sip:serial@127.0.0.1:{ser.port}"]
    uas1.send(reply_to(fwd1, 486, "Busy Here"), addr1)
    fwd2, addr2 = uas2.expect("INVITE ")
    assert _hdr(fwd2, "X-Branch") == [f"1 sip:serial@127.0.0.1:{ser.port}"]
    assert _hdr(fwd2, "X-Req") == ["request_route"]
    uas2.send(reply_to(fwd2, 200, "OK", tag="tt2"), addr2)
    ok, _ = uac.expect("SIP/2.0 200")
    assert "tag=tt2" in ok


# ---------------------------------------------------------------------- CANCEL
def _ringing(ser, uac: Peer, uas: Peer, callid: str, user: str = "bob") -> tuple:
    """An INVITE from ``uac`` relayed to ``uas``, which rings: (the INVITE
    sent, the one relayed, where it came from)."""
    inv = invite(uac, ser.port, user=user, callid=callid)
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd, addr = uas.expect("INVITE ")
    uas.send(reply_to(fwd, 180, "Ringing"), addr)
    uac.expect("SIP/2.0 180")
    return inv, fwd, addr


def test_retransmitted_cancel_is_answered_again_and_not_relayed_again(net):
    ser, uac, uas1, _ = net()
    inv, fwd, addr = _ringing(ser, uac, uas1, "rc1")
    cancel = cancel_of(inv)
    uac.send(cancel, ("127.0.0.1", ser.port))
    first, _ = uac.expect("SIP/2.0 200")
    relayed, _ = uas1.expect("CANCEL ")
    uas1.send(reply_to(relayed, 200, "OK"), addr)
    time.sleep(0.1)
    uac.send(cancel, ("127.0.0.1", ser.port))
    second, _ = uac.expect("SIP/2.0 200")
    assert "CSeq: 1 CANCEL" in first
    assert second == first                       # the same 200, To tag and all
    got = uas1.drain(0.5)
    assert not [m for m in got if m.startswith("CANCEL ")], got
    uas1.send(reply_to(fwd, 487, "Request Terminated"), addr)
    terminated, _ = uac.expect("SIP/2.0 487")
    uac.send(ack_of(inv, terminated), ("127.0.0.1", ser.port))


def test_our_cancel_is_retransmitted_until_answered(net):
    ser, uac, uas1, _ = net()
    inv, fwd, addr = _ringing(ser, uac, uas1, "cr1")
    uac.send(cancel_of(inv), ("127.0.0.1", ser.port))
    t0 = time.monotonic()
    first, _ = uas1.expect("CANCEL ")
    # unanswered over UDP: again after T1 (200 ms), then 400 ms later
    got = [(t - t0, m) for t, m in _collect(uas1, 2.0, until=2)]
    again = [t for t, m in got if m.startswith("CANCEL ")]
    assert len(again) == 2, got
    assert 0.15 <= again[0] <= 0.6 and 0.35 <= again[1] - again[0] <= 1.0, again   # doubling
    assert all(m == first for _, m in got)
    uas1.send(reply_to(first, 200, "OK"), addr)
    assert not [m for _, m in _collect(uas1, 0.9) if m.startswith("CANCEL ")]   # answered
    uas1.send(reply_to(fwd, 487, "Request Terminated"), addr)
    uac.expect("SIP/2.0 487")


def test_cancel_waits_for_the_provisional_reply(net):
    ser, uac, uas1, _ = net()
    inv = invite(uac, ser.port, callid="cw1")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd, addr = uas1.expect("INVITE ")
    uac.send(cancel_of(inv), ("127.0.0.1", ser.port))
    ok, _ = uac.expect("SIP/2.0 200")
    assert "CSeq: 1 CANCEL" in ok
    # RFC 3261 9.1: no CANCEL before a provisional reply; the INVITE is
    # still retransmitted meanwhile (fr_timer is 1 s)
    early = [m for _, m in _collect(uas1, 0.4)]
    assert not [m for m in early if m.startswith("CANCEL ")], early
    assert [m for m in early if m.startswith("INVITE ")]
    uas1.send(reply_to(fwd, 180, "Ringing"), addr)
    cancel, _ = uas1.expect("CANCEL ", timeout=2)
    assert _hdr(cancel, "Via") == _hdr(fwd, "Via")[:1]
    uas1.send(reply_to(cancel, 200, "OK"), addr)
    uas1.send(reply_to(fwd, 487, "Request Terminated"), addr)
    terminated, _ = uac.expect("SIP/2.0 487")
    assert "CSeq: 1 INVITE" in terminated
    uas1.expect("ACK ")


def test_cancel_without_any_provisional_times_out_with_487(net):
    ser, uac, uas1, _ = net()
    inv = invite(uac, ser.port, callid="cw2")
    t0 = time.monotonic()
    uac.send(inv, ("127.0.0.1", ser.port))
    uas1.expect("INVITE ")
    uac.send(cancel_of(inv), ("127.0.0.1", ser.port))
    uac.expect("SIP/2.0 200")
    # fr_timer (1 s) ends the silent branch; the caller hears 487, not 408
    terminated, _ = uac.expect("SIP/2.0 487", timeout=3)
    assert 0.9 <= time.monotonic() - t0 <= 2.5
    assert "CSeq: 1 INVITE" in terminated
    assert not [m for m in uas1.drain(0.5) if m.startswith("CANCEL ")]
    stats = ser.rpc("tm.stats")
    assert stats["4xx"] == 1 and stats["total_local"] == 1


# -------------------------------------------------------------- final replies
def _challenge(fwd: str, code: int, hdr: str, tag: str) -> str:
    reason = "Unauthorized" if code == 401 else "Proxy Authentication Required"
    rep = reply_to(fwd, code, reason, tag=tag)
    return rep.replace("Content-Length: 0", f"{hdr}\r\nContent-Length: 0")


def test_challenges_of_two_branches_are_merged(net):
    ser, uac, uas1, uas2 = net()
    inv, fwd1, addr1, fwd2, addr2 = _forked(ser, uac, uas1, uas2, "fork", "auth1")
    www = 'WWW-Authenticate: Digest realm="one.example", nonce="n1"'
    proxy = 'Proxy-Authenticate: Digest realm="two.example", nonce="n2"'
    uas1.send(_challenge(fwd1, 401, www, "tt1"), addr1)
    uas1.expect("ACK ")
    assert not [m for m in uac.drain(0.3) if not m.startswith("SIP/2.0 1")]   # waits for 2
    uas2.send(_challenge(fwd2, 407, proxy, "tt2"), addr2)
    uas2.expect("ACK ")
    final, _ = uac.expect("SIP/2.0 40", timeout=3)
    assert final.split(" ")[1] in ("401", "407")
    assert _hdr(final, "WWW-Authenticate") == [www.split(": ", 1)[1]]
    assert _hdr(final, "Proxy-Authenticate") == [proxy.split(": ", 1)[1]]
    uac.send(ack_of(inv, final), ("127.0.0.1", ser.port))


def test_6xx_cancels_the_other_branches_and_wins(net):
    ser, uac, uas1, uas2 = net()
    inv, fwd1, addr1, fwd2, addr2 = _forked(ser, uac, uas1, uas2, "fork", "g603")
    uas2.send(reply_to(fwd2, 180, "Ringing", tag="tt2"), addr2)
    uac.expect("SIP/2.0 180")
    uas1.send(reply_to(fwd1, 603, "Decline"), addr1)
    uas1.expect("ACK ")
    cancel, _ = uas2.expect("CANCEL ")
    uas2.send(reply_to(cancel, 200, "OK", tag="tt2"), addr2)
    uas2.send(reply_to(fwd2, 487, "Request Terminated", tag="tt2"), addr2)
    final, _ = uac.expect("SIP/2.0 6")
    assert final.startswith("SIP/2.0 603 Decline\r\n") and "tag=tt1" in final


@pytest.mark.parametrize("remap,want", [("", "500"),
                                        ('modparam("tm", "remap_503_500", 0)', "503")])
def test_503_from_downstream_goes_up_as_500_unless_disabled(net, remap, want):
    ser, uac, uas1, _ = net(remap)
    inv = invite(uac, ser.port, callid="r503")
    uac.send(inv, ("127.0.0.1", ser.port))
    fwd, addr = uas1.expect("INVITE ")
    uas1.send(reply_to(fwd, 503, "Overloaded Here"), addr)
    final, _ = uac.expect("SIP/2.0 5")
    assert final.startswith(f"SIP/2.0 {want} Overloaded Here\r\n"), final    # code only
    assert "tag=tt1" in final                   # the callee's reply, not a local one


# --------------------------------------------------------------- table, RPC
def test_full_transaction_table_answers_500_and_recovers(net):
    """-m 4: four megabytes of shared memory (half of it statistics); INVITEs
    with 40 kB bodies to a
    callee that never answers fill it."""
    ser, uac, uas1, _ = net(args=["-m", "4"])
    body = "v=0\r\n" + "a=x-pad:" + "p" * 40000 + "\r\n"
    codes: list[str] = []
    for i in range(200):
        inv = invite(uac, ser.port, callid=f"full{i}", branch=f"z9hG4bKfull{i}")
        inv = inv.replace("Content-Length: 0", f"Content-Type: application/sdp\r\n"
                                               f"Content-Length: {len(body)}") + body
        uac.send(inv, ("127.0.0.1", ser.port))
        text, _ = uac.recv(3)
        codes.append(text.split(" ")[1])
        if codes[-1] == "500":
            break
    assert codes[-1] == "500", codes
    assert codes.count("100") >= 5, codes
    assert "Server Internal Error" in text
    assert ser.rpc("tm.stats")["full_errors"] >= 1
    deadline = time.monotonic() + 5
    while "tm: shared memory full" not in ser.logtext() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "tm: shared memory full, INVITE answered 500" in ser.logtext()
    # the server goes on: the transactions time out (fr_timer 1 s), their
    # memory is freed, and a new call gets through
    deadline = time.monotonic() + 10
    while True:
        inv = invite(uac, ser.port, callid=f"after{time.monotonic()}",
                     branch=f"z9hG4bKafter{int(time.monotonic() * 1000)}")
        uac.send(inv, ("127.0.0.1", ser.port))
        if uac.expect("SIP/2.0 ", timeout=3)[0].startswith("SIP/2.0 100"):
            break
        assert time.monotonic() < deadline, "the table never had room again"
        time.sleep(0.5)


def test_tm_list_over_serctl(net):
    ser, uac, uas1, _ = net()
    inv, _, _ = _ringing(ser, uac, uas1, "list1", user="listed")
    out = subprocess.run([SERCTL, "-s", ser.sock_path, "rpc", "tm.list"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 1, rows
    t = rows[0]
    assert t["method"] == "INVITE"
    assert t["ruri"] == f"sip:listed@127.0.0.1:{ser.port}"
    assert t["code"] == 180 and t["canceled"] is False
    assert (t["callid"], t["cseq"]) == ("list1", "1 INVITE")
    assert t["from"] == "<sip:alice@127.0.0.1>;tag=ft1" and t["to"] == "<sip:listed@127.0.0.1>"
    assert t["src"] == f"udp:127.0.0.1:{uac.port}"
    assert re.fullmatch(r"[0-9a-f]{16}", t["tindex"])
    assert t["branches"] == [{"uri": f"sip:listed@127.0.0.1:{ser.port}",
                              "dst": f"udp:127.0.0.2:{uas1.port}", "state": 1, "code": 180}]
    uac.send(cancel_of(inv), ("127.0.0.1", ser.port))
    uac.expect("SIP/2.0 200")
    uas1.expect("CANCEL ")
    out = subprocess.run([SERCTL, "-s", ser.sock_path, "rpc", "tm.list"],
                         capture_output=True, text=True, timeout=10)
    assert json.loads(out.stdout)[0]["canceled"] is True


@pytest.mark.parametrize("which", ["others", "this"])
def test_t_cancel_branches_from_onreply_route(net, which):
    """tmx t_cancel_branches() on the 183 of the first branch."""
    ser, uac, uas1, uas2 = net()
    inv, fwd1, addr1, fwd2, addr2 = _forked(ser, uac, uas1, uas2, which, f"cut{which}")
    uas2.send(reply_to(fwd2, 180, "Ringing", tag="tt2"), addr2)
    uac.expect("SIP/2.0 180")
    uas1.send(reply_to(fwd1, 183, "Session Progress"), addr1)
    uac.expect("SIP/2.0 183")
    cut, keep = (uas2, uas1) if which == "others" else (uas1, uas2)
    cancel, addr = cut.expect("CANCEL ")
    cut.send(reply_to(cancel, 200, "OK"), addr)
    assert not [m for m in keep.drain(0.4) if m.startswith("CANCEL ")]
