"""A ported Ray program's first contact (issue 19), on clusters of the program's own.

Auto-init on the first use of the API, in fresh interpreters; ``node:<ip>``
resources; refs rebuilt from their ids; requests no node can ever give,
which surface at ``get``/``wait`` and never at ``.remote()``. Everything here
runs real processes: the module's cluster (``cluster``) and the drivers of
``run_script``, whose clusters stop when they exit.
"""

from __future__ import annotations

import json

import psutil
import pytest

import ember
from ember import exceptions as ex
from ember.scheduler._owner_lookup import NO_LIVE_OWNER
from tests.fix_cluster import run_script

pytestmark = pytest.mark.usefixtures("cluster")

GET_TIMEOUT_S = 60.0
AUTO_INIT_LINE = "ember: no ember.init() before the first use of the API"

# The first use of the API in each script, then what the script checks after it.
FIRST_USES = {
    "remote": "@ember.remote\ndef f(x):\n    return x + 1\nassert ember.get(f.remote(1)) == 2",
    "put": "assert ember.get(ember.put('v')) == 'v'",
    "get": "assert ember.get([]) == []",
    "wait": "assert ember.wait([]) == ([], [])",
    "get_actor": (
        "try:\n    ember.get_actor('nobody')\nexcept ValueError:\n    pass\nelse:\n    raise SystemExit('found')"),
}


def _auto_init_script(first_use: str) -> str:
    return f"""
import json
import ember
assert not ember.is_initialized()
{first_use}
facts = {{"initialized": ember.is_initialized(), "session": str(ember._runtime._session.dir),
         "node": ember.get_runtime_context().get_node_id()}}
try:
    ember.init(num_cpus=1)
except RuntimeError as exc:  # Ray's error type
    facts["reinit"] = [type(exc).__name__, str(exc)]
facts["ignored"] = ember.init(ignore_reinit_error=True)["node_id"] == facts["node"]
print(json.dumps(facts))
"""


