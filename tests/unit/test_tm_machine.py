"""The RFC 3261 §17 transaction tables of tm, driven over a fake wire.

A client machine (one branch) and a server machine are stepped with the
events a real exchange produces; the "wire" is a list of what the actions
asked to send. No sockets, no clock: timer firings are plain events.
"""

from __future__ import annotations

from ser.core.parser import parse_message
from ser.mods.tm import machine as m
from ser.mods.tm.txn import (
    Branch,
    Txn,
    branch_param,
    branch_request,
    match_key,
    parse_branch,
    txn_id,
)

A, E, S = m.A, m.E, m.S


class Wire:
    def __init__(self, table: m.Table, state: S) -> None:
        self.table = table
        self.state = state
        self.sent: list[str] = []

    def feed(self, event: E, what: str = "") -> tuple[A, ...]:
        self.state, acts = m.step(self.table, self.state, event)
        for a in acts:
            if a in (A.SEND_REPLY, A.RETRANSMIT, A.RESEND_REPLY, A.SEND_ACK, A.SEND_CANCEL):
                self.sent.append(f"{a.name}:{what}")
        return acts


def test_invite_client_retransmits_until_a_provisional_then_acks_a_failure():
    c = Wire(m.INVITE_CLIENT, m.CALLING)
    c.feed(E.TIMER_RETR, "INVITE")
    c.feed(E.TIMER_RETR, "INVITE")
    assert c.sent == ["RETRANSMIT:INVITE", "RETRANSMIT:INVITE"]
    acts = c.feed(E.RCV_1XX)
    assert c.state is S.PROCEEDING and A.STOP_RETR in acts and A.FR_INV in acts
    assert c.feed(E.TIMER_RETR) == ()                   # no retransmission any more
    acts = c.feed(E.RCV_FINAL, "ACK")
    assert c.state is S.COMPLETED and A.SEND_ACK in acts and A.PASS_UP in acts
    # a retransmitted final reply is ACKed again and not passed up
    assert c.feed(E.RCV_FINAL, "ACK") == (A.SEND_ACK,)


def test_invite_client_2xx_terminates_and_later_2xx_still_go_up():
    c = Wire(m.INVITE_CLIENT, m.CALLING)
    c.feed(E.RCV_2XX)
    assert c.state is S.TERMINATED
    assert c.feed(E.RCV_2XX) == (A.PASS_UP,)


def test_invite_client_timeout_and_cancel():
    c = Wire(m.INVITE_CLIENT, m.CALLING)
    assert c.feed(E.CANCEL) == (A.MARK_CANCEL,)         # RFC 3261 9.1: wait for a 1xx
    c.feed(E.RCV_1XX)
    assert c.feed(E.CANCEL) == (A.SEND_CANCEL,)
    acts = c.feed(E.TIMER_FR)
    assert c.state is S.TERMINATED and A.TIMEOUT in acts and A.SEND_CANCEL in acts


def test_non_invite_client_and_server():
    c = Wire(m.NON_INVITE_CLIENT, S.TRYING)
    c.feed(E.TIMER_RETR, "BYE")
    c.feed(E.RCV_1XX)
    assert c.state is S.PROCEEDING
    c.feed(E.TIMER_RETR, "BYE")                          # E keeps firing in Proceeding
    c.feed(E.RCV_2XX)
    assert c.state is S.COMPLETED
    assert c.feed(E.RCV_2XX) == ()                      # absorbed
    s = Wire(m.NON_INVITE_SERVER, S.TRYING)
    assert s.feed(E.REQ_RETR) == ()                     # nothing to re-send yet
    s.feed(E.SEND_2XX, "200")
    s.feed(E.REQ_RETR, "200")
    assert s.sent == ["SEND_REPLY:200", "RESEND_REPLY:200"]


def test_invite_server_non_2xx_waits_for_ack():
    s = Wire(m.INVITE_SERVER, S.PROCEEDING)
    s.feed(E.SEND_1XX, "100")
    s.feed(E.REQ_RETR, "100")
    acts = s.feed(E.SEND_FINAL, "486")
    assert s.state is S.COMPLETED and A.START_RETR in acts
    s.feed(E.TIMER_RETR, "486")
    s.feed(E.ACK)
    assert s.state is S.CONFIRMED
    assert s.feed(E.ACK) == () and s.feed(E.TIMER_RETR) == ()
    assert s.sent == ["SEND_REPLY:100", "RESEND_REPLY:100", "SEND_REPLY:486", "RETRANSMIT:486"]


