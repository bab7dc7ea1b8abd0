"""What a restarted actor reads from the log to find its state again.

A restarting actor either replays its logged calls (a plain actor) or starts
from its constructor and newest checkpoint only (a concurrent actor, or one
created with ``restart_from="constructor"``). These functions read what
either needs, in one short-lived connection whose reads wait out a
PostgreSQL restart, and return it as plain data; the executor carries it out
(``Executor._replay_calls``, ``Executor._restore_without_replay``). They
never touch the actor's instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.scheduler._owner._links import PEER_CONNECT_TIMEOUT_S
from ember.scheduler._protocol import Op
from ember.scheduler._restart_loop import LoopDecision, decide, ended_by_itself

if TYPE_CHECKING:
    from ember.scheduler._owner import Owner

log = logging.getLogger("ember.executor")

COVERED_CALLS_MAX = 10_000  # calls before a checkpoint whose resending is recognised
CALLER_FLUSH_WAIT_S = 10.0  # a restarting actor waits this long for its last caller's log (a stopped caller)
# An actor whose replay ran the call that ended it stays up this long, at most, for the callers of the
# calls replayed before it to send them again and take their outcomes (``Executor._end_when_claimed``).
CLAIM_WAIT_S = 10.0


def save_checkpoint(core: Any, instance: Any, actor_name: str, actor_id: bytes, call_seq: int) -> None:
    """Log the actor's ``save_checkpoint()`` after its call ``call_seq``: replay starts after it.

    A failure to save is not the call's failure; replay just starts further back.
    """
    import cloudpickle

    if core.gcs is None:
        return
    try:
        data = cloudpickle.dumps(instance.save_checkpoint())
    except Exception:
        log.exception("actor %s: save_checkpoint() failed; replay will start from an older one", actor_name)
        return
    core.gcs.checkpoint(actor_id, call_seq, data)


@dataclass(frozen=True)
class Replay:
    """A replaying restart's reading of the log."""

    checkpoint: tuple[int, bytes] | None  # (the place it was saved after, its data): the newest one
    covered: set[bytes] | None  # the calls that checkpoint folds in
    calls: list[tuple]  # the calls logged after it, in order: (place, task id, method, args, kwargs, num_returns)
    decision: LoopDecision  # which of them to run again (``_restart_loop``)
    finished: set[bytes]  # those of them whose caller took a result in: nobody sends them again


@dataclass(frozen=True)
class Restore:
    """A restart from the constructor (and the newest checkpoint): what the log says it leaves out."""

    checkpoint: tuple[int, bytes] | None
    covered: set[bytes]
    after: int  # the place the checkpoint was saved after; 0 without one
    lost: list[tuple]  # the calls logged after it, not run again


def _source(core: Owner) -> Any:
    """A connection to the log for reading an actor's calls; None when nothing is logged."""
    from ember.lineage import ReplaySource
    from ember.scheduler._session import log_conninfo

    conninfo = log_conninfo(core.session)
    return ReplaySource(conninfo) if conninfo is not None else None  # its reads wait out a PostgreSQL restart


def read_replay(core: Owner, actor_id: bytes, keeps_checkpoints: bool, death: str | None) -> Replay | None:
    """The newest checkpoint, the calls after it and what to run again; None when nothing is logged.

    ``death``: how the previous process ended, as the scheduler described it.
    """
    source = _source(core)
    if source is None:
        return None
    try:
        after = 0
        covered = None
        checkpoint = source.latest_checkpoint(actor_id) if keeps_checkpoints else None
        if checkpoint is not None:
            after = checkpoint[0]
            covered = source.calls_through(actor_id, after, COVERED_CALLS_MAX)
        calls = source.actor_calls(actor_id, after)
        # Calls whose results reached a caller may be logged only by that
        # caller so far: all of them were made by the caller of the last
        # logged call (see ``ResultSender.send``). Have it commit them, then read on.
        if flush_last_caller(core, actor_id, source.last_caller(actor_id)):
            calls += source.actor_calls(actor_id, calls[-1][0] if calls else after)
        finished = source.finished([call[1] for call in calls])
        decision = decide(calls, finished, source.restart_marks(actor_id), ended_by_itself(death))
    finally:
        source.close()
    return Replay(checkpoint, covered, calls, decision, finished)


def read_restore(core: Owner, actor_id: bytes, use_checkpoint: bool) -> Restore | None:
    """The newest checkpoint (if ``use_checkpoint``) and the calls logged after it; None when nothing is logged."""
    source = _source(core)
    if source is None:
        return None
    try:
        checkpoint = source.latest_checkpoint(actor_id) if use_checkpoint else None
        after = checkpoint[0] if checkpoint is not None else 0
        covered = source.calls_through(actor_id, after, COVERED_CALLS_MAX) if checkpoint is not None else set()
        lost = source.actor_calls(actor_id, after)
    finally:
        source.close()
    return Restore(checkpoint, covered, after, lost)


def flush_last_caller(core: Owner, actor_id: bytes, caller: str | None) -> bool:
    """Ask the process at ``caller`` to commit its log; False if it is gone or did not answer."""
    if not caller:
        return False
    try:
        conn = core.links.peer(caller, timeout_s=PEER_CONNECT_TIMEOUT_S)
        return bool(conn.call(Op.FLUSH_LOG, actor_id, timeout_s=CALLER_FLUSH_WAIT_S))
    except Exception as exc:  # noqa: BLE001 - a dead or stuck caller: what it alone saw died with it
        log.info("actor %s: its last caller %s did not commit its log (%s); replaying what is logged",
                 actor_id.hex(), caller, exc)
        return False
