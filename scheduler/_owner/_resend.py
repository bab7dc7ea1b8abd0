"""Results sent to owners on other nodes, kept a while to send again if their connection closes.

A connection to another node runs through a relay's gRPC stream over TCP.
When the network between the nodes is cut, each end learns the stream is
gone only from its own keepalive (up to ``KEEPALIVE_S + KEEPALIVE_TIMEOUT_S``
after the cut), and the two ends learn it at different times. A worker
whose end still looks open after the owner's end closed (a cut shorter than
the worker's keepalive, longer than the owner's relay's) writes its result
into a stream nobody reads any more: the far relay answers with a reset, the
connection closes, and the result is gone, while the worker's scheduler was
told the task is done. Nobody would run it again, and the owner's ``get``
would wait forever (seen in ``bench_recovery.py --network``: a task on a
node just healed never came back).

So a result sent to another node is kept for ``RESEND_WINDOW_S``; when the
connection it left on closes, it is sent again on a new connection. Owners
take a task's result once and ignore the rest (a finished task, or a stale
attempt), so sending one twice is harmless.

A sans-IO record: the caller passes the time and does the sending. It must
never connect, send or read the clock itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ember.scheduler._relay import DEAD_PEER_WINDOW_S

__all__ = ["RESENDS_MAX", "RESEND_CONNECT_S", "RESEND_KEPT_MAX", "RESEND_WINDOW_S", "SentResults"]

# A result sent this long before its connection closed may have died with it: the far end may have
# been gone for a whole keepalive before this end's keepalive noticed. Older ones were delivered
# (their connection stayed up longer than a dead peer could keep it), and are forgotten.
RESEND_WINDOW_S = DEAD_PEER_WINDOW_S
RESEND_KEPT_MAX = 10_000  # results kept at most (the oldest are forgotten first)
RESENDS_MAX = 3  # times one result is sent again at most (each after a connection it left on closed)
# How long a resend tries to reach the owner: a cut lasting longer ends with the node declared
# dead and the task's owner told by the node that forwarded it there, which runs it again.
RESEND_CONNECT_S = 60.0


class SentResults:
    """The results sent lately on connections to other nodes: ``(sent at, connection, address, message, resends)``."""

    def __init__(self) -> None:
        self._sent: deque[tuple[float, Any, str, tuple, int]] = deque()

    def __len__(self) -> int:
        return len(self._sent)

    def sent(self, conn: Any, address: str, msg: tuple, now: float, resends: int = 0) -> None:
        """``msg`` left for ``address`` on ``conn`` at ``now`` (after ``resends`` earlier tries)."""
        self._forget_old(now)
        if resends >= RESENDS_MAX:
            return  # sent often enough: its connections keep closing, its owner is likely gone
        self._sent.append((now, conn, address, msg, resends))
        while len(self._sent) > RESEND_KEPT_MAX:
            self._sent.popleft()

    def closed(self, conn: Any, now: float) -> list[tuple[str, tuple, int]]:
        """``conn`` closed at ``now``: the ``(address, message, resends so far)`` sent on it lately, forgotten here,
        in the order they were sent."""
        self._forget_old(now)
        again = [(address, msg, resends) for _, c, address, msg, resends in self._sent if c is conn]
        if again:
            self._sent = deque(entry for entry in self._sent if entry[1] is not conn)
        return again

    def _forget_old(self, now: float) -> None:
        while self._sent and now - self._sent[0][0] > RESEND_WINDOW_S:
            self._sent.popleft()
