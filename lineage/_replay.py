"""Replaying logged tasks in this process, from the lineage log alone: ``ember replay``.

``replay_task`` runs one logged task again, here, from its logged code and
arguments; arguments named by object id are fetched or rebuilt as
``_replay_plan.py`` decides (ancestors run here too, in order). The result is
compared with the log's: by content hash for a task that finished, by outcome
for one that failed. ``replay_job`` does this for every task of a job in the
order they were logged, and stops at the first whose outcome differs.

What replay cannot do, and says so:

- A task that calls ember while it runs (``.remote``, ``get``, ``put``) needs
  a cluster: with none started in this process, its replay ends in
  ``NeedsClusterError`` (or, for the replayed task itself, the verdict
  ``NEEDS_CLUSTER``). Call ``ember.init()`` first in a script of your own and
  those calls run on that fresh cluster.
- ObjectRefs nested inside an argument's value (a list of refs) are passed as
  they were, as refs naming the original objects (Ray's rule); ``ember.get``
  on one needs a cluster that still has that object.
- Values are kept in memory for the whole replay (a job replay keeps every
  result until it ends).
- A task logged with a ``runtime_env`` runs in it (``_env``): its packages
  come from the log and are unpacked, and its pip list installed, once per
  machine into ``replay_env_cache()``; for the task's run its variables are
  set, its working_dir is the current folder, and its working_dir, py_modules
  and the pip venv's packages come first on ``sys.path`` (all put back after).
  It runs in this interpreter, not the venv's: a package this process has
  imported already (numpy, say) stays the version it imported.

It must never write to the lineage log, and never start a cluster.
"""

from __future__ import annotations

import bdb
import contextlib
import enum
import pdb
import reprlib
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from ember.exceptions import RuntimeEnvSetupError
from ember.lineage._env_setup import entered_env, prepare_env, run_setup_hook
from ember.lineage._replay_log import Recorded, ReplayReads
from ember.lineage._runtime_env import RuntimeEnv
from ember.lineage._states import TaskState
from ember.scheduler._context import no_auto_init
from ember.scheduler._object_ref import is_dynamic, stream_end
from ember.scheduler._session import runtime_root
from ember.scheduler._spec import READY_METHOD, STREAMING, item_id, ready
from ember.lineage._replay_plan import (
    FunctionUnavailableError,
    NeedsClusterError,
    NotReplayableError,
    ReplayInputError,
    Step,
    StepKind,
    plan_replay,
)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 300


class Verdict(enum.Enum):
    MATCHES = "matches the recorded result"
    DIFFERS = "differs from the recorded result: this task is not deterministic"
    NO_RECORDED_HASH = "the log has no hash for this result"
    FAILED_AS_RECORDED = "failed, and the log records that it failed too"
    FAILED_UNLIKE_LOG = "failed, but the log records that it finished"
    FINISHED_UNLIKE_LOG = "finished, but the log records that it failed"
    NOT_RECORDED = "the log records no outcome for this task (it never finished, or was cancelled)"
    NEEDS_CLUSTER = "not replayed: it calls ember (.remote, get, put) and no cluster runs in this process"
    INPUT_UNAVAILABLE = "not replayed: one of its arguments could not be made in this replay"

    @property
    def differs(self) -> bool:
        return self in (Verdict.DIFFERS, Verdict.FAILED_UNLIKE_LOG, Verdict.FINISHED_UNLIKE_LOG)


@dataclass(frozen=True)
class ReplayResult:
    """One task replayed: what it gave, what the log says it gave then, and the verdict."""

    task_id: str
    name: str  # ``f``, ``Class.method`` or ``Class`` (an actor's constructor)
    values: tuple  # one per declared return; empty if it failed
    error: BaseException | None
    traceback: str | None  # the replayed exception's, from the task's own frames
    recorded: Recorded
    recorded_hashes: tuple[bytes | None, ...]
    replayed_hashes: tuple[bytes | None, ...]
    verdict: Verdict
    rebuilt: tuple[str, ...] = ()  # what had to be fetched or run first, in order

    @property
    def value(self) -> Any:
        """The result (a tuple of them for ``num_returns`` > 1)."""
        return self.values[0] if len(self.values) == 1 else self.values

    @property
    def failed(self) -> bool:
        return self.error is not None

    def explain(self) -> str:
        """The verdict in one line, with the hashes it rests on."""
        text = self.verdict.value
        if self.verdict is Verdict.MATCHES:
            return f"{text} (hash {_hex(self.replayed_hashes)})"
        if self.verdict is Verdict.DIFFERS:
            return f"{text} (recorded {_hex(self.recorded_hashes)}, replayed {_hex(self.replayed_hashes)})"
        if self.verdict is Verdict.NO_RECORDED_HASH:
            return (f"{text} (results over 100 KiB are hashed after they are sent and may be missing: "
                    f"see docs/lineage.md); replayed hash {_hex(self.replayed_hashes)}")
        return text


