"""``runtime_env`` on a real one-node cluster: env_vars and Ray's merge rules, working_dir, py_modules,
excludes, pip into a cached venv, workers never shared between environments, a failed set-up's typed
error, and ``ember replay`` of a task in its environment after its cluster is gone.

The job itself runs in an environment (``init(runtime_env=...)``), so every task here inherits it.
The pip test needs the package index: it is skipped only when ``pip download`` of its package fails
(the index unreachable), and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ember
from ember.exceptions import InvalidOptionError, RuntimeEnvSetupError

BOUND_S = 120.0
PIP_BOUND_S = 400.0
PIP_PACKAGE = "termcolor==2.4.0"  # small, pure Python, not one of ember's dependencies
JOB_ENV = {"env_vars": {"EMBER_T_JOB": "job", "EMBER_T_BOTH": "job"}}


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> Iterator[None]:
    ember.init(num_cpus=2, runtime_env=JOB_ENV)
    try:
        yield
    finally:
        ember.shutdown()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working_dir with a module, a data file and what excludes leave out; a package and a module beside."""
    root = tmp_path_factory.mktemp("renv")
    wd = root / "wd"
    (wd / "build").mkdir(parents=True)
    (wd / "renv_helper.py").write_text("ANSWER = 42\n")
    (wd / "input.txt").write_text("from the working_dir\n")
    (wd / "build" / "huge.bin").write_bytes(b"0" * 1000)
    (wd / "debug.log").write_text("noise")
    package = root / "renv_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("NAME = 'renv_pkg'\n")
    (root / "renv_single.py").write_text("def twice(x):\n    return 2 * x\n")
    return root


@ember.remote
def environ(*names: str) -> tuple[dict[str, str | None], int]:
    return {name: os.environ.get(name) for name in names}, os.getpid()


@ember.remote
def parent_and_child() -> tuple[dict, dict]:
    """A child with no runtime_env of its own inherits its parent's; one with its own merges over it."""
    plain = ember.get(environ.remote("EMBER_T_JOB", "EMBER_T_TASK", "EMBER_T_BOTH"))[0]
    merged = ember.get(environ.options(runtime_env={"env_vars": {"EMBER_T_BOTH": "child"}})
                       .remote("EMBER_T_JOB", "EMBER_T_TASK", "EMBER_T_BOTH"))[0]
    return plain, merged


def test_env_vars_merge_key_by_key_over_the_jobs_and_children_inherit() -> None:
    names = ("EMBER_T_JOB", "EMBER_T_TASK", "EMBER_T_BOTH")
    assert ember.get(environ.remote(*names), timeout=BOUND_S)[0] == {
        "EMBER_T_JOB": "job", "EMBER_T_TASK": None, "EMBER_T_BOTH": "job"}
    task_env = {"env_vars": {"EMBER_T_TASK": "task", "EMBER_T_BOTH": "task"}}
    assert ember.get(environ.options(runtime_env=task_env).remote(*names), timeout=BOUND_S)[0] == {
        "EMBER_T_JOB": "job", "EMBER_T_TASK": "task", "EMBER_T_BOTH": "task"}
    plain, merged = ember.get(parent_and_child.options(runtime_env=task_env).remote(), timeout=BOUND_S)
    assert plain == {"EMBER_T_JOB": "job", "EMBER_T_TASK": "task", "EMBER_T_BOTH": "task"}
    assert merged == {"EMBER_T_JOB": "job", "EMBER_T_TASK": "task", "EMBER_T_BOTH": "child"}
    assert ember.get_runtime_context().runtime_env == JOB_ENV


def test_two_environments_never_share_a_worker() -> None:
    first = environ.options(runtime_env={"env_vars": {"EMBER_T_TASK": "a"}})
    second = environ.options(runtime_env={"env_vars": {"EMBER_T_TASK": "b"}})
    runs = ember.get([f.remote("EMBER_T_TASK") for _ in range(6) for f in (first, second, environ)],
                     timeout=BOUND_S)
    pids: dict[str | None, set[int]] = {}
    for seen, pid in runs:
        pids.setdefault(seen["EMBER_T_TASK"], set()).add(pid)
    assert set(pids) == {"a", "b", None}
    assert not (pids["a"] & pids["b"]) and not (pids["a"] & pids[None]) and not (pids["b"] & pids[None])


@ember.remote
def look_around() -> dict:
    import renv_helper  # from the working_dir
    import renv_pkg  # py_modules: a package
    import renv_single  # py_modules: one file

    return {"cwd": os.getcwd(), "answer": renv_helper.ANSWER, "input": Path("input.txt").read_text(),
            "listing": sorted(p.name for p in Path(".").iterdir()), "package": renv_pkg.NAME,
            "twice": renv_single.twice(4), "env": ember.get_runtime_context().runtime_env}


