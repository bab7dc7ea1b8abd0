"""``ember dashboard``: the lineage log in a browser; and starting one beside a head node (``start --dashboard``).

The command opens the log (the embedded server under ``$EMBER_HOME``,
started for the occasion if no cluster runs, or ``--gcs-url`` /
``EMBER_GCS_URL``), listens on loopback unless ``--bind`` says otherwise,
prints one line, the URL with its token, and serves until interrupted or
terminated. Beside a head node it runs as a process of its own that ends
when the head's daemon does.

It must never write to the log, and never listen beyond loopback without
saying so on stderr.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ember import _settings
from ember._init_dashboard import PORT_DEFAULT, exposed_warning

URL_WAIT_S = 60.0  # the embedded PostgreSQL may have to start first
FOLLOW_POLL_S = 1.0
_GCS_URL_HELP = "PostgreSQL URL of the log (default: EMBER_GCS_URL, else the embedded one under $EMBER_HOME)."


@click.command("dashboard", help="Serve a read-only web UI over the lineage log: jobs, tasks, lineage graphs, "
                                 "timelines, actors, nodes and chaos runs, live or after the cluster is gone. "
                                 "Prints the URL to open (with its token) on one line.")
@click.option("--port", default=PORT_DEFAULT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free one).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless you say otherwise: the token is then all that guards it).")
@click.option("--gcs-url", default=None, help=_GCS_URL_HELP)
@click.option("--follow-pid", default=None, hidden=True,
              help="PID:START_TICKS of a process whose end ends the dashboard (the head node's daemon).")
def dashboard_command(port: int, bind: str, gcs_url: str | None, follow_pid: str | None) -> None:
    from ember.lineage import Dashboard, locate_log
    from ember.scheduler import _tls

    conninfo, release = locate_log(gcs_url)
    try:
        dashboard = Dashboard(conninfo, token=_settings.load().dashboard_token)
        try:
            url = dashboard.bind(bind, port)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
        if not _tls.is_loopback(bind):
            click.echo(f"warning: {exposed_warning(bind)}", err=True)
        click.echo(url)
        sys.stdout.flush()
        _serve_until_stopped(dashboard, follow_pid)
    finally:
        if release is not None:
            release()


def _serve_until_stopped(dashboard: Any, follow_pid: str | None) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    server = threading.Thread(target=dashboard.serve_forever, name="dashboard-http", daemon=True)
    server.start()
    followed = _parse_follow(follow_pid)
    while not stop.wait(FOLLOW_POLL_S):
        if followed is not None and not _same_process(*followed):
            break
        if not server.is_alive():
            break
    dashboard.shutdown()


def _parse_follow(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    pid, _, ticks = text.partition(":")
    try:
        return int(pid), int(ticks)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected PID:START_TICKS") from None


def _same_process(pid: int, ticks: int) -> bool:
    from ember.scheduler._procutil import process_start_ticks

    return process_start_ticks(pid) == ticks


def start_beside(node: Any, port: int) -> str:
    """Start ``ember dashboard`` in a session of its own beside a head node; returns the URL it printed.

    It ends when the node's daemon does (``--follow-pid``); its output goes to
    ``dashboard.log`` in the node's session folder.
    """
    log_path = Path(node.session_dir) / "dashboard.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ember._cli", "dashboard", "--port", str(port),
             "--follow-pid", f"{node.pid}:{node.pid_start_ticks}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + URL_WAIT_S
    while time.monotonic() < deadline:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.startswith("http")]
        if lines:
            return lines[0]
        if proc.poll() is not None:
            raise click.ClickException(f"the dashboard did not start (exit {proc.returncode}); its output "
                                       f"({log_path}):\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    proc.kill()  # ours, started above: its pid is its own
    proc.wait(5.0)
    raise click.ClickException(f"the dashboard printed no URL within {URL_WAIT_S:.0f}s; see {log_path}")
