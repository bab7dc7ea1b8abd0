"""The lineage log's readers across a cut from PostgreSQL, on real namespaces (docs/fault-tolerance.md).

A reader on a node cut from PostgreSQL with a query in flight must fail
within seconds with psycopg's OperationalError (libpq's keepalives and
``tcp_user_timeout``, ``lineage/_pg_connect.py``), as the writer does, not
wait out the kernel's ~15 minutes of retransmissions; once healed, the
reconnecting reader reads again. Both readers are checked: ``ReplaySource`` (what
rebuilds and actor replays read) and ``LineageLog`` (the CLI, the dashboard).

The readers run in a process inside the node's namespace, so the cut is
the node's. Every wait is bounded; the process and the cluster are this
test's own.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

from ember.chaos import LocalCluster, NetFault

BOUND_S = 60.0  # a reader with the options fails in ~5 s; one without waits ~15 minutes
REPO = Path(__file__).resolve().parents[2]

_READERS = """
import sys
import psycopg
from ember.lineage._reader import LineageLog
from ember.lineage._replay_source import ReplaySource

url = sys.argv[1]
replay = ReplaySource(url, wait_s=0.5)  # one try past the cut: its own retries are not what is checked
log = LineageLog(url)
reads = {"replay": lambda: replay.query("SELECT 1", ())[0][0], "log": lambda: log.query("SELECT 1")[0][0]}
for name, read in reads.items():
    assert read() == 1
print("ready", flush=True)
for line in sys.stdin:
    for name, read in reads.items():
        try:
            print(name, "read", read(), flush=True)
        except psycopg.OperationalError as exc:
            print(name, "failed", type(exc).__name__, flush=True)
    print("done", flush=True)
"""


def _lines(proc: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _round(proc: subprocess.Popen, lines: queue.Queue) -> dict[str, str]:
    """Ask the readers to read once; what each did, once both are done (bounded)."""
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    outcome: dict[str, str] = {}
    while True:
        try:
            line = lines.get(timeout=BOUND_S)
        except queue.Empty:
            raise AssertionError(f"a reader still waits {BOUND_S:g}s into a cut from PostgreSQL: {outcome}") from None
        if line == "done":
            return outcome
        name, what, *_ = line.split()
        outcome[name] = what


def test_a_reader_cut_from_postgres_fails_within_seconds_and_reads_again_once_healed() -> None:
    with LocalCluster(nodes=[{"num_cpus": 1}], network=True) as cluster:
        node = cluster.nodes[0]
        assert cluster.network is not None
        with subprocess.Popen([*cluster.network.exec_prefix(cluster.role_of(node)), sys.executable, "-c", _READERS,
                               cluster.postgres.tcp_url], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) as proc:
            try:
                lines = _lines(proc)
                assert lines.get(timeout=BOUND_S) == "ready"
                cut = cluster.net_fault(NetFault.partition("postgres", BOUND_S), node)
                try:
                    assert _round(proc, lines) == {"replay": "failed", "log": "failed"}
                finally:
                    cluster.heal(cut)
                # The reconnecting reader reads again on the healed network (a LineageLog whose read failed
                # is closed; its user opens another, as the dashboard does).
                assert _round(proc, lines)["replay"] == "read"
            finally:
                proc.kill()
