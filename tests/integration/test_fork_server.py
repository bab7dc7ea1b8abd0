"""Workers forked by their node's fork server: adopted by the scheduler, each its own process, and no
worse off when the fork server dies."""

from __future__ import annotations

import os
import time

import psutil

import ember
from tests.fix_cluster import poll_until
from tests.fix_kill import live_pids, sigkill

BOUND_S = 60.0


@ember.remote
def whoami():
    import numpy as np

    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode()
    # An id this process makes (a put's id starts with its process's id prefix), and a random draw.
    return os.getpid(), os.getppid(), cmdline, ember.put(0).hex()[:16], float(np.random.rand())


@ember.remote
class Pinger:
    def where(self):
        return os.getpid(), os.getppid()


@ember.remote
def leave_an_orphan():
    import subprocess

    # sh starts sleep in the background and exits: the sleep is orphaned, and the
    # nearest subreaper above it (the scheduler) adopts it.
    out = subprocess.run(["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                         timeout=30)
    return int(out.stdout.strip())


def test_workers_are_forked_and_adopted_by_the_scheduler_each_with_its_own_identity(fault_cluster):
    [scheduler] = live_pids("scheduler")
    assert len(live_pids("forkserver")) == 1
    actors = [Pinger.remote() for _ in range(4)]
    where = ember.get([a.where.remote() for a in actors], timeout=BOUND_S)
    assert len({pid for pid, _ in where}) == 4
    assert {ppid for _, ppid in where} == {scheduler}  # adopted: it dies with the scheduler, as a spawned one would
    seen = ember.get([whoami.remote() for _ in range(8)], timeout=BOUND_S)
    by_pid = {pid: rest for pid, *rest in seen}
    assert all(ppid == scheduler and "_fork_server" in cmdline for ppid, cmdline, _, _ in by_pid.values())
    assert len({prefix for _, _, prefix, _ in by_pid.values()}) == len(by_pid)  # ids never repeat across workers
    assert len({draw for *_, draw in seen}) == len(seen)  # numpy's global random state is each worker's own


def test_killing_the_fork_server_kills_no_worker_and_workers_still_start(fault_cluster):
    actor = Pinger.remote()
    pid, _ = ember.get(actor.where.remote(), timeout=BOUND_S)
    [server] = live_pids("forkserver")
    sigkill([server])
    assert ember.get(actor.where.remote(), timeout=BOUND_S)[0] == pid  # the same process, alive
    # New workers start at once (spawned while no server is up), and a new server serves the next ones.
    more = [Pinger.remote() for _ in range(3)]
    assert len(ember.get([a.where.remote() for a in more], timeout=BOUND_S)) == 3
    deadline = time.monotonic() + BOUND_S
    while True:
        assert time.monotonic() < deadline, "no new fork server"
        fresh = [Pinger.remote() for _ in range(2)]
        ember.get([a.where.remote() for a in fresh], timeout=BOUND_S)
        servers = live_pids("forkserver")
        if servers and servers != [server]:
            break
        time.sleep(0.1)
    assert psutil.pid_exists(pid)


def test_an_orphan_a_task_leaves_behind_is_reaped_by_the_scheduler(fault_cluster):
    orphan = ember.get(leave_an_orphan.remote(), timeout=BOUND_S)

    def reaped() -> bool:
        try:
            psutil.Process(orphan).status()  # running, or a zombie nobody reaped
            return False
        except psutil.NoSuchProcess:
            return True

    assert poll_until(reaped, BOUND_S), f"pid {orphan} left as a zombie"


def test_a_new_fork_server_comes_even_when_a_worker_start_found_the_old_one_dead(fault_cluster):
    [server] = live_pids("forkserver")
    sigkill([server])
    actor = Pinger.remote()  # its start finds the server dead first, most likely, and spawns instead
    assert ember.get(actor.where.remote(), timeout=BOUND_S)
    # No worker starts from here on: the scheduler's tick alone must bring a new server.
    assert poll_until(lambda: [p for p in live_pids("forkserver") if p != server], BOUND_S, poll_s=0.1)


def test_a_fork_while_the_start_waits_for_a_dying_server_leaves_the_waiter_its_pipe(tmp_path):
    # Regression (a soak): a restarted scheduler waits for its fork server's imports while its listener
    # already takes work. The server was killed; a worker start found it dead and closed its reply pipe
    # under the waiting start, which crashed (TypeError reading a closed pipe) and took the scheduler down.
    import signal
    import threading

    from ember.scheduler._fork_server import ForkServer

    for _ in range(5):
        server = ForkServer(tmp_path, "regression-node", tmp_path)
        server.start()
        pid = server.pid
        outcome: dict[str, object] = {}

        def start_waits() -> None:
            try:
                outcome["up"] = server.wait_ready(BOUND_S)
            except BaseException as exc:  # noqa: BLE001 - what the scheduler's start died of
                outcome["error"] = exc

        waiter = threading.Thread(target=start_waits)
        waiter.start()
        try:
            assert poll_until(lambda: server._lock.locked(), BOUND_S, poll_s=0.001)
            os.kill(pid, signal.SIGKILL)  # this test's own server, by pid
            forked = [server.fork() for _ in range(50)]  # worker starts meanwhile: each spawns instead
            waiter.join(BOUND_S)
            assert not waiter.is_alive()
            assert "error" not in outcome, outcome
            assert outcome["up"] is False and forked == [None] * 50  # the death seen once, by the waiter
        finally:
            waiter.join(BOUND_S)
            server.stop()