def test_working_dir_py_modules_and_excludes(project: Path) -> None:
    env = {"working_dir": str(project / "wd"), "excludes": ["build/", "*.log"],
           "py_modules": [str(project / "renv_pkg"), str(project / "renv_single.py")]}
    seen = ember.get(look_around.options(runtime_env=env).remote(), timeout=BOUND_S)
    assert seen["answer"] == 42 and seen["input"] == "from the working_dir\n"
    assert seen["listing"] == ["input.txt", "renv_helper.py"]  # build/ and *.log excluded
    assert seen["package"] == "renv_pkg" and seen["twice"] == 8
    assert seen["cwd"] != str(project / "wd")  # a copy unpacked on the node, by hash
    assert seen["cwd"].endswith(seen["env"]["working_dir"]["hash"])
    assert seen["env"]["env_vars"] == JOB_ENV["env_vars"]  # the job's, merged under it


@ember.remote
class EnvActor:
    def __init__(self) -> None:
        self.at_start = os.environ.get("EMBER_T_TASK")

    def seen(self) -> tuple[str | None, str | None, str]:
        return self.at_start, os.environ.get("EMBER_T_JOB"), Path("input.txt").read_text()


def test_an_actor_runs_in_its_environment(project: Path) -> None:
    actor = EnvActor.options(runtime_env={"env_vars": {"EMBER_T_TASK": "actor"},
                                          "working_dir": str(project / "wd")}).remote()
    assert ember.get(actor.seen.remote(), timeout=BOUND_S) == ("actor", "job", "from the working_dir\n")
    ember.kill(actor)


@ember.remote(max_restarts=1, max_task_retries=1)  # the next call may be in flight as it dies
class Restartable:
    def seen(self) -> tuple[str | None, int, str]:
        return os.environ.get("EMBER_T_TASK"), os.getpid(), Path("input.txt").read_text()


def test_an_actor_restarts_in_its_environment(project: Path) -> None:
    actor = Restartable.options(runtime_env={"env_vars": {"EMBER_T_TASK": "again"},
                                             "working_dir": str(project / "wd")}).remote()
    value, pid, text = ember.get(actor.seen.remote(), timeout=BOUND_S)
    os.kill(pid, signal.SIGKILL)  # the actor's process, which this module's cluster started
    again, new_pid, text_again = ember.get(actor.seen.remote(), timeout=BOUND_S)
    assert (value, text) == (again, text_again) == ("again", "from the working_dir\n") and new_pid != pid
    ember.kill(actor)


def test_bad_environments_get_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="env_vars must be a dict of str to str"):
        environ.options(runtime_env={"env_vars": {"A": 1}})
    with pytest.raises(InvalidOptionError, match="'conda' are not supported"):
        EnvActor.options(runtime_env={"conda": {"dependencies": ["x"]}})
    with pytest.raises(InvalidOptionError, match="is not a folder on this machine"):
        environ.options(runtime_env={"working_dir": str(tmp_path / "missing")})


def _index_reachable() -> str | None:
    """Why ``pip download`` of the test's package fails (None: it works, the index is reachable)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                               str(Path(os.environ["EMBER_HOME"]) / "pip-probe"), PIP_PACKAGE],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "pip download timed out"
    return None if done.returncode == 0 else (done.stderr or done.stdout)[-300:]


@ember.remote
def pip_probe() -> tuple[str, str, int]:
    import termcolor

    return termcolor.__file__, sys.prefix, os.getpid()


@ember.remote
def has_termcolor() -> bool:
    try:
        import termcolor  # noqa: F401
    except ImportError:
        return False
    return True


def test_pip_installs_once_into_a_cached_venv_the_worker_runs_in() -> None:
    why = _index_reachable()
    if why is not None:
        pytest.skip(f"the package index is unreachable from here: {why}")
    env = {"pip": [PIP_PACKAGE]}
    first = ember.get(pip_probe.options(runtime_env=env).remote(), timeout=PIP_BOUND_S)
    assert first[0].startswith(first[1]) and "/runtime_env/pip/" in first[1]  # imported from the venv
    again = ember.get(pip_probe.options(runtime_env={"pip": {"packages": [PIP_PACKAGE]}}).remote(),
                      timeout=BOUND_S)
    assert again[1] == first[1]  # the same environment: the cached venv
    assert not ember.get(has_termcolor.remote(), timeout=BOUND_S)  # not in the cluster's own environment
    with pytest.raises(RuntimeEnvSetupError, match="pip install failed"):
        ember.get(pip_probe.options(runtime_env={"pip": ["ember-test-no-such-package==0.0.1"]}).remote(),
                  timeout=PIP_BOUND_S)


def test_replay_runs_a_logged_task_in_its_environment_after_the_cluster_is_gone(tmp_path: Path) -> None:
    wd = tmp_path / "replay_wd"
    wd.mkdir()
    (wd / "renv_replayed.py").write_text("BASE = 100\n")
    program = textwrap.dedent(f"""
        import os, ember
        ember.init(num_cpus=1)

        @ember.remote
        def compute(x):
            import renv_replayed
            with open("renv_replayed.py") as source:  # in the working_dir, the current folder
                return renv_replayed.BASE + x + int(os.environ["EMBER_T_ADD"]) + len(source.read())

        ref = compute.options(runtime_env={{"working_dir": {str(wd)!r}, "env_vars": {{"EMBER_T_ADD": "5"}}}}).remote(1)
        print(ember.get(ref, timeout=60), ref.hex()[:32])
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=BOUND_S)
    assert done.returncode == 0, done.stderr
    value, task_id = done.stdout.split()[-2:]
    for child in wd.iterdir():  # the folder is gone too: replay gets it from the log
        child.unlink()
    wd.rmdir()
    cwd = os.getcwd()
    result = ember.lineage.replay_task(task_id)
    assert str(result.value) == value == str(100 + 1 + 5 + len("BASE = 100\n"))
    assert result.verdict is ember.lineage.Verdict.MATCHES
    assert "EMBER_T_ADD" not in os.environ and os.getcwd() == cwd  # the environment is left after