def verdict_of(recorded: Recorded, recorded_hashes: tuple, failed: bool, replayed_hashes: tuple) -> Verdict:
    """Compare a replay's outcome with the log's (pure)."""
    if recorded.state not in (TaskState.FINISHED, TaskState.FAILED):
        return Verdict.NOT_RECORDED
    if failed:
        return Verdict.FAILED_AS_RECORDED if recorded.state == TaskState.FAILED else Verdict.FAILED_UNLIKE_LOG
    if recorded.state == TaskState.FAILED:
        return Verdict.FINISHED_UNLIKE_LOG
    known = [(then, now) for then, now in zip(recorded_hashes, replayed_hashes) if then is not None]
    if any(then != now for then, now in known):
        return Verdict.DIFFERS
    if len(known) < len(replayed_hashes):
        return Verdict.NO_RECORDED_HASH
    return Verdict.MATCHES


def split_returns(num_returns: int, value: Any, label: str) -> list:
    """A task's return value as its result objects, as a worker splits it."""
    if num_returns == 1:
        return [value]
    if num_returns == 0:
        return [None]
    values = list(value)  # a TypeError here is the task's failure, as in a worker
    if len(values) != num_returns:
        raise ValueError(f"{label} declares num_returns={num_returns} but returned {len(values)} values")
    return values


@dataclass(frozen=True)
class _Failure:
    """An object whose creating task failed: a task reading it fails with this error, unrun."""

    error: BaseException


@dataclass(frozen=True)
class _Unavailable:
    """An object replay could not make (its task needs a cluster, or lacks an input)."""

    reason: str
    needs_cluster: bool = False


_MISSING = object()


class _InputFailed(Exception):
    def __init__(self, marker: _Failure | _Unavailable) -> None:
        self.marker = marker


