"""``ember replay``: run a logged task (or a whole job) again in this process, from the log alone.

Works with no cluster running. Exit status: 0 when the replay reproduced
what the log records (or the log has nothing to compare with), 1 when an
outcome differs from the log, 2 when the task could not be replayed.
"""

from __future__ import annotations

import bdb
import collections
import os
import sys

import click

from ember.exceptions import EmberOperationError, EmberUserError

EXIT_DIFFERS = 1
EXIT_NOT_REPLAYED = 2


class _NotReplayed(click.ClickException):
    exit_code = EXIT_NOT_REPLAYED


@click.command("replay", help="Run a logged task again in this process and compare it with the log "
                              "(TASK_ID), or a whole job (--job), stopping at the first difference.")
@click.argument("task_id", required=False)
@click.option("--job", default=None, metavar="JOB_ID", help="Replay every task of this job (an id or unique prefix).")
@click.option("--pdb", "debugger", is_flag=True,
              help="Stop in pdb at the task's first line, and post-mortem at its exception.")
@click.option("--gcs-url", default=None, help="PostgreSQL URL of the log (default: EMBER_GCS_URL, else the embedded one).")
def replay_command(task_id: str | None, job: str | None, debugger: bool, gcs_url: str | None) -> None:
    if (task_id is None) == (job is None):
        raise click.UsageError("give a TASK_ID, or --job JOB_ID (not both)")
    if job is not None and debugger:
        raise click.UsageError("--pdb replays one task: give its TASK_ID instead of --job")
    # As `python script.py` would: the job's own modules import from where it ran.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        code = _one(task_id, debugger, gcs_url) if task_id is not None else _job(job, gcs_url)
    except (EmberUserError, EmberOperationError) as exc:
        raise _NotReplayed(str(exc)) from None
    except bdb.BdbQuit:
        raise _NotReplayed("you quit the debugger: the replay was abandoned") from None
    raise SystemExit(code)


def _one(task_id: str, debugger: bool, gcs_url: str | None) -> int:
    from ember.lineage import Verdict, replay_task
    from ember.lineage import short_repr

    result = replay_task(task_id, debugger=debugger, gcs_url=gcs_url)
    click.echo(f"replayed {result.name} (task {result.task_id})")
    for step in result.rebuilt:
        click.echo(f"  first: {step}")
    if result.verdict in (Verdict.NEEDS_CLUSTER, Verdict.INPUT_UNAVAILABLE):
        click.echo(result.verdict.value)
        return EXIT_NOT_REPLAYED
    if result.failed:
        click.echo(f"raised {type(result.error).__name__}: {result.error}")
        click.echo((result.traceback or "").rstrip())
    else:
        click.echo(f"result: {short_repr(result.value)}")
    click.echo(result.explain())
    if result.recorded.error and (result.failed or result.verdict.differs):
        click.echo("the log's error: " + result.recorded.error.strip().splitlines()[-1])
    return EXIT_DIFFERS if result.verdict.differs else 0


def _job(job: str | None, gcs_url: str | None) -> int:
    from ember.lineage import replay_job

    bar = None
    position = 0

    def advance(done: int, total: int) -> None:
        nonlocal bar, position
        if not sys.stderr.isatty():
            return  # a bar for people only: a log or a pipe gets the summary
        if bar is None:
            bar = click.progressbar(length=total, label=f"replaying {total} tasks", file=sys.stderr)
            bar.__enter__()
        bar.update(done - position)
        position = done

    try:
        report = replay_job(job, gcs_url=gcs_url, on_task=advance)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    tally = collections.Counter(result.verdict.name.lower().replace("_", " ") for result in report.results)
    click.echo(f"job {report.job_id}: replayed {len(report.results)} of {report.tasks_total} logged tasks "
               f"({', '.join(f'{n} {what}' for what, n in tally.most_common()) or 'none'})")
    for skipped_task, why in report.skipped:
        click.echo(f"  not replayed: task {skipped_task}: {why}")
    stopped = report.stopped_at
    if stopped is None:
        click.echo("every replayed task's outcome matches the log")
        return 0
    click.echo(f"stopped at {stopped.name} (task {stopped.task_id}): {stopped.explain()}")
    if stopped.failed:
        click.echo((stopped.traceback or "").rstrip())
    elif stopped.recorded.error:
        click.echo("the log's error: " + stopped.recorded.error.strip().splitlines()[-1])
    return EXIT_DIFFERS
