"""Whether another process (an object's owner, an actor's borrower) is alive: probed, and remembered a while.

A process that cannot be connected to is taken for dead by whoever asked:
a borrower adopts the objects of an owner it cannot reach, a creator drops a
borrower it cannot reach. On one node that is certain (a dead process's
socket refuses at once, and its address never comes back). Across nodes it
is not: a relayed connection also fails while the network to the other
node is cut, and the process is alive on the other side. So a failed probe
is a verdict for ``RECHECK_S`` only; the next question after that probes
again, and an owner reachable again counts as alive: its objects are asked
of it again instead of rebuilt, and its puts are read from it instead of
failing with ``OwnerDiedError``.

A creator drops a borrower (and may end the actor) only on firmer ground:
the borrower refused on this node, or has been unreachable for
``GONE_AFTER_S``, past the relay's keepalive window, by which time a node
that is only cut off has had its work moved elsewhere too.

A sans-IO record apart from the probe it is given: the caller passes the
probe and the clock. It must never hold a lock while it probes (a probe of
another node can take seconds).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ember.scheduler._relay import DEAD_PEER_WINDOW_S

__all__ = ["GONE_AFTER_S", "RECHECK_S", "VERDICTS_MAX", "Liveness"]

RECHECK_S = 5.0  # a process found unreachable is probed again after this, when asked about again
GONE_AFTER_S = DEAD_PEER_WINDOW_S  # unreachable this long across nodes: gone, for dropping a borrower
VERDICTS_MAX = 10_000  # processes remembered unreachable at most (the oldest verdicts are forgotten first)


class Liveness:
    """Verdicts on other processes: ``alive`` for decisions a wrong "dead" only delays or repeats (adopting
    an object), ``gone`` for those it makes for good (dropping a borrower)."""

    def __init__(self, probe: Callable[[str], None], final: Callable[[str, Exception], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe  # raises if the process at the address cannot be connected to now
        self._final = final  # whether the probe's failure proves the process dead (refused on this node)
        self._clock = clock
        self._lock = threading.Lock()
        # address -> (first failed probe of the current run of failures, last failed probe, final)
        self._unreachable: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()

    def alive(self, address: str) -> bool:
        """Whether the process at ``address`` takes connections (probed again ``RECHECK_S`` after a failure)."""
        now = self._clock()
        with self._lock:
            verdict = self._unreachable.get(address)
        if verdict is not None and (verdict[2] or now - verdict[1] < RECHECK_S):
            return False
        try:
            self._probe(address)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is "not now"; the verdict says how sure
            self._found_unreachable(address, self._clock(), self._final(address, exc))
            return False
        with self._lock:
            self._unreachable.pop(address, None)  # reachable again: alive
        return True

    def gone(self, address: str) -> bool:
        """Whether the process at ``address`` is dead for good, as far as this process can tell."""
        if self.alive(address):
            return False
        with self._lock:
            verdict = self._unreachable.get(address)
        return verdict is not None and (verdict[2] or verdict[1] - verdict[0] >= GONE_AFTER_S)

    def statistics(self) -> dict[str, int]:
        """How many processes are remembered unreachable now."""
        with self._lock:
            return {"unreachable": len(self._unreachable)}

    def _found_unreachable(self, address: str, now: float, final: bool) -> None:
        with self._lock:
            earlier = self._unreachable.pop(address, None)
            self._unreachable[address] = (earlier[0] if earlier is not None else now, now, final)
            while len(self._unreachable) > VERDICTS_MAX:
                self._unreachable.popitem(last=False)
