"""Which results go again when a connection to another node closes (scheduler/_owner/_resend.py), over plain data."""

from __future__ import annotations

from ember.scheduler._owner._resend import RESEND_KEPT_MAX, RESEND_WINDOW_S, RESENDS_MAX, SentResults

OWNER = "grpc://10.0.0.3:7000/s/driver-1"


def test_the_results_a_closed_connection_carried_lately_go_again_in_order_once() -> None:
    sent = SentResults()
    old, other = object(), object()
    sent.sent(old, OWNER, ("result", 1), now=10.0)
    sent.sent(other, OWNER, ("result", 2), now=10.5)
    sent.sent(old, OWNER, ("result", 3), now=11.0)
    assert sent.closed(old, now=12.0) == [(OWNER, ("result", 1), 0), (OWNER, ("result", 3), 0)]
    assert sent.closed(old, now=12.0) == []  # a second close (or a late check) sends nothing twice
    assert sent.closed(other, now=12.0) == [(OWNER, ("result", 2), 0)]
    assert len(sent) == 0


def test_results_older_than_the_window_are_taken_as_delivered() -> None:
    sent = SentResults()
    conn = object()
    sent.sent(conn, OWNER, ("result", 1), now=0.0)
    sent.sent(conn, OWNER, ("result", 2), now=RESEND_WINDOW_S)
    assert sent.closed(conn, now=RESEND_WINDOW_S + 1.0) == [(OWNER, ("result", 2), 0)]


def test_a_result_goes_again_at_most_resends_max_times() -> None:
    sent = SentResults()
    resends, now = 0, 0.0
    while True:
        conn = object()
        sent.sent(conn, OWNER, ("result", 1), now=now, resends=resends)
        again = sent.closed(conn, now=now)
        if not again:
            break
        resends = again[0][2] + 1
        now += 1.0
    assert resends == RESENDS_MAX


def test_what_is_kept_is_bounded() -> None:
    sent = SentResults()
    conn = object()
    for i in range(RESEND_KEPT_MAX + 5):
        sent.sent(conn, OWNER, ("result", i), now=0.0)
    assert len(sent) == RESEND_KEPT_MAX
    assert sent.closed(conn, now=0.0)[0] == (OWNER, ("result", 5), 0)  # the oldest went first
