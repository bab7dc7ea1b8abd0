"""Starting and stopping clusters: nothing is left behind."""

import os
import signal
import time

import psutil
import pytest

import ember
from tests.fix_cluster import run_script

LIST_PIDS = """
import ember, json
ember.init(num_cpus=2)
@ember.remote
def f(): return 1
ember.get(f.remote())
print("PIDS", json.dumps([p.pid for p in ember.chaos.processes()]), flush=True)
"""


def _gone(pids, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _pids(stdout):
    import json

    line = next(l for l in stdout.splitlines() if l.startswith("PIDS"))
    return json.loads(line.split(" ", 1)[1])


def test_shutdown_and_reinit_leave_no_process_behind():
    ember.init(num_cpus=2)
    pids = [p.pid for p in ember.chaos.processes()]
    assert ember.is_initialized()
    with pytest.raises(RuntimeError, match="already"):
        ember.init()
    ember.shutdown()
    assert not ember.is_initialized()
    assert _gone(pids)
    ember.init(num_cpus=1)
    assert ember.get(ember.put("again")) == "again"
    ember.shutdown()


def test_closing_a_drivers_owner_raises_nothing_and_wakes_a_waiting_get():
    from ember.scheduler import _context

    ember.init(num_cpus=1)
    try:
        owner = _context.require_core()
        ref = owner.put("kept")
        assert ember.get(ref) == "kept"

        @ember.remote
        def slow():
            time.sleep(60)

        pending = slow.remote()
        outcome = []

        def getter():
            try:
                ember.get(pending)
            except BaseException as exc:  # the close must end the get, with a typed error
                outcome.append(exc)

        import threading

        thread = threading.Thread(target=getter, daemon=True)
        thread.start()
        time.sleep(0.5)
        owner.close()  # raised AttributeError before: close used a lock only the executor has
        thread.join(10)
        assert not thread.is_alive(), "a get waiting in another thread was not woken by the close"
        assert outcome and isinstance(outcome[0], ember.exceptions.ObjectLostError)
    finally:
        ember.shutdown()


def test_interpreter_exit_leaves_no_process_behind():
    result = run_script(LIST_PIDS)
    assert result.returncode == 0, result.stderr
    assert _gone(_pids(result.stdout))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_signalled_driver_leaves_no_process_behind(sig):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", LIST_PIDS + "\nimport signal\nsignal.pause()\n"],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = _pids(proc.stdout.readline())
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert _gone(pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_cluster_started_from_a_thread_outlives_the_thread():
    # PR_SET_PDEATHSIG follows the thread that forked: children must not be
    # forked from short-lived threads.
    import threading

    t = threading.Thread(target=lambda: ember.init(num_cpus=2))
    t.start()
    t.join()
    try:
        time.sleep(0.5)

        @ember.remote
        def f():
            return 5

        assert ember.get(f.remote(), timeout=30) == 5
    finally:
        ember.shutdown()


def test_actor_outlives_the_connection_that_caused_its_spawn():
    ember.init(num_cpus=1)
    try:
        @ember.remote
        def make():
            return 1

        ember.get(make.remote())

        @ember.remote
        class A:
            def ping(self):
                return "pong"

        a = A.remote()
        assert ember.get(a.ping.remote(), timeout=30) == "pong"
        workers = [p for p in ember.chaos.processes() if p.kind == "worker" and p.actor_id is None]
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.5)
        assert ember.get(a.ping.remote(), timeout=30) == "pong"
    finally:
        ember.shutdown()


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the embedded server's own user exists only under root")
ONE_TASK = """
import ember
ember.init(num_cpus=1)
@ember.remote
def inc(x): return x + 1
print("VALUE", ember.get(inc.remote(41)), flush=True)
"""


def _run_with_home(home, code=ONE_TASK):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EMBER_HOME": str(home)})


@ROOT_ONLY
def test_root_with_a_private_0700_home_starts_and_lets_only_the_server_user_through():
    import shutil
    import stat
    import tempfile

    home = tempfile.mkdtemp(prefix="ember-private-home-")  # 0700, as `mktemp -d` makes it
    try:
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
        proc = _run_with_home(home)
        assert proc.returncode == 0, proc.stderr
        assert "VALUE 42" in proc.stdout
        mode = os.stat(home).st_mode
        assert mode & 0o007 == 0  # others gain nothing: the one user passes by an ACL entry
        assert os.getxattr(home, "system.posix_acl_access")
        again = _run_with_home(home)  # the history is there for the next run
        assert again.returncode == 0, again.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


@ROOT_ONLY
def test_root_with_a_home_under_a_closed_folder_is_refused_with_the_fix():
    import shutil
    import tempfile

    closed = tempfile.mkdtemp(prefix="ember-closed-")  # 0700, and not ember's to open
    try:
        home = os.path.join(closed, "home")
        os.mkdir(home, 0o755)
        proc = _run_with_home(home)
        assert proc.returncode != 0
        error = proc.stderr.strip().splitlines()[-1]
        assert "ClusterStartError" in error and closed in error and "ember-pg" in error
        assert "setfacl -m u:ember-pg:x" in error and "EMBER_HOME" in error
        assert not os.path.exists(os.path.join(home, "pg", "data", "PG_VERSION"))
    finally:
        shutil.rmtree(closed, ignore_errors=True)