def test_invite_server_without_ack_ends_at_timer_h():
    s = Wire(m.INVITE_SERVER, S.PROCEEDING)
    s.feed(E.SEND_FINAL)
    acts = s.feed(E.TIMER_FR)
    assert s.state is S.TERMINATED and A.DELETE in acts


def test_every_table_lists_only_known_states_and_events():
    for table in (m.INVITE_CLIENT, m.INVITE_SERVER, m.NON_INVITE_CLIENT, m.NON_INVITE_SERVER):
        for (st, ev), (nst, acts) in table.items():
            assert isinstance(st, S) and isinstance(ev, E) and isinstance(nst, S)
            assert all(isinstance(a, A) for a in acts)


INV = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
       b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n"
       b"From: <sip:a@x>;tag=f1\r\nTo: <sip:bob@example.com>\r\nCall-ID: k1\r\n"
       b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def test_matching_keys_and_branches():
    inv = parse_message(INV)
    ack = parse_message(INV.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK"))
    cancel = parse_message(INV.replace(b"INVITE sip", b"CANCEL sip")
                           .replace(b"1 INVITE", b"1 CANCEL"))
    assert match_key(inv) == match_key(ack)             # ACK for non-2xx: its INVITE
    assert match_key(cancel) != match_key(inv)
    old = parse_message(INV.replace(b"branch=z9hG4bKabc", b"branch=1234"))
    assert match_key(old) != match_key(inv) and match_key(old).startswith(b"0")
    tid = txn_id(match_key(inv))
    assert parse_branch(branch_param(tid, 3)) == (tid, 3)
    assert parse_branch("z9hG4bKsomeoneelse") is None


def test_record_round_trip_and_branch_request():
    t = Txn(b"k", "INVITE", 1.0, INV, ("udp", "10.0.0.1", 5060, 0), ("udp", "10.0.0.1", 5060, 0))
    t.branches.append(Branch("sip:bob@10.0.0.2", "udp", "10.0.0.2", 5060, 0,
                             "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx.0"))
    t.branches[0].state = S.PROCEEDING
    back = Txn.decode(t.encode())
    assert back.branches[0].state == S.PROCEEDING and back.request == INV
    req = branch_request(back, back.branches[0])
    assert req.startswith(b"INVITE sip:bob@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9")
    assert parse_message(req).vias[1].branch == "z9hG4bKabc"


def test_a_branch_with_its_own_request_and_send_time_edits_round_trips():
    t = Txn(b"k", "INVITE", 1.0, INV, ("udp", "10.0.0.1", 5060, 0), ("udp", "10.0.0.1", 5060, 0))
    own = INV.replace(b"\r\n\r\n", b"\r\nX-Branch: 1\r\n\r\n", 1)
    t.branches.append(Branch("sip:bob@10.0.0.2", "udp", "10.0.0.2", 5060, 1,
                             "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx.0", req=own))
    t.branches.append(Branch("sip:carol@10.0.0.3", "udp", "10.0.0.3", 5060, 0,
                             "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx.1"))
    t.branches[0].cancel, t.branches[0].cancel_at = 2, 7.5
    t.fixups = [("rr", (1, "<sip:a;lr>", "<sip:a;r2=on;lr>", ";lr>"))]
    t.fsock = 1
    back = Txn.decode(t.encode())
    assert (back.fixups, back.fsock) == (t.fixups, 1)
    assert back.branches[0].cancel_at == 7.5 and back.next_due() == 7.5
    assert parse_message(branch_request(back, back.branches[0])).header("x-branch") == "1"
    assert parse_message(branch_request(back, back.branches[1])).header("x-branch") is None


def test_wt_timer_is_a_deadline_only_once_the_transaction_may_end():
    t = Txn(b"k", "INVITE", 1.0, INV, ("udp", "10.0.0.1", 5060, 0), ("udp", "10.0.0.1", 5060, 0))
    # a non-2xx final sent: G and H run until the ACK, wt_timer does not count yet
    t.state, t.code, t.retr_at, t.end_at, t.wait_at = S.COMPLETED, 486, 9.0, 33.0, 6.0
    assert t.next_due() == 9.0
    t.state, t.retr_at, t.end_at, t.wait_at = S.CONFIRMED, 0.0, 0.0, 12.0    # the ACK came
    assert t.next_due() == 12.0
    t.state, t.code = S.PROCEEDING, 180          # no final reply yet: nothing to wait for
    assert t.next_due() == 0.0
