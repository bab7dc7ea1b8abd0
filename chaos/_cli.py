"""The ``chaos`` command line: run programs under a failure schedule, and replay one.

``chaos run`` starts the program with two environment variables that make
every process of the cluster it starts with ``ember.init()`` report to this
command; faults are chosen from what reported. Nothing else on the machine
is touched.
"""

from __future__ import annotations

import os
import random
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from ember.chaos._faults import PAUSE_TARGETS, PROCESS_TARGETS, Target
from ember.chaos._netfaults import Direction, NetFaultUnavailableError, Peer, require_delay
from ember.chaos._schedule import Options, plan

DEFAULT_EVERY_S = 5.0


def _kinds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[Target, ...]:
    if not value:
        return ()
    allowed = PROCESS_TARGETS if param.name == "kill" else PAUSE_TARGETS
    kinds = []
    for part in value.split(","):
        part = part.strip().lower()
        if part == Target.NODE and part not in allowed:
            raise click.BadParameter("a node cannot be paused (stopping its daemon stops none of its other "
                                     "processes); kill it, or pause its scheduler or store", ctx, param)
        if part not in allowed:
            raise click.BadParameter(f"{part!r} is not a process kind; use a comma list of "
                                     f"{', '.join(allowed)}", ctx, param)
        kinds.append(Target(part))
    return tuple(dict.fromkeys(kinds))