@dataclass
class Replayer:
    """One replay session: the objects, actors and results made so far, over one log."""

    reads: ReplayReads
    objects: dict[bytes, Any] = field(default_factory=dict)
    actors: dict[bytes, Any] = field(default_factory=dict)  # actor id -> instance (or _Failure)
    actor_progress: dict[bytes, int] = field(default_factory=dict)
    results: dict[bytes, ReplayResult] = field(default_factory=dict)
    actor_envs: dict[bytes, Any] = field(default_factory=dict)  # actor id -> its creation's runtime_env
    hooks_run: set[str] = field(default_factory=set)  # environments whose setup hook ran here (once each)

    def plan(self, task_id: bytes) -> list[Step]:
        # Planned against a copy: an actor's progress moves only when its steps run (run_step), so a
        # plan that fails half way leaves no actor marked as having run calls it never ran.
        return plan_replay(self.reads, task_id, set(self.objects), dict(self.actor_progress))

    def replay(self, task_id: bytes, debugger: bool = False) -> ReplayResult:
        """Run ``task_id`` again, its missing inputs first; ``debugger``: under pdb."""
        self.reads.spec(task_id)  # UnknownIdError before anything else
        steps = self.plan(task_id)
        if not steps:  # run already in this session
            return self.results[task_id]
        if steps[-1].kind is StepKind.START_ACTOR:
            spec = self.reads.spec(task_id)
            raise NotReplayableError(
                f"task {task_id.hex()} created actor {spec.function_name}: a constructor has no result to "
                f"compare; replay one of its calls ({spec.function_name}.METHOD in `ember list tasks`), "
                "or the whole job with `ember replay --job`"
            )
        rebuilt = [self.run_step(step, strict=True) for step in steps[:-1]]
        result = self.run_step(steps[-1], debugger=debugger)
        assert isinstance(result, ReplayResult) and result.task_id == task_id.hex(), \
            "the plan ends with the task replayed"
        return _with_rebuilt(result, tuple(r for r in rebuilt if r))

    def run_step(self, step: Step, debugger: bool = False, strict: bool = False) -> Any:
        """Run one step; returns a ReplayResult for a task or call, a description otherwise.

        ``strict``: an ancestor that needs a cluster raises NeedsClusterError
        (a job replay records it instead and goes on).
        """
        match step.kind:
            case StepKind.FETCH:
                from ember.store import ObjectKind, deserialize

                assert step.object_id is not None and step.source is not None
                kind, value = deserialize(self.reads.object_bytes(step.object_id, step.source))
                self.objects[step.object_id] = _Failure(value) if kind == ObjectKind.ERROR else value
                return f"object {step.object_id.hex()} from {step.source.value}"
            case StepKind.START_ACTOR:
                started = self._start_actor(step)
                self.actor_progress[step.actor_id] = step.seq  # type: ignore[index]
                return started
            case StepKind.RUN | StepKind.CALL:
                assert step.task_id is not None
                result = self._run(step, debugger)
                if step.kind is StepKind.CALL:
                    self.actor_progress[step.actor_id] = step.seq  # type: ignore[index]
                if strict and result.verdict is Verdict.NEEDS_CLUSTER:
                    raise NeedsClusterError(
                        f"rebuilding an argument runs {result.name} (task {result.task_id}), which calls ember "
                        "while it runs; no cluster runs in this process: call ember.init() in your own script "
                        "before ember.lineage.replay_task(...)")
                return result
        raise AssertionError(f"unknown step {step!r}")

    # -- running code -------------------------------------------------------------------

    def _start_actor(self, step: Step) -> str:
        import cloudpickle

        assert step.task_id is not None and step.actor_id is not None
        spec = self.reads.spec(step.task_id)
        self.actor_envs[step.actor_id] = spec.runtime_env  # its calls run in it too
        with self._env(spec.runtime_env):
            cls = self.reads.code(spec.function_id, step.task_id)
        try:
            args, kwargs = self._arguments(spec)
            with no_auto_init(), self._env(spec.runtime_env):  # its use of the API says NEEDS_CLUSTER: a replay never starts a cluster
                instance = cls(*args, **kwargs)
                if step.seq:
                    instance.load_checkpoint(cloudpickle.loads(self.reads.checkpoint(step.actor_id, step.seq)))
        except _InputFailed as failed:
            instance = failed.marker
        except Exception as exc:  # the actor is dead: its calls fail, as on a cluster
            from ember.exceptions import ActorDiedError

            instance = _Failure(ActorDiedError(spec.function_name, f"its constructor raised {exc!r} in replay"))
        self.actors[step.actor_id] = instance
        start = f"from its checkpoint after call {step.seq}" if step.seq else "by its constructor"
        return f"actor {spec.function_name} ({step.actor_id.hex()}) rebuilt {start}"

    def _run(self, step: Step, debugger: bool) -> ReplayResult:
        task_id = step.task_id
        assert task_id is not None
        spec = self.reads.spec(task_id)
        label = f"{spec.function_name}.{spec.method}" if step.kind is StepKind.CALL else spec.function_name
        result_ids = [task_id + (i + 1).to_bytes(4, "big") for i in range(max(spec.num_returns, 1))]
        streaming = spec.num_returns == STREAMING
        values: list = []
        error: BaseException | None = None
        marker: _Failure | _Unavailable | None = None
        env = self.actor_envs.get(step.actor_id) if step.kind is StepKind.CALL else spec.runtime_env
        try:
            with self._env(env):
                fn = self._callable(step, spec)
                args, kwargs = self._arguments(spec)
                if streaming:
                    # A generator's objects: its end (how many values), then each value by index, as logged.
                    yielded = list(_call(fn, args, kwargs, debugger))
                    values = [stream_end(task_id, spec.owner_addr, len(yielded), is_dynamic(fn)), *yielded]
                    result_ids += [item_id(task_id, i) for i in range(len(yielded))]
                else:
                    values = split_returns(spec.num_returns, _call(fn, args, kwargs, debugger), label)
        except _InputFailed as failed:  # unrun: an argument is an error, or could not be made
            inner = failed.marker
            marker = inner if isinstance(inner, _Failure) else _Unavailable(inner.reason)
        except (ReplayInputError, FunctionUnavailableError, NeedsClusterError, RuntimeEnvSetupError, bdb.BdbQuit,
                KeyboardInterrupt):
            raise  # the replay's own trouble, or the person at the debugger quit: not the task's outcome
        except BaseException as exc:  # noqa: BLE001 - user code: its exception is the outcome
            marker = _Unavailable(str(exc), needs_cluster=True) if _is_not_initialized(exc) else _Failure(exc)
        recorded = self.reads.recorded(task_id, result_ids)
        recorded_hashes = tuple(recorded.hashes[oid] for oid in result_ids)
        replayed: tuple = ()
        if marker is None:
            try:
                # Each made like the log's (an older log's hashes use another algorithm).
                replayed = tuple(_value_hash(v, then) for v, then in zip(values, recorded_hashes))
            except Exception as exc:  # noqa: BLE001 - a worker fails the task on an unpicklable result
                marker = _Failure(exc)
        for oid, value in zip(result_ids, values if marker is None else [marker] * len(result_ids)):
            self.objects[oid] = value
        if isinstance(marker, _Failure):
            error = marker.error
        if isinstance(marker, _Unavailable):
            verdict = Verdict.NEEDS_CLUSTER if marker.needs_cluster else Verdict.INPUT_UNAVAILABLE
        else:
            verdict = verdict_of(recorded, recorded_hashes, error is not None, replayed)
        result = ReplayResult(task_id.hex(), label, tuple(values) if marker is None else (), error,
                              _user_traceback(error), recorded, recorded_hashes, replayed, verdict)
        self.results[task_id] = result
        return result

    @contextlib.contextmanager
    def _env(self, wire: tuple[str, str] | None) -> Iterator[None]:
        """The task's runtime_env, for as long as it runs (nothing for a task that had none)."""
        if wire is None:
            yield
            return
        prepared = prepare_env(RuntimeEnv(*wire), replay_env_cache(), self.reads.package)
        with entered_env(prepared):
            if prepared.env.hash not in self.hooks_run:
                self.hooks_run.add(prepared.env.hash)
                run_setup_hook(prepared)  # as a worker did before its first task; what it does to this process stays
            yield

    def _callable(self, step: Step, spec: Any) -> Callable:
        if step.kind is StepKind.CALL:
            instance = self.actors[step.actor_id]  # type: ignore[index]
            if isinstance(instance, (_Failure, _Unavailable)):
                raise _InputFailed(instance)
            return ready if spec.method == READY_METHOD else getattr(instance, spec.method)
        return self.reads.code(spec.function_id, spec.task_id)

    def _arguments(self, spec: Any) -> tuple[list, dict]:
        args = [self._decode(a) for a in spec.args]
        kwargs = {k: self._decode(v) for k, v in (spec.kwargs or {}).items()}
        return args, kwargs

    def _decode(self, encoded: tuple) -> Any:
        from ember.scheduler._spec import ArgKind
        from ember.store import ObjectKind, deserialize

        kind = encoded[0]
        if kind == ArgKind.VALUE:
            return encoded[1]
        if kind == ArgKind.INLINE:
            object_kind, value = deserialize(encoded[1])
            if object_kind == ObjectKind.ERROR:
                raise _InputFailed(_Failure(value))
            return value
        value = self.objects.get(encoded[1], _MISSING)
        assert value is not _MISSING, f"the plan makes object {encoded[1].hex()} before a task reads it"
        if isinstance(value, (_Failure, _Unavailable)):
            raise _InputFailed(value)
        return value


