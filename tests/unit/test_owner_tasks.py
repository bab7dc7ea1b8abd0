"""The owner's decisions about pending tasks, over plain data (no processes)."""

import pytest

from ember.exceptions import (
    ActorDiedError,
    EmberTaskError,
    InfeasibleResourceError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ember.scheduler._owner._tasks import (
    Claim,
    Fail,
    Finish,
    Ignore,
    PendingTask,
    Resubmit,
    Warn,
    after_failure_report,
    after_result,
    after_scheduler_died,
)
from ember.scheduler._spec import FailureCause, TaskKind, TaskSpec


def pending(attempt=0, max_retries=3, kind=TaskKind.NORMAL, retry_exceptions=False):
    spec = TaskSpec(b"t" * 16, kind, b"j" * 4, "owner", b"f" * 16, "f", [], None, 1, (), max_retries, attempt,
                    None, b"a" * 16 if kind != TaskKind.NORMAL else None, None, 0, None)
    return PendingTask(spec, (), {}, retry_exceptions)


def no_error():
    raise AssertionError("the error was read though no rule needs it")


# -- results ----------------------------------------------------------------------------------------------

def test_a_result_for_a_stale_attempt_is_ignored():
    assert after_result(pending(attempt=2), 1, False, no_error) == Ignore()
    assert after_result(None, 0, False, no_error) == Ignore()


def test_a_success_finishes():
    assert after_result(pending(), 0, False, no_error) == Finish()


def test_an_exception_finishes_unless_retry_exceptions_says_otherwise():
    assert after_result(pending(), 0, True, no_error) == Finish()
    assert after_result(pending(retry_exceptions=True), 0, True, lambda: ValueError()) == Resubmit()


def test_retry_exceptions_by_type_looks_at_the_task_errors_cause():
    task = pending(retry_exceptions=[KeyError])
    wrapped = EmberTaskError("f", "traceback", KeyError("k"))
    assert after_result(task, 0, True, lambda: wrapped) == Resubmit()
    other = EmberTaskError("f", "traceback", ValueError("v"))
    assert after_result(task, 0, True, lambda: other) == Finish()


def test_no_retries_left_cancelled_or_an_actor_constructor_finish():
    assert after_result(pending(attempt=3, retry_exceptions=True), 3, True, lambda: ValueError()) == Finish()
    cancelled = pending(retry_exceptions=True)
    cancelled.cancelled = True
    assert after_result(cancelled, 0, True, no_error) == Finish()
    creation = pending(kind=TaskKind.ACTOR_CREATION, retry_exceptions=True)
    assert after_result(creation, 0, True, no_error) == Finish()


def test_an_unreadable_error_finishes():
    assert after_result(pending(retry_exceptions=True), 0, True, lambda: None) == Finish()


# -- failure reports ----------------------------------------------------------------------------------------

def test_a_worker_died_resubmits_while_retries_are_left_then_fails_with_worker_crashed():
    assert after_failure_report(pending(attempt=2), 2, FailureCause.WORKER_DIED, "killed") == Resubmit()
    action = after_failure_report(pending(attempt=3), 3, FailureCause.WORKER_DIED, "killed")
    assert isinstance(action, Fail) and isinstance(action.error, WorkerCrashedError) and not action.infeasible


def test_a_report_for_a_stale_attempt_is_ignored():
    assert after_failure_report(pending(attempt=1), 0, FailureCause.WORKER_DIED, "") == Ignore()


def test_unschedulable_is_a_warning_not_a_failure():
    assert after_failure_report(None, 0, FailureCause.UNSCHEDULABLE, "waits") == Warn("waits")


@pytest.mark.parametrize("cause", [FailureCause.CANCELLED, FailureCause.WORKER_DIED])
def test_a_cancelled_task_fails_as_cancelled(cause):
    task = pending()
    task.cancelled = True
    action = after_failure_report(task, 0, cause, "")
    assert isinstance(action, Fail) and isinstance(action.error, TaskCancelledError)


def test_infeasible_and_actor_died():
    action = after_failure_report(pending(), 0, FailureCause.INFEASIBLE, "no GPU")
    assert isinstance(action, Fail) and action.infeasible and isinstance(action.error, InfeasibleResourceError)
    action = after_failure_report(pending(kind=TaskKind.ACTOR_CALL), 0, FailureCause.ACTOR_DIED, "gone")
    assert isinstance(action, Fail) and isinstance(action.error, ActorDiedError)


# -- a scheduler restart --------------------------------------------------------------------------------------

def test_after_a_scheduler_restart_a_task_sent_as_logged_is_claimed_others_go_again():
    logged = pending()
    logged.as_logged = True
    assert after_scheduler_died(logged) == Claim()
    assert after_scheduler_died(pending()) == Resubmit()


def test_after_a_scheduler_restart_a_replay_runs_again_even_without_retries():
    replay = pending(attempt=5, max_retries=0)
    replay.replay = True
    assert after_scheduler_died(replay) == Resubmit()


def test_after_a_scheduler_restart_cancelled_and_exhausted_tasks_fail():
    cancelled = pending()
    cancelled.cancelled = True
    action = after_scheduler_died(cancelled)
    assert isinstance(action, Fail) and isinstance(action.error, TaskCancelledError)
    action = after_scheduler_died(pending(attempt=3))
    assert isinstance(action, Fail) and isinstance(action.error, WorkerCrashedError)