def _on_start(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values:
        name, _, nth = value.partition(":")
        try:
            count = int(nth) if nth else 1
        except ValueError:
            raise click.BadParameter(f"{value!r}: write FUNCTION or FUNCTION:N (N a whole number)", ctx, param) \
                from None
        if not name or count < 1:
            raise click.BadParameter(f"{value!r}: write FUNCTION or FUNCTION:N with N >= 1", ctx, param)
        out.append((name, count))
    return tuple(out)


_PEERS = {"gcs": Peer.GCS, "postgres": Peer.POSTGRES, "pg": Peer.POSTGRES, "node": Peer.NODE}


def _partitions(ctx: click.Context, param: click.Parameter,
                values: tuple[str, ...]) -> tuple[tuple[Peer, Direction], ...]:
    out = []
    for value in values:
        for part in value.split(","):
            peer, _, direction = part.strip().lower().partition(":")
            if peer not in _PEERS or direction not in ("", *map(str, Direction)):
                raise click.BadParameter(
                    f"{part!r}: write PEER[:DIRECTION], PEER one of gcs, postgres, node (the node is cut from the "
                    f"GCS's node and the drivers, from PostgreSQL, or from another node) and DIRECTION one of "
                    f"both (the default), out (the node's packets to it dropped), in (its packets to the node)",
                    ctx, param)
            out.append((_PEERS[peer], Direction(direction or Direction.BOTH)))
    return tuple(dict.fromkeys(out))


def _delay(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    delay, _, jitter = value.partition(":")
    try:
        pair = (int(delay), int(jitter or 0))
    except ValueError:
        raise click.BadParameter(f"{value!r}: write MS or MS:JITTER, whole milliseconds", ctx, param) from None
    if not 0 < pair[0] <= 10_000 or not 0 <= pair[1] <= 10_000:
        raise click.BadParameter(f"{value!r}: MS in 1..10000, JITTER in 0..10000", ctx, param)
    try:
        require_delay()
    except NetFaultUnavailableError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return pair


def _percent(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0 < value <= 100:
        raise click.BadParameter("must be a percentage, greater than 0 and at most 100", ctx, param)
    return value


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0", ctx, param)
    return value


@click.group(help="Failure injection for ember clusters: run a program while its processes are killed.")
@click.version_option(package_name="ember-runtime")
def main() -> None:
    pass


@main.command(
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
    help="""Run COMMAND (usually `python script.py`, a program that calls ember.init()) while faults hit the
    processes of the cluster it starts.

    \b
    Faults fire on a clock (--every or --rate, for --duration seconds), after every N finished tasks
    (--every-tasks), or as the Nth task of a function starts (--on-start). Each clock or task-count fault
    is drawn, with --seed, from the kinds given to --kill, --pause, --restart-postgres, --partition, --delay
    and --loss, every 5 s unless told otherwise. With no fault option at all, a worker is killed every 5
    seconds. Network faults hit the nodes of a LocalCluster(network=True) the program starts (as root), each
    for --net-duration seconds; the report's timeline has each one's start and heal.

    \b
    Shows progress on stderr, then a summary: faults by kind, tasks re-run, objects rebuilt, actors
    restarted, objects lost, the program's exit. Exits with the program's code; 3 if the program exited 0
    but ember lost objects it could not rebuild; 124 if it ran past --timeout.

    \b
    Example:
      chaos run --kill worker,store --every 2 --seed 7 --report run.json -- python train.py
""")
@click.option("--kill", "kill", callback=_kinds, metavar="KINDS",
              help="SIGKILL processes of these kinds: a comma list of worker, store, scheduler, gcs, and node "
                   "(a whole node of a multi-node cluster, never the driver's or the head).")
@click.option("--pause", "pause", callback=_kinds, metavar="KINDS",
              help="SIGSTOP processes of these kinds for 0.2-2 s, then SIGCONT (the kinds of --kill but node).")
@click.option("--restart-postgres", is_flag=True,
              help="Also restart the embedded PostgreSQL (pg_ctl restart -m fast); not a server given by URL.")
@click.option("--partition", "partition", multiple=True, callback=_partitions, metavar="PEER[:DIRECTION]",
              help="Cut a node of a LocalCluster(network=True) from PEER (gcs, postgres or node) for --net-duration "
                   "seconds, DIRECTION both (default), out or in; nftables in its namespace. Repeatable.")
@click.option("--delay", "delay_ms", callback=_delay, metavar="MS[:JITTER]",
              help="Delay a node's packets by MS (plus or minus JITTER) milliseconds for --net-duration seconds "
                   "(tc netem on its link, or where the kernel has no netem an NFQUEUE and a delay process in its "
                   "namespace; refused at once, naming what is missing, where neither works).")
@click.option("--loss", "loss_percent", type=float, callback=_percent, metavar="PERCENT",
              help="Drop PERCENT of a node's packets each way for --net-duration seconds (nftables).")
@click.option("--net-duration", "net_duration_s", type=float, default=5.0, show_default=True, callback=_positive,
              metavar="SECONDS", help="How long each network fault lasts before it heals.")
@click.option("--every", "every_s", type=float, callback=_positive, metavar="SECONDS",
              help="A fault every SECONDS seconds.")
@click.option("--rate", "rate_per_s", type=float, callback=_positive, metavar="PER_SECOND",
              help="Faults at random moments, PER_SECOND per second on average (seeded).")
@click.option("--every-tasks", type=click.IntRange(min=1), metavar="N",
              help="A fault after every N finished tasks (counted across the cluster): replays exactly.")
@click.option("--on-start", "on_start", multiple=True, callback=_on_start, metavar="FUNCTION[:N]",
              help="Kill the worker as the Nth task of FUNCTION (default the 1st) starts; `Class.method` for "
                   "an actor call. Repeatable.")
@click.option("--seed", type=int, default=None, help="Seed of the schedule (default: random, printed).")
@click.option("--duration", "duration_s", type=float, default=60.0, show_default=True, callback=_positive,
              metavar="SECONDS", help="Faults fire only during the first SECONDS of the run.")
@click.option("--max-faults", "faults_max", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop injecting after N faults have fired.")
@click.option("--timeout", "timeout_s", type=float, default=None, callback=_positive, metavar="SECONDS",
              help="Kill the program if it runs longer, and report a hang (exit 124).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report (schedule, timeline, tally) here; `chaos replay` reads it.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the run's report as one self-contained HTML file (throughput with the faults "
                   "shaded, time to recover from each), as the dashboard's chaos page shows it.")
@click.option("--quiet", is_flag=True, help="No progress lines; the summary only.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(kill: tuple[Target, ...], pause: tuple[Target, ...], restart_postgres: bool,
        partition: tuple[tuple[Peer, Direction], ...], delay_ms: tuple[int, int] | None, loss_percent: float | None,
        net_duration_s: float, every_s: float | None,
        rate_per_s: float | None, every_tasks: int | None, on_start: tuple[tuple[str, int], ...],
        seed: int | None, duration_s: float, faults_max: int | None, timeout_s: float | None, report_path: Path | None,
        html_path: Path | None, quiet: bool, command: tuple[str, ...]) -> None:
    if every_s is not None and rate_per_s is not None:
        raise click.UsageError("give --every or --rate, not both")
    network = bool(partition or delay_ms or loss_percent)
    if not (kill or pause or restart_postgres or on_start or network):
        kill = (Target.WORKER,)
    if (kill or pause or restart_postgres or network) and not (every_s or rate_per_s or every_tasks):
        every_s = DEFAULT_EVERY_S
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    options = Options(kill, pause, restart_postgres, every_s, rate_per_s, every_tasks, on_start, duration_s, seed,
                      faults_max, partition, delay_ms, loss_percent, net_duration_s)
    planned = plan(options)
    if not planned:
        raise click.UsageError(f"the schedule is empty: with --duration {duration_s:g} no fault would fire")
    rerun = _rerun_line(options, timeout_s, command)
    _run_and_report(list(command), planned, duration_s, faults_max, timeout_s, report_path, quiet, seed,
                    _options_json(options), os.getcwd(), rerun, html_path)


@main.command(help="""Run the program of a chaos report again under the same schedule: the same faults, at the
    same times after start, after the same task counts and at the same task starts.""")
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this run's report here (default: none; the original is never overwritten).")
@click.option("--timeout", "timeout_s", type=float, default=None, callback=_positive, metavar="SECONDS",
              help="Kill the program if it runs longer, and report a hang (exit 124).")
@click.option("--quiet", is_flag=True, help="No progress lines; the summary only.")
def replay(report: Path, report_path: Path | None, timeout_s: float | None, quiet: bool) -> None:
    from ember.chaos._report import ReportError, read

    try:
        replayable = read(report)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    if report_path is not None and report_path.resolve() == report.resolve():
        raise click.UsageError("--report would overwrite the report being replayed; give another file")
    cwd = replayable.cwd if os.path.isdir(replayable.cwd) else os.getcwd()
    rerun = f"chaos replay {shlex.quote(str(report))}"
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        _run_and_report(replayable.command, replayable.planned, replayable.duration_s, replayable.faults_max,
                        timeout_s, report_path, quiet, replayable.seed, {"replay_of": str(report.resolve())}, cwd,
                        rerun)
    finally:
        os.chdir(previous)


def _run_and_report(command: list[str], planned: list, duration_s: float, faults_max: int | None,
                    timeout_s: float | None,
                    report_path: Path | None, quiet: bool, seed: int | None, options: dict[str, Any], cwd: str,
                    rerun: str, html_path: Path | None = None) -> None:
    from ember.chaos import _report
    from ember.chaos._record import LiveRecord
    from ember.chaos._run import run_program

    tty = sys.stderr.isatty()

    def progress(line: str, final: bool) -> None:
        if tty:
            click.echo("\r\033[K" + line + ("\n" if final else ""), err=True, nl=False)
        elif not final:
            click.echo(line, err=True)

    record = LiveRecord(command, seed, options, [p.to_json() for p in planned])
    try:
        result = run_program(command, planned, duration_s, faults_max, timeout_s, None if quiet else progress,
                             observe=record.observe)
    except FileNotFoundError as exc:
        record.close()
        raise click.ClickException(str(exc)) from None
    if report_path is not None:
        _report.write(report_path, _report.to_json(result, seed, options, cwd))
    run_id = _finish_record(record, result)
    if html_path is not None and run_id is not None:
        _write_html(html_path, run_id)
    elif html_path is not None:
        result.notes.append(f"no HTML report written to {html_path}: the run is not in the lineage log")
    click.echo(_report.summary(result, seed, report_path, rerun), err=True)
    sys.exit(result.exit_code)


def _finish_record(record: Any, result: Any) -> str | None:
    """Log the run's end for the dashboard; a log out of reach is a note in the summary, not a failure."""
    import psycopg

    from ember.exceptions import EmberError

    try:
        run_id = record.finish(result)
    except (psycopg.Error, EmberError, OSError) as exc:
        result.notes.append(f"the run was not recorded in the lineage log: {exc}")
        return None
    result.notes.append(f"recorded in the lineage log as chaos run {run_id} (ember dashboard shows it)")
    return run_id


def _write_html(path: Path, run_id: str) -> None:
    from ember.lineage import open_log
    from ember.lineage import standalone_report

    with open_log() as log:
        page = standalone_report(log, run_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


def _options_json(options: Options) -> dict[str, Any]:
    return {"kill": [str(t) for t in options.kill], "pause": [str(t) for t in options.pause],
            "restart_postgres": options.restart_postgres, "every_s": options.every_s,
            "rate_per_s": options.rate_per_s, "every_tasks": options.every_tasks,
            "on_start": [f"{f}:{n}" for f, n in options.on_start], "duration_s": options.duration_s,
            "max_faults": options.faults_max, "partition": [f"{p}:{d}" for p, d in options.partition],
            "delay_ms": list(options.delay_ms) if options.delay_ms else None, "loss_percent": options.loss_percent,
            "net_duration_s": options.net_duration_s}


def _rerun_line(options: Options, timeout_s: float | None, command: tuple[str, ...]) -> str:
    parts = ["chaos", "run"]
    if options.kill:
        parts += ["--kill", ",".join(map(str, options.kill))]
    if options.pause:
        parts += ["--pause", ",".join(map(str, options.pause))]
    if options.restart_postgres:
        parts.append("--restart-postgres")
    for peer, direction in options.partition:
        parts += ["--partition", f"{peer}:{direction}"]
    if options.delay_ms is not None:
        parts += ["--delay", f"{options.delay_ms[0]}:{options.delay_ms[1]}"]
    if options.loss_percent is not None:
        parts += ["--loss", f"{options.loss_percent:g}"]
    if options.partition or options.delay_ms is not None or options.loss_percent is not None:
        parts += ["--net-duration", f"{options.net_duration_s:g}"]
    for flag, value in (("--every", options.every_s), ("--rate", options.rate_per_s),
                        ("--every-tasks", options.every_tasks)):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for function, nth in options.on_start:
        parts += ["--on-start", f"{function}:{nth}"]
    parts += ["--seed", str(options.seed), "--duration", f"{options.duration_s:g}"]
    if options.faults_max is not None:
        parts += ["--max-faults", str(options.faults_max)]
    if timeout_s is not None:
        parts += ["--timeout", f"{timeout_s:g}"]
    return shlex.join([*parts, "--", *command])


if __name__ == "__main__":
    main()