def replay_env_cache() -> Path:
    """Where replays on this machine keep runtime_env packages and pip venvs, by hash (kept between runs):
    ``replay-env`` in ember's runtime folder (``EMBER_RUNTIME_DIR``, default ``$TMPDIR/ember-<uid>``)."""
    return runtime_root() / "replay-env"


def _call(fn: Callable, args: list, kwargs: dict, debugger: bool) -> Any:
    """Call the task's code; under pdb: stop at its first line, and post-mortem at an exception.

    Its use of the API raises NotInitializedError (the verdict NEEDS_CLUSTER): a replay never starts a cluster.
    """
    if not debugger:
        with no_auto_init():
            return fn(*args, **kwargs)
    try:
        with no_auto_init():
            return pdb.Pdb().runcall(fn, *args, **kwargs)
    except bdb.BdbQuit:
        raise
    except Exception as exc:
        print(f"the task raised {type(exc).__name__}: {exc}; post-mortem (q to go on):", flush=True)
        pdb.post_mortem(_task_frames(exc))
        raise


def _value_hash(value: Any, like: bytes | None) -> bytes:
    from ember.store import value_hash

    return value_hash(value, like)


def _is_not_initialized(exc: BaseException) -> bool:
    from ember.exceptions import NotInitializedError

    return isinstance(exc, NotInitializedError)


