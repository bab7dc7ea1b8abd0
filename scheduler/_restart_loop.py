"""Restart-loop detection for a replaying actor: a call that kills its actor again at the same state.

ember restores an actor's state on restart by replaying its logged calls.
A call that kills the process (``os._exit``, a crash in native code) when
run at a given state would then kill it again on every restart: replay
rebuilds that very state, and the call runs again (replayed, or sent again by
its caller). ``decide`` notices it from the log, before any restart is
spent silently:

- each restart that is about to run again the actor's last logged call,
  when that call never finished (no caller took its result in), *marks* it
  (``actor_restarts``: the call and its place in the order);
- a restart that finds such a mark for the same call at the same place, and
  whose previous process ended by itself (an exit or a crash, not a SIGKILL
  or SIGTERM from outside), marks it again and does not run it: the call is
  *poisoned*. Its caller gets ``ActorRestartLoopError`` naming the call and
  the state; the actor lives on in the state before it;
- a poisoned call (two marks) is left out of every later replay.

Sans-IO: plain data in, a decision out; the executor reads the log and
carries it out. It must never read or write anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXTERNAL_KILLS", "LoopDecision", "decide", "ended_by_itself"]

# How a process ends when something outside it stops it (chaos, the OOM killer, ember.kill): never its call's doing.
EXTERNAL_KILLS = ("killed by SIGKILL", "killed by SIGTERM")
POISON_MARKS = 2  # marks of one call at one place that make it poisoned


@dataclass(frozen=True)
class LoopDecision:
    replay: tuple  # the logged calls to run again, in order (poisoned ones left out)
    poisoned: frozenset[bytes]  # task ids of calls never to run again: their callers get the loop error
    mark: tuple[bytes, int] | None  # (task id, place) to mark, durably, before replaying
    newly_poisoned: tuple[bytes, int] | None  # the call this restart found looping


def ended_by_itself(death: str | None) -> bool:
    """Whether the previous process ended by its own doing (as the scheduler described its end)."""
    return bool(death) and not any(kill in death for kill in EXTERNAL_KILLS)  # type: ignore[operator]


def decide(calls: list[tuple], finished: set[bytes], marks: dict[tuple[bytes, int], int],
           self_inflicted: bool) -> LoopDecision:
    """``calls``: the logged calls after the checkpoint, as (place, task id, ...), in order; ``finished``:
    the task ids among them a caller took a result of; ``marks``: the log's marks by (task id, place)."""
    poisoned = {task_id for (task_id, _), count in marks.items() if count >= POISON_MARKS}
    replay = [call for call in calls if call[1] not in poisoned]
    mark = newly = None
    if replay and replay[-1][1] not in finished:
        seq, task_id = replay[-1][0], replay[-1][1]
        if marks.get((task_id, seq), 0) >= 1 and self_inflicted:
            newly = mark = (task_id, seq)
            poisoned.add(task_id)
            replay.pop()
        else:
            mark = (task_id, seq)
    return LoopDecision(tuple(replay), frozenset(poisoned), mark, newly)