def _processes_of(session_dir: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(session_dir in part for part in process.info["cmdline"] or ()):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.parametrize("first", sorted(FIRST_USES))
def test_the_first_use_of_the_api_starts_a_local_cluster_that_stops_at_exit(first: str) -> None:
    result = run_script(_auto_init_script(FIRST_USES[first]))
    assert result.returncode == 0, result.stdout + result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["initialized"]
    said = [line for line in result.stderr.splitlines() if line.startswith("ember:")]
    assert len(said) == 1 and said[0].startswith(AUTO_INIT_LINE) and "started a local cluster" in said[0], said
    name, message = facts["reinit"]
    assert name == "AlreadyInitializedError"
    assert "Maybe you called ember.init twice by accident?" in message and "first use of the API" in message
    assert "ignore_reinit_error=True" in message
    assert facts["ignored"]
    assert _processes_of(facts["session"]) == []  # the cluster stopped when the program exited


def test_a_program_that_calls_init_first_is_told_nothing() -> None:
    result = run_script("""
        import ember
        ember.init(num_cpus=1)
        print(ember.get(ember.put(3)))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3" and AUTO_INIT_LINE not in result.stderr


@ember.remote
def inside_a_worker() -> tuple[bool, bool, int]:
    from ember.scheduler import _context

    # A worker is connected from its start: the API uses that connection and never starts a cluster.
    return _context.PROCESS.in_worker, ember._runtime._auto_initialized, ember.get(ember.put(7))


def test_nothing_auto_inits_inside_a_worker() -> None:
    assert ember.get(inside_a_worker.remote(), timeout=GET_TIMEOUT_S) == (True, False, 7)


# -- node:<ip> resources ----------------------------------------------------------------------


@ember.remote
def node_id() -> str:
    return ember.get_runtime_context().get_node_id()


def test_the_node_carries_node_ip_and_a_fraction_of_it_pins_a_task_there() -> None:
    assert ember.cluster_resources()["node:127.0.0.1"] == 1.0
    here = ember.get_runtime_context().get_node_id()
    assert ember.get(node_id.options(resources={"node:127.0.0.1": 0.01}).remote(), timeout=GET_TIMEOUT_S) == here
    (node,) = ember.nodes()
    assert node["NodeManagerAddress"] == "127.0.0.1" and node["Resources"]["node:127.0.0.1"] == 1.0
    assert node["Alive"] and node["alive"] and node["NodeID"] == here


# -- ObjectRef(id) -----------------------------------------------------------------------------


@ember.remote
def times_ten(x: int) -> int:
    return x * 10


@ember.remote
def read_by_hex(text: str) -> int:
    return ember.get(ember.ObjectRef.from_hex(text)) + 1


@ember.remote
def owner_by_hex(text: str) -> str:
    return ember.ObjectRef.from_hex(text).owner_address


@ember.remote
class Putter:
    def put(self, value: object) -> str:
        return ember.put(value).hex()


def test_a_ref_rebuilt_from_its_id_in_the_owner_is_the_same_ref() -> None:
    ref = times_ten.remote(4)
    again = ember.ObjectRef(bytes.fromhex(ref.hex()))
    assert again == ref and again.owner_address == ref.owner_address
    assert ember.get(again, timeout=GET_TIMEOUT_S) == 40
    put = ember.put({"k": 1})
    assert ember.get(ember.ObjectRef.from_hex(put.hex()), timeout=GET_TIMEOUT_S) == {"k": 1}


def test_a_ref_rebuilt_from_its_id_in_another_process_resolves() -> None:
    ref = times_ten.remote(5)
    ember.get(ref, timeout=GET_TIMEOUT_S)
    assert ember.get(read_by_hex.remote(ref.hex()), timeout=GET_TIMEOUT_S) == 51
    # The log names the live owner (the driver, which submitted the task): the value is read from it,
    # and the finished task is not run again.
    assert ember.get(owner_by_hex.remote(ref.hex()), timeout=GET_TIMEOUT_S) == ref.owner_address
    with ember.lineage.open_log() as log:
        assert log.task(ref.task_id().hex()).rebuilt == 0


def test_a_ref_rebuilt_from_its_id_resolves_after_its_owner_is_gone() -> None:
    putter = Putter.remote()
    text = ember.get(putter.put.remote("outlives its owner"), timeout=GET_TIMEOUT_S)
    ember.kill(putter)  # the owner of the put is gone: Ray could not resolve the id now
    ref = ember.ObjectRef.from_hex(text)
    assert not ref.owner_address.endswith(NO_LIVE_OWNER)  # the log names the putter, which is dead: adopted
    assert ember.get(ref, timeout=GET_TIMEOUT_S) == "outlives its owner"


def test_a_ref_to_an_id_the_log_does_not_know_is_a_typed_error_naming_it() -> None:
    unknown = bytes(20)
    with pytest.raises(ex.UnknownObjectRefError, match=unknown.hex()) as caught:
        ember.ObjectRef(unknown)
    assert isinstance(caught.value, ex.EmberUserError) and caught.value.object_id_hex == unknown.hex()
    ref = times_ten.remote(1)
    ember.get(ref, timeout=GET_TIMEOUT_S)
    beyond = ref.task_id().binary() + (7).to_bytes(4, "big")  # result 7 of a task with one
    with pytest.raises(ex.UnknownObjectRefError, match="returns 1 object"):
        ember.ObjectRef(beyond)


# -- requests no node can give -----------------------------------------------------------------


def test_an_infeasible_task_returns_a_ref_and_get_raises_at_once() -> None:
    ref = times_ten.options(num_cpus=64).remote(1)  # never raises because of resources
    with pytest.raises(ex.InfeasibleResourceError) as caught:
        ember.get(ref, timeout=GET_TIMEOUT_S)
    text = str(caught.value)
    assert "asks for {'CPU': 64.0}" in text  # the request
    assert "it has {'CPU': 4.0}" in text and "'accelerator': 1.0" in text  # the cluster's totals
    assert "ember.init(num_cpus=N" in text and "ember start --head" in text  # how to get a bigger one
    assert ember.get(times_ten.remote(1), timeout=GET_TIMEOUT_S) == 10  # nothing was queued forever


def test_wait_on_an_infeasible_task_raises_too() -> None:
    ref = times_ten.options(resources={"tpu": 1}).remote(1)
    with pytest.raises(ex.InfeasibleResourceError, match=r"can never give \{'tpu': 1\.0\}"):
        ember.wait([ref], timeout=GET_TIMEOUT_S)


def test_a_task_depending_on_an_infeasible_one_fails_too() -> None:
    ref = times_ten.remote(times_ten.options(num_gpus=8).remote(1))
    with pytest.raises(ex.InfeasibleResourceError, match=r"\{'GPU': 8\.0\}"):
        ember.get(ref, timeout=GET_TIMEOUT_S)


def test_an_actor_no_node_can_start_fails_its_calls_at_once() -> None:
    putter = Putter.options(resources={"tpu": 1}).remote()
    with pytest.raises(ex.InfeasibleActorError, match=r"asks for \{'tpu': 1\.0\}") as caught:
        ember.get(putter.put.remote(1), timeout=GET_TIMEOUT_S)
    assert isinstance(caught.value, ex.ActorDiedError) and isinstance(caught.value, ex.InfeasibleResourceError)


LOG_TO_DRIVER_PROGRAM = """
    import json, sys
    import ember
    ember.init(num_cpus=1, log_to_driver={flag})

    @ember.remote
    def speak():
        print("said-on-stdout", flush=True)
        print("said-on-stderr", file=sys.stderr, flush=True)
        return 1

    assert ember.get(speak.remote()) == 1
    out = ember._runtime._session.log_dir / "scheduler.out"  # the session's, removed at shutdown
    kept = out.read_text() if out.exists() else ""
    print(json.dumps({{"kept": ["said-on-stdout" in kept, "said-on-stderr" in kept]}}), flush=True)
    ember.shutdown()
"""


@pytest.mark.parametrize("flag", [True, False])
def test_log_to_driver_decides_whether_a_tasks_output_reaches_the_drivers_terminal(flag: bool) -> None:
    result = run_script(LOG_TO_DRIVER_PROGRAM.format(flag=flag))
    assert result.returncode == 0, result.stderr
    assert ("said-on-stdout" in result.stdout) is flag
    assert ("said-on-stderr" in result.stderr) is flag
    # Not lost: in the session's log folder instead, as Ray keeps a worker's output in its logs.
    assert json.loads(result.stdout.strip().splitlines()[-1])["kept"] == [not flag, not flag]


def test_log_to_driver_must_be_a_bool() -> None:
    with pytest.raises(ex.InvalidOptionError, match="log_to_driver"):
        ember.init(log_to_driver="no")


DASHBOARD_PROGRAM = """
    import json, urllib.request, urllib.error
    import ember
    info = ember.init(num_cpus=1, {options})
    url = info.get("dashboard_url")
    page = urllib.request.urlopen(url, timeout=30).read().decode() if url else ""
    ember.shutdown()
    try:
        urllib.request.urlopen(url, timeout=5) if url else None
        after = "served"
    except (urllib.error.URLError, ConnectionError):
        after = "gone"
    print(json.dumps({{"url": url, "job_listed": info["job_id"] in page, "after": after}}), flush=True)
"""


def test_include_dashboard_serves_the_clusters_dashboard_until_shutdown() -> None:
    result = run_script(DASHBOARD_PROGRAM.format(options="include_dashboard=True, dashboard_port=0"))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["url"].startswith("http://127.0.0.1:") and "token=" in seen["url"]
    assert seen["job_listed"] and seen["after"] == "gone"
    assert seen["url"] in result.stderr  # told where, in one line


def test_no_dashboard_unless_asked_for() -> None:
    for options in ("include_dashboard=False, dashboard_port=0", "log_to_driver=True"):
        result = run_script(DASHBOARD_PROGRAM.format(options=options))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["url"] is None


def test_dashboard_options_are_checked() -> None:
    with pytest.raises(ex.InvalidOptionError, match="include_dashboard"):
        ember.init(include_dashboard="yes")
    with pytest.raises(ex.InvalidOptionError, match="dashboard_port"):
        ember.init(dashboard_port=70000)


LOGGING_PROGRAM = """
    import json, logging
    import ember
    ember.init(num_cpus=1, {options})
    logging.getLogger("ember.core").info("probe-record")
    logger = logging.getLogger("ember")
    print(json.dumps({{"level": logger.level, "handlers": len(logger.handlers)}}), flush=True)
    ember.shutdown()
"""


@pytest.mark.parametrize("options, level, handlers, shown", [
    ("", 0, 0, False),  # ember's default: logging left alone
    ("logging_level='info'", 20, 1, True),
    ("logging_level=logging.INFO, configure_logging=False", 20, 0, False),  # the program's config shows them
])
def test_logging_level_and_configure_logging_set_up_the_ember_logger(options, level, handlers, shown) -> None:
    result = run_script(LOGGING_PROGRAM.format(options=options))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"level": level, "handlers": handlers}
    assert ("probe-record" in result.stderr) is shown


def test_init_options_ember_cannot_honour_are_said_so() -> None:
    result = run_script("""
        import ember
        ember.init(num_cpus=1, local_mode=True)
        ember.shutdown()
    """)
    assert result.returncode == 0, result.stderr
    assert "init(local_mode=True) has no effect" in result.stderr
    with pytest.raises(ex.InvalidOptionError, match="logging_level"):
        ember.init(logging_level="loud")


def test_enable_task_events_is_taken_and_false_is_said_not_to_apply() -> None:
    result = run_script("""
        import ember
        ember.init(num_cpus=1)

        @ember.remote(enable_task_events=False)
        def f():
            return 1

        @ember.remote
        class A:
            @ember.method(enable_task_events=True)
            def g(self):
                return 2

        a = A.options(enable_task_events=False).remote()
        print(ember.get(f.remote()) + ember.get(a.g.options(enable_task_events=False).remote()))
        ember.shutdown()
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert result.stderr.count("enable_task_events=False has no effect") == 1  # said once
    with pytest.raises(ex.InvalidOptionError, match="enable_task_events"):
        ember.remote(enable_task_events="no")(lambda: None)
