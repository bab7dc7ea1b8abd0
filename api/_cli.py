"""The ``ember`` command line."""

from __future__ import annotations

import click


@click.group(help="ember: a Ray-compatible runtime with durable lineage.")
@click.version_option(package_name="ember-runtime")
def main() -> None:
    pass


@main.command(help="Run a short workload on a fresh local cluster and report what it did.")
@click.option("--size-mb", default=400, show_default=True, help="Size of the large numpy object.")
def demo(size_mb: int) -> None:
    from ember._demo import run_demo

    raise SystemExit(run_demo(size_mb=size_mb, echo=click.echo))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 30s, 15m, 12h, 7d or 2w") from None
    if seconds < 0:
        raise click.BadParameter("a duration cannot be negative")
    return seconds


@main.command(help="Delete finished jobs older than --older-than from the lineage log, with what they owned.")
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 7d, 12h, 30m (plain numbers are seconds).")
@click.option("--gcs-url", default=None, help="PostgreSQL URL of the log (default: EMBER_GCS_URL, else the embedded one).")
@click.option("--dry-run", is_flag=True, help="Count what would go, delete nothing.")
def prune(older_than: str, gcs_url: str | None, dry_run: bool) -> None:
    from ember.lineage import prune as prune_log

    report = prune_log(_duration(older_than), gcs_url=gcs_url, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"jobs ended before {report.cutoff:%Y-%m-%d %H:%M:%S %Z}: {verb} {report.jobs}")
    for table, count in report.deleted.items():
        if count:
            click.echo(f"  {table:<17} {count:>10,} rows")


from ember._cli_inspect import lineage_command, list_command  # noqa: E402  (after main exists)
from ember._cli_replay import replay_command  # noqa: E402
from ember._cli_cluster import start_command, status_command, stop_command  # noqa: E402
from ember._cli_dashboard import dashboard_command  # noqa: E402
from ember._cli_inspect import timeline_command  # noqa: E402

main.add_command(start_command)
main.add_command(stop_command)
main.add_command(status_command)
main.add_command(list_command)
main.add_command(lineage_command)
main.add_command(replay_command)
main.add_command(dashboard_command)
main.add_command(timeline_command)

if __name__ == "__main__":
    main()
