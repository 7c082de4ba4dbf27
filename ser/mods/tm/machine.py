"""The RFC 3261 §17 transaction state machines, as tables.

Theory of operation. There are four machines: the INVITE and non-INVITE
server transactions (the caller's side of the proxy, 17.2.1 and 17.2.2) and
the INVITE and non-INVITE client transactions (one per branch, 17.1.1 and
17.1.2). Each is a table ``(state, event) -> (state, actions)``. A pair that
is not in a table leaves the state alone and does nothing (the event is
absorbed). The machine does not send, sleep or read a clock: the engine
(engine.py) feeds it events -- messages and timer firings -- and carries out
the actions it returns.

Timers are collapsed the way Kamailio collapses them: the "linger" timers
(D, I, J, K) are the transaction's ``wt_timer`` (START_WAIT); B and F are
``fr_timer``, and B after a provisional reply is ``fr_inv_timer``; A, E and G
are the retransmission timers (T1 doubling, capped at T2 for E and G).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class S(IntEnum):
    """States. Server: PROCEEDING/TRYING, COMPLETED, CONFIRMED, TERMINATED.
    Client: CALLING/TRYING, PROCEEDING, COMPLETED, TERMINATED."""
    TRYING = 0          # non-INVITE (server and client); INVITE client: CALLING
    PROCEEDING = 1
    COMPLETED = 2
    CONFIRMED = 3
    TERMINATED = 4


CALLING = S.TRYING


class E(IntEnum):
    """Events."""
    REQ_RETR = 0        # server: the request came again
    SEND_1XX = 1        # server: the TU sends a provisional reply
    SEND_2XX = 2        # server: the TU sends a 2xx
    SEND_FINAL = 3      # server: the TU sends a 300-699
    ACK = 4             # server: ACK for the non-2xx final reply
    RCV_1XX = 5         # client: a provisional reply came
    RCV_2XX = 6         # client: a 2xx came
    RCV_FINAL = 7       # client: a 300-699 came
    TIMER_RETR = 8      # A (INVITE client), E (non-INVITE client), G (INVITE server)
    TIMER_FR = 9        # B, F (client: no final reply in time); H (INVITE server: no ACK)
    CANCEL = 10         # client: the transaction was cancelled upstream


class A(IntEnum):
    """Actions."""
    SEND_REPLY = 0      # server: send the reply given with the event, keep it as the last
    RESEND_REPLY = 1    # server: send the last reply again
    START_RETR = 2      # start retransmissions (G for a server, A/E for a client)
    RETRANSMIT = 3      # client: send the request again; server: re-send the last reply
    BACKOFF = 4         # double the retransmission interval (capped at T2 unless INVITE client)
    STOP_RETR = 5
    START_WAIT = 6      # linger wt_timer (D, I, J, K), then delete
    PASS_UP = 7         # client: hand the reply to the TU (relay/select)
    SEND_ACK = 8        # client: ACK a non-2xx final reply hop by hop
    TIMEOUT = 9         # client: the branch ends with a local 408
    SEND_CANCEL = 10    # client: send a CANCEL on the branch
    MARK_CANCEL = 11    # client: CANCEL as soon as a provisional reply comes (9.1)
    FR_INV = 12         # client: switch the final-response timer to fr_inv_timer
    DELETE = 13         # server: the transaction is done (H fired without an ACK)
    STOP_FR = 14


Table = dict[tuple[int, E], tuple[S, tuple[A, ...]]]   # keys: (S, E)

# 17.2.1 INVITE server transaction (Figure 7)
INVITE_SERVER: Table = {
    (S.PROCEEDING, E.REQ_RETR): (S.PROCEEDING, (A.RESEND_REPLY,)),
    (S.PROCEEDING, E.SEND_1XX): (S.PROCEEDING, (A.SEND_REPLY,)),
    (S.PROCEEDING, E.SEND_2XX): (S.TERMINATED, (A.SEND_REPLY, A.START_WAIT)),
    (S.PROCEEDING, E.SEND_FINAL): (S.COMPLETED, (A.SEND_REPLY, A.START_RETR, A.START_WAIT)),
    (S.COMPLETED, E.REQ_RETR): (S.COMPLETED, (A.RESEND_REPLY,)),
    (S.COMPLETED, E.TIMER_RETR): (S.COMPLETED, (A.RETRANSMIT, A.BACKOFF)),
    (S.COMPLETED, E.ACK): (S.CONFIRMED, (A.STOP_RETR, A.START_WAIT)),
    (S.COMPLETED, E.TIMER_FR): (S.TERMINATED, (A.STOP_RETR, A.DELETE)),
    # a proxy relays every 2xx of a forked INVITE, and re-sends the 2xx to a
    # retransmitted INVITE while the transaction lingers
    (S.TERMINATED, E.SEND_2XX): (S.TERMINATED, (A.SEND_REPLY,)),
    (S.TERMINATED, E.REQ_RETR): (S.TERMINATED, (A.RESEND_REPLY,)),
}

# 17.2.2 non-INVITE server transaction (Figure 8)
NON_INVITE_SERVER: Table = {
    (S.TRYING, E.SEND_1XX): (S.PROCEEDING, (A.SEND_REPLY,)),
    (S.TRYING, E.SEND_2XX): (S.COMPLETED, (A.SEND_REPLY, A.START_WAIT)),
    (S.TRYING, E.SEND_FINAL): (S.COMPLETED, (A.SEND_REPLY, A.START_WAIT)),
    (S.PROCEEDING, E.REQ_RETR): (S.PROCEEDING, (A.RESEND_REPLY,)),
    (S.PROCEEDING, E.SEND_1XX): (S.PROCEEDING, (A.SEND_REPLY,)),
    (S.PROCEEDING, E.SEND_2XX): (S.COMPLETED, (A.SEND_REPLY, A.START_WAIT)),
    (S.PROCEEDING, E.SEND_FINAL): (S.COMPLETED, (A.SEND_REPLY, A.START_WAIT)),
    (S.COMPLETED, E.REQ_RETR): (S.COMPLETED, (A.RESEND_REPLY,)),
}

# 17.1.1 INVITE client transaction (Figure 5)
INVITE_CLIENT: Table = {
    (CALLING, E.TIMER_RETR): (CALLING, (A.RETRANSMIT, A.BACKOFF)),
    (CALLING, E.TIMER_FR): (S.TERMINATED, (A.STOP_RETR, A.TIMEOUT)),
    (CALLING, E.RCV_1XX): (S.PROCEEDING, (A.STOP_RETR, A.FR_INV, A.PASS_UP)),
    (CALLING, E.RCV_2XX): (S.TERMINATED, (A.STOP_RETR, A.STOP_FR, A.PASS_UP)),
    (CALLING, E.RCV_FINAL): (S.COMPLETED, (A.STOP_RETR, A.STOP_FR, A.SEND_ACK, A.PASS_UP,
                                          A.START_WAIT)),
    (CALLING, E.CANCEL): (CALLING, (A.MARK_CANCEL,)),
    (S.PROCEEDING, E.RCV_1XX): (S.PROCEEDING, (A.PASS_UP,)),
    (S.PROCEEDING, E.RCV_2XX): (S.TERMINATED, (A.STOP_FR, A.PASS_UP)),
    (S.PROCEEDING, E.RCV_FINAL): (S.COMPLETED, (A.STOP_FR, A.SEND_ACK, A.PASS_UP,
                                                A.START_WAIT)),
    (S.PROCEEDING, E.TIMER_FR): (S.TERMINATED, (A.SEND_CANCEL, A.TIMEOUT)),
    (S.PROCEEDING, E.CANCEL): (S.PROCEEDING, (A.SEND_CANCEL,)),
    (S.COMPLETED, E.RCV_FINAL): (S.COMPLETED, (A.SEND_ACK,)),
    # 2xx retransmissions and the 2xx of other forks are the UAC's business:
    # passed up (relayed) even after the branch ended
    (S.TERMINATED, E.RCV_2XX): (S.TERMINATED, (A.PASS_UP,)),
}

# 17.1.2 non-INVITE client transaction (Figure 6)
NON_INVITE_CLIENT: Table = {
    (S.TRYING, E.TIMER_RETR): (S.TRYING, (A.RETRANSMIT, A.BACKOFF)),
    (S.TRYING, E.TIMER_FR): (S.TERMINATED, (A.STOP_RETR, A.TIMEOUT)),
    (S.TRYING, E.RCV_1XX): (S.PROCEEDING, (A.PASS_UP,)),
    (S.TRYING, E.RCV_2XX): (S.COMPLETED, (A.STOP_RETR, A.STOP_FR, A.PASS_UP, A.START_WAIT)),
    (S.TRYING, E.RCV_FINAL): (S.COMPLETED, (A.STOP_RETR, A.STOP_FR, A.PASS_UP, A.START_WAIT)),
    (S.PROCEEDING, E.TIMER_RETR): (S.PROCEEDING, (A.RETRANSMIT, A.BACKOFF)),
    (S.PROCEEDING, E.TIMER_FR): (S.TERMINATED, (A.STOP_RETR, A.TIMEOUT)),
    (S.PROCEEDING, E.RCV_1XX): (S.PROCEEDING, (A.PASS_UP,)),
    (S.PROCEEDING, E.RCV_2XX): (S.COMPLETED, (A.STOP_RETR, A.STOP_FR, A.PASS_UP,
                                              A.START_WAIT)),
    (S.PROCEEDING, E.RCV_FINAL): (S.COMPLETED, (A.STOP_RETR, A.STOP_FR, A.PASS_UP,
                                                A.START_WAIT)),
}

_NONE: tuple[A, ...] = ()


def step(table: Table, state: int, event: E) -> tuple[S, tuple[A, ...]]:
    """The next state and the actions of ``event`` in ``state``; an event the
    table does not list is absorbed (same state, no action)."""
    hit = table.get((state, event))     # an int state finds its IntEnum key
    if hit is None:
        return S(state), _NONE
    return hit


def server_table(invite: bool) -> Table:
    return INVITE_SERVER if invite else NON_INVITE_SERVER


def client_table(invite: bool) -> Table:
    return INVITE_CLIENT if invite else NON_INVITE_CLIENT


def members(enum: type[IntEnum]) -> Any:
    """The members of ``enum`` as plain class attributes, the same objects:
    reading ``A.SEND_REPLY`` off an Enum class costs ten times more (Python
    3.11), and the engine's loops over actions read several per message."""
    return type(enum.__name__, (), dict(enum.__members__))


_E = members(E)


def reply_event(code: int, server: bool) -> E:
    """The event of a reply with ``code``: sent (server) or received (client)."""
    if code < 200:
        return _E.SEND_1XX if server else _E.RCV_1XX
    if code < 300:
        return _E.SEND_2XX if server else _E.RCV_2XX
    return _E.SEND_FINAL if server else _E.RCV_FINAL