@ember.remote
class HookedActor:
    def seen(self) -> tuple[str | None, int, int]:
        import logging

        return os.environ.get("EMBER_T_HOOKED"), os.getpid(), logging.getLogger().level


@ember.remote
def root_log_level() -> tuple[int, int]:
    import logging

    return logging.getLogger().level, os.getpid()


def test_worker_process_setup_hook_runs_once_in_each_worker_before_its_work(tmp_path: Path) -> None:
    marks = tmp_path / "hooked"
    marks.mkdir()

    def setup() -> None:  # Ray's example: logging set up in every worker process
        import logging

        os.environ["EMBER_T_HOOKED"] = str(os.getpid())
        with open(marks / str(os.getpid()), "x"):  # a second run in one process would raise here
            pass
        logging.basicConfig(level=logging.INFO)

    env = {"worker_process_setup_hook": setup}
    for seen, pid in ember.get([environ.options(runtime_env=env).remote("EMBER_T_HOOKED", "EMBER_T_JOB")
                                for _ in range(6)], timeout=BOUND_S):
        assert seen == {"EMBER_T_HOOKED": str(pid), "EMBER_T_JOB": "job"}
        assert (marks / str(pid)).exists()
    level, _ = ember.get(root_log_level.options(runtime_env=env).remote(), timeout=BOUND_S)
    assert level == 20  # the root logger is the hook's to set: ember's own log goes to its file apart
    hooked, pid, level = ember.get(HookedActor.options(runtime_env=env).remote().seen.remote(), timeout=BOUND_S)
    assert (hooked, level) == (str(pid), 20) and (marks / str(pid)).exists()
    seen, _ = ember.get(environ.remote("EMBER_T_HOOKED"), timeout=BOUND_S)
    assert seen == {"EMBER_T_HOOKED": None}  # an environment without the hook: other workers


def test_a_setup_hook_by_name_and_a_failing_one(project: Path, tmp_path: Path) -> None:
    hooks = tmp_path / "renv_hooks.py"
    hooks.write_text("import os\n\ndef mark():\n    os.environ['EMBER_T_HOOKED'] = 'by name'\n")
    env = {"py_modules": [str(hooks)], "worker_process_setup_hook": "renv_hooks.mark"}
    seen, _ = ember.get(environ.options(runtime_env=env).remote("EMBER_T_HOOKED"), timeout=BOUND_S)
    assert seen == {"EMBER_T_HOOKED": "by name"}

    def broken() -> None:
        raise KeyError("no config here")

    with pytest.raises(RuntimeEnvSetupError, match="worker_process_setup_hook .*broken failed: KeyError"):
        ember.get(environ.options(runtime_env={"worker_process_setup_hook": broken}).remote("X"), timeout=BOUND_S)
    with pytest.raises(InvalidOptionError, match="worker_process_setup_hook must be a function or the"):
        environ.options(runtime_env={"worker_process_setup_hook": 3})
    with pytest.raises(InvalidOptionError, match="worker_process_setup_hook must be a function or the"):
        environ.options(runtime_env={"worker_process_setup_hook": "no_module_named"})


def test_replay_runs_the_setup_hook_from_the_log_after_the_cluster_is_gone() -> None:
    program = textwrap.dedent("""
        import os, ember

        def setup():
            os.environ["EMBER_T_REPLAY_HOOK"] = "7"

        ember.init(num_cpus=1, runtime_env={"worker_process_setup_hook": setup})

        @ember.remote
        def read():
            return int(os.environ["EMBER_T_REPLAY_HOOK"]) * 6

        ref = read.remote()
        print(ember.get(ref, timeout=60), ref.hex()[:32])
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=BOUND_S)
    assert done.returncode == 0, done.stderr
    value, task_id = done.stdout.split()[-2:]
    try:
        result = ember.lineage.replay_task(task_id)
        assert str(result.value) == value == "42"
        assert result.verdict is ember.lineage.Verdict.MATCHES
    finally:
        os.environ.pop("EMBER_T_REPLAY_HOOK", None)  # the hook ran in this process: its effects stay