def _user_traceback(error: BaseException | None) -> str | None:
    """The error's traceback without this module's frames (the task's own, from its first line)."""
    if error is None:
        return None
    return "".join(traceback.format_exception(type(error), error, _task_frames(error)))


def _task_frames(error: BaseException) -> Any:
    """The error's traceback from the task's first frame on (replay's and pdb's own frames dropped)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in (__file__, bdb.__file__):
        tb = tb.tb_next
    return tb


def _with_rebuilt(result: ReplayResult, rebuilt: tuple) -> ReplayResult:
    from dataclasses import replace

    described = tuple(r if isinstance(r, str) else f"ran {r.name} (task {r.task_id})" for r in rebuilt)
    return replace(result, rebuilt=described)


def _hex(hashes: tuple) -> str:
    return ", ".join(h.hex() if h is not None else "none" for h in hashes)


def short_repr(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - a repr that raises is shown as such
        return f"<repr() raised {type(exc).__name__}>"


@dataclass(frozen=True)
class JobReplay:
    """A job replayed, in the order its tasks were logged, up to the first that differs from the log."""

    job_id: str
    tasks_total: int
    results: tuple[ReplayResult, ...]  # in the order they ran (ancestors before their tasks)
    stopped_at: ReplayResult | None  # the first task whose outcome differs from the log's
    skipped: tuple[tuple[str, str], ...] = ()  # (task id, why) for tasks that could not be replayed

    @property
    def differs(self) -> bool:
        return self.stopped_at is not None


def replay_task(task_id: str, *, debugger: bool = False, gcs_url: str | None = None) -> ReplayResult:
    """Run one logged task again in this process and compare its outcome with the log's.

    ``debugger``: stop in pdb at the task's first line, and post-mortem at its
    exception. Raises UnknownIdError, FunctionUnavailableError,
    ReplayInputError or NeedsClusterError when the task cannot be replayed.
    """
    from ember.lineage._ids import TASK_ID_HEX, UnknownIdError, id_bytes

    raw = id_bytes(task_id)
    if len(task_id) != TASK_ID_HEX:
        raise UnknownIdError(f"{task_id!r} is an object id; replay takes a task id ({TASK_ID_HEX} hex digits): "
                             "its first 32 digits name the task that made it")
    with _session(gcs_url) as replayer:
        return replayer.replay(raw, debugger)


def replay_job(job: str | None = None, *, gcs_url: str | None = None,
               on_task: Callable[[int, int], None] | None = None) -> JobReplay:
    """Run every logged task of a job again, in order, stopping at the first whose outcome differs.

    ``job``: its id or a unique prefix of it (None: the latest job).
    ``on_task(done, total)`` is called after each task of the job (for a progress bar).
    """
    with _session(gcs_url) as replayer:
        raw_job, order = replayer.reads.job_tasks(job)
        job_id = raw_job.hex()
        ran: list[ReplayResult] = []
        skipped: list[tuple[str, str]] = []
        for index, task_id in enumerate(order, 1):
            try:
                for step in replayer.plan(task_id):
                    outcome = replayer.run_step(step)
                    if isinstance(outcome, ReplayResult):
                        ran.append(outcome)
                        if outcome.verdict.differs:
                            return JobReplay(job_id, len(order), tuple(ran), outcome, tuple(skipped))
            except (ReplayInputError, FunctionUnavailableError, NeedsClusterError, RuntimeEnvSetupError) as exc:
                skipped.append((task_id.hex(), str(exc)))
            if on_task is not None:
                on_task(index, len(order))
        return JobReplay(job_id, len(order), tuple(ran), None, tuple(skipped))


class _session:
    """A Replayer over the log, closed (and the embedded server released) on exit."""

    def __init__(self, gcs_url: str | None) -> None:
        from ember.lineage._reader import locate_log

        self._conninfo, self._release = locate_log(gcs_url)
        self._reads: ReplayReads | None = None

    def __enter__(self) -> Replayer:
        try:
            self._reads = ReplayReads(self._conninfo)
        except BaseException:
            self.__exit__()
            raise
        return Replayer(self._reads)

    def __exit__(self, *exc: object) -> None:
        if self._reads is not None:
            self._reads.close()
        if self._release is not None:
            self._release()
            self._release = None
