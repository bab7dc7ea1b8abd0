"""The module-level API: init, shutdown, get, put, wait, kill, cancel and friends.

``init()`` with no address starts a whole one-node cluster owned by this
process (an object store, a scheduler, workers), and ``shutdown()``,
interpreter exit or SIGTERM stop it again, leaving no process behind.
"""

from __future__ import annotations

import atexit
import operator
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ember.chaos import _agent as _chaos_agent
from ember import _options, _settings
from ember.exceptions import (
    ActorHandleNotFoundError,
    AlreadyInitializedError,
    EmberUserError,
    InvalidOptionError,
    NotAnObjectRefError,
)
from ember.scheduler import (
    Node,
    ObjectRef,
    ObjectRefGenerator,
    Op,
    Owner,
    Session,
    bring_up,
    local_nodes as _local_nodes,
    NODE_RESOURCE_PREFIX,
    node_resources,
    require_core,
    set_core,
)
from ember.scheduler import _context
from ember.lineage import LineageStore as _LineageStore, RuntimeEnvLog, check_runtime_env
from ember._runtime_env import env_wire
from ember._init_dashboard import DriverDashboard, dashboard_wanted
from ember._metrics_export import MetricsEndpoint, check_port as check_metrics_port
from ember._init_logging import logging_options
from ember.lineage._states import JobState, ProcessKind

_lock = threading.RLock()
_node: Node | None = None
_session: Session | None = None
_atexit_registered = False
_log_store: "_LineageStore | None" = None
_auto_initialized = False
_metrics_export: MetricsEndpoint | None = None  # init(_metrics_export_port=...)'s, while its cluster runs
_dashboard: DriverDashboard | None = None  # init(include_dashboard=True)'s, while its cluster runs  # the cluster was started (or joined) by the first use of the API, not by init()

# Options Ray accepts that change nothing here (no dashboard, logs already
# reach the driver's terminal); accepted so existing programs run unchanged.
# Ray options ember takes but cannot honour: said so on stderr, so a program that counts on them knows.
_UNSUPPORTED_INIT_OPTIONS = {
    "local_mode": "tasks and actors still run in worker processes (ember replay debugs a logged task in-process: "
                  "see docs/debugging.md)",
    "_temp_dir": "session folders go under EMBER_RUNTIME_DIR (default: $TMPDIR/ember-<uid>)",
}


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    num_workers: int | None = None,
    ignore_reinit_error: bool = False,
    gcs_url: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Start a local cluster (or, later, join one) and connect this process to it."""
    global _node, _session, _atexit_registered
    namespace = kwargs.pop("namespace", None)
    _options.check_namespace(namespace, "ember.init")
    runtime_env = check_runtime_env(kwargs.pop("runtime_env", None), "ember.init")
    log_to_driver = kwargs.pop("log_to_driver", True)
    if not isinstance(log_to_driver, bool):
        raise InvalidOptionError(f"init option log_to_driver must be True or False, got {log_to_driver!r}")
    dashboard_host, dashboard_port = kwargs.pop("dashboard_host", None), kwargs.pop("dashboard_port", None)
    with_dashboard = dashboard_wanted(kwargs.pop("include_dashboard", None), dashboard_host, dashboard_port)
    logging_setup = logging_options(kwargs.pop("logging_level", None), kwargs.pop("configure_logging", True))
    metrics_port = check_metrics_port(kwargs.pop("_metrics_export_port", None))
    unknown = set(kwargs) - set(_UNSUPPORTED_INIT_OPTIONS)
    if unknown:
        raise InvalidOptionError(
            f"unknown init option(s) {sorted(unknown)}; ember.init accepts num_cpus, num_gpus, resources, "
            "object_store_memory, num_workers, ignore_reinit_error, namespace, runtime_env"
        )
    job = _JobOptions(namespace, runtime_env)
    _options.validate_init(num_cpus if num_cpus is not None else num_workers, num_gpus, resources,
                           object_store_memory)
    for key in sorted(kwargs):
        if kwargs[key] not in (None, False, ""):
            print(f"ember: init({key}={kwargs[key]!r}) has no effect: {_UNSUPPORTED_INIT_OPTIONS[key]}",
                  file=sys.stderr, flush=True)
    logging_setup.apply()
    settings = _settings.load()  # every EMBER_* variable checked here, not first in a worker
    if with_dashboard and not settings.lineage:
        raise InvalidOptionError("include_dashboard: the dashboard shows the lineage log, which is off here "
                                 "(EMBER_LINEAGE=off): turn it on, or leave the dashboard out")
    with _lock:
        if _context.PROCESS.owner is not None:
            if ignore_reinit_error or _context.PROCESS.owner.kind == ProcessKind.WORKER:
                return _info()  # inside a task: the worker's cluster
            raise AlreadyInitializedError(_reinit_message())
        if address is None:
            address = settings.address  # as Ray with RAY_ADDRESS
        if address == "local":
            address = None  # Ray's spelling of "a new cluster of this program's own", whatever the environment says
        if address is not None:
            _connect(address, job, num_cpus, num_gpus, resources, object_store_memory, num_workers, gcs_url)
            _start_metrics_export(metrics_port)
            return _info()
        if num_workers is not None and num_cpus is None:
            num_cpus = num_workers  # the original tutorial's spelling
        totals, store_bytes = node_resources(num_cpus, num_gpus, resources, object_store_memory)
        session, node, log_store = bring_up(totals, store_bytes, gcs_url, log_to_driver=log_to_driver)
        try:
            if with_dashboard:
                _start_dashboard(session, dashboard_host, dashboard_port, settings.dashboard_token)
            _start_driver(session, node.node_id, session.name, log_store.embedded_home, job)
        except BaseException:
            _stop_dashboard()
            node.stop()
            log_store.release()
            session.remove()
            raise
        _node, _session = node, session
        global _log_store
        _log_store = log_store
        _start_metrics_export(metrics_port)
        return _info()


def _reinit_message() -> str:
    """Ray's words for a second ``init``, with how this process came to be initialized."""
    how = ("ember started a local cluster on this process's first use of the API (a remote call, put, get, wait "
           "or get_actor before any ember.init()); call ember.init(...) before that first use to choose the "
           "cluster" if _auto_initialized else "ember.init() was already called in this process")
    return (f"Maybe you called ember.init twice by accident? {how}. This error can be suppressed by passing in "
            "ignore_reinit_error=True or by calling ember.shutdown() prior to ember.init()")


ADDRESS_ENV = _settings.variable("address")  # the cluster that init() with no address, and the first use of the API, join


def core() -> Owner:
    """This process's owner; the first use of the API in a process that never called init starts one.

    As in Ray (1.5 and later): a local cluster with ``init()``'s defaults, or the
    cluster ``EMBER_ADDRESS`` names. A worker is always connected: nothing starts there.
    """
    found = _context.PROCESS.owner
    if found is not None:
        return found
    with _lock:
        if _context.PROCESS.owner is None and _context.auto_init_allowed():
            _auto_init()
    return require_core()


def _auto_init() -> None:
    global _auto_initialized
    address = _settings.load().address
    info = init()
    _auto_initialized = True
    if address is not None and address != "local":
        said = f"connected to the cluster at {info['address']} ({ADDRESS_ENV}={address})"
    else:
        total, _ = require_core().call_scheduler(Op.RESOURCES)
        said = (f"started a local cluster ({total.get('CPU', 0):g} CPUs) that stops when this program exits; "
                "call ember.init(...) first to choose its size")
    print(f"ember: no ember.init() before the first use of the API: {said}", file=sys.stderr, flush=True)


def _connect(address: str, job: "_JobOptions", *sizes: Any) -> dict[str, Any]:
    """Connect this driver to a running cluster through its node on this machine (``ember start``)."""
    if any(size is not None for size in sizes):
        raise EmberUserError(
            "ember.init(address=...) connects to a running cluster, whose nodes have their resources already; "
            "leave out num_cpus, num_gpus, resources, object_store_memory and gcs_url (set them in `ember start`)")
    local = _local_nodes.find(address)
    session = local.session
    _start_driver(session, local.node_id, session.read_info().get("cluster_id") or session.name, None, job)
    return _info()


class _JobOptions:
    """What ``init`` says of the job itself: its namespace (None: an anonymous one) and runtime_env."""

    def __init__(self, namespace: str | None, runtime_env: dict[str, Any] | None) -> None:
        self.namespace = namespace
        self.runtime_env = runtime_env


def _start_driver(session: Any, node_id: str, cluster_id: str, pg_home: str | None, job: _JobOptions) -> None:
    global _atexit_registered, _job_namespace
    core = Owner(session, ProcessKind.DRIVER, job_id=os.urandom(4), node_id=node_id).start()
    try:
        namespace = job.namespace or _options.anonymous_namespace(core.job_id)
        if core.gcs is not None:
            # Durable now: a worker of any node reads the job's namespace from the log (named actors).
            seq = core.gcs.job(core.job_id, cluster_id, os.getpid(), " ".join(sys.argv)[:1000], namespace)
            core.gcs.make_durable(seq, "the job's row")
        elif job.namespace is not None:
            raise InvalidOptionError(f"ember.init namespace={job.namespace!r} reaches the workers through the "
                                     "lineage log, which is off here (EMBER_LINEAGE=off): turn it on")
        if job.runtime_env is not None:
            core.runtime_env = env_wire(core, job.runtime_env, None, from_process=False)
    except BaseException:
        core.close()
        raise
    _job_namespace = namespace
    set_core(core)
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    _install_sigterm_handler()
    _chaos_agent.start(ProcessKind.DRIVER, node_id, job_id=core.job_id.hex(), pg_home=pg_home)


def _start_dashboard(session: Session, host: str | None, port: int | None, token: str | None) -> None:
    global _dashboard
    conninfo = session.read_info().get("gcs_conninfo")
    assert conninfo, "a cluster with the lineage log on records where it is"
    dashboard = DriverDashboard(conninfo, token)
    url = dashboard.start(host, port)
    _dashboard = dashboard
    print(f"ember: the dashboard of this cluster is at {url} (until it stops)", file=sys.stderr, flush=True)


def _start_metrics_export(port: int | None) -> None:
    """``init(_metrics_export_port=...)``: this node's application metrics, served until shutdown."""
    global _metrics_export
    if port is None:
        return
    endpoint = MetricsEndpoint(require_core().session.dir)
    endpoint.start(port)
    _metrics_export = endpoint


def _stop_dashboard() -> None:
    global _dashboard
    if _dashboard is not None:
        _dashboard.stop()
        _dashboard = None


def _info() -> dict[str, Any]:
    core = require_core()
    info = {
        "node_id": core.node_id,
        "session_dir": str(core.session.dir),
        "address": _cluster_address(core.session),
        "job_id": core.job_id.hex(),
    }
    if _dashboard is not None:
        info["dashboard_url"] = _dashboard.url  # as Ray's init returns it
    if _metrics_export is not None:
        info["metrics_export_url"] = _metrics_export.url
    return info


def _cluster_address(session: Session) -> str:
    """The cluster's ``HOST:PORT`` for one that ``ember start`` runs, else this node's scheduler socket."""
    address = session.gcs_address
    return str(session.scheduler_socket) if address.startswith("unix:") else address


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return  # the program has its own handler; atexit still runs on its exit

    def on_sigterm(signum: int, frame: Any) -> None:
        shutdown()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def shutdown() -> None:
    """Disconnect, and stop the cluster if this process started it."""
    global _node, _session, _auto_initialized, _metrics_export
    with _lock:
        core = _context.PROCESS.owner
        set_core(None)
        _auto_initialized = False
        if core is not None and _node is not None:
            _record_job_end(core)
        if core is not None:
            try:
                core.close()
            except Exception:
                pass
        _stop_dashboard()
        if _metrics_export is not None:
            _metrics_export.stop()
            _metrics_export = None
        if _node is not None:
            _node.stop()
            _node = None
        if _log_store is not None:
            _log_store.release()
        if _session is not None:
            _session.remove()
            _session = None


JOB_END_TIMEOUT_S = 1.0


def _record_job_end(core: Owner) -> None:
    """Tell the GCS this job finished (bounded: shutdown must not hang on it)."""
    from ember.lineage._rpc import GcsUnreachable, client_for

    if core.gcs is None:
        return
    core.gcs.writer.flush(JOB_END_TIMEOUT_S)  # the job's row must exist to be ended
    try:
        client_for(core.session.gcs_address, core.session.token()).try_call(
            "JobFinished", {"job_id": core.job_id.hex(), "state": JobState.FINISHED}, timeout_s=JOB_END_TIMEOUT_S)
    except (GcsUnreachable, PermissionError):
        pass  # the next GCS on this log closes the job as abandoned


def is_initialized() -> bool:
    return _context.PROCESS.owner is not None


_REF_FIX = "pass what f.remote(...) or ember.put(...) returned"
_ID = operator.attrgetter("_id")


def _as_ref_list(refs: Any, what: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        for i, ref in enumerate(refs):
            if not isinstance(ref, ObjectRef):
                raise NotAnObjectRefError(
                    f"ember.{what}() expects ObjectRefs, but item {i} is a {type(ref).__name__}: {ref!r:.100}; "
                    f"{_REF_FIX}{_hint(ref)}"
                )
        return list(refs), False
    raise NotAnObjectRefError(
        f"ember.{what}() expects an ObjectRef or a list of ObjectRefs, got a {type(refs).__name__}: "
        f"{refs!r:.100}; {_REF_FIX}{_hint(refs)}"
    )


def _hint(value: Any) -> str:
    from ember._actor import ActorMethod
    from ember._remote_function import RemoteFunction

    if isinstance(value, (RemoteFunction, ActorMethod)):
        return " (call .remote(...) on it first)"
    return ""


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """The value(s) of one ref or a list of refs, waiting until ready (or ``timeout`` seconds)."""
    refs, single = _as_ref_list(object_refs, "get")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidOptionError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    values = core().get(refs, timeout)
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store and return a ref to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("ember.put() of an ObjectRef is not allowed; pass the ref itself where it is needed")
    return core().put(value)


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split refs into (ready, not ready) once ``num_returns`` are ready or ``timeout`` passes."""
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise NotAnObjectRefError(
            f"ember.wait() expects a list of ObjectRefs, got a {type(object_refs).__name__}; "
            "wrap a single ref in a list: ember.wait([ref])")
    # A generator is ready once its next value is made (or it has ended): it is waited on through a ref
    # to that value, and given back in place of it.
    probes: dict[ObjectRef, ObjectRefGenerator] = {}
    if set(map(type, object_refs)) <= {ObjectRef}:
        refs = list(object_refs)  # the common case, checked in one pass (a loop of waits pays it each time)
    else:
        for item in object_refs:
            if isinstance(item, ObjectRefGenerator):
                probes[item.probe()] = item
        if probes:
            object_refs = [item.probe() if isinstance(item, ObjectRefGenerator) else item for item in object_refs]
        refs, _ = _as_ref_list(object_refs, "wait")
    if len(set(map(_ID, refs))) != len(refs):
        raise ValueError("ember.wait() got the same ObjectRef more than once")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or not 1 <= num_returns <= max(len(refs), 1):
        raise ValueError(f"num_returns must be between 1 and len(object_refs)={len(refs)}, got {num_returns!r}")
    client = core()
    if not refs:
        return [], []
    ready, not_ready = client.wait(refs, num_returns, timeout, bool(fetch_local))
    for ref in ready:
        error = client.infeasible.get(ref.task_id().binary())
        if error is not None:
            # No node of this cluster can ever run it: as get would, rather than report it "ready".
            raise error
    if probes:
        ready = [probes.get(ref, ref) for ref in ready]  # type: ignore[misc]
        not_ready = [probes.get(ref, ref) for ref in not_ready]  # type: ignore[misc]
    return ready, not_ready


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kill an actor's process at once; its pending calls fail with ActorDiedError."""
    from ember._actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(f"ember.kill() expects an actor handle, got a {type(actor).__name__}")
    require_core().kill_actor(actor._actor_id, bool(no_restart))


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that creates ``object_ref``; ``get`` then raises TaskCancelledError.

    ``recursive`` (the default, as Ray's): the tasks it submitted, and theirs, are cancelled too.
    """
    if not isinstance(object_ref, ObjectRef):
        raise NotAnObjectRefError(
            f"ember.cancel() expects an ObjectRef, got a {type(object_ref).__name__}; {_REF_FIX}")
    require_core().cancel(object_ref, bool(force), bool(recursive))


NAMESPACE = _options.NAMESPACE
_job_namespace: str | None = None  # the driver's job's: init(namespace=...), or its anonymous one
_namespaces_of_jobs: dict[bytes, str] = {}  # in a worker: the namespace of each job it ran work of


def current_namespace() -> str:
    """The namespace of the job this code runs for: where named actors go and are looked up by default.

    A driver's is ``init(namespace=...)``'s, or the job's anonymous one; a task's or an actor's is
    its job's (an actor's: the job that created it), read from the log once per job per process.
    """
    owner = core()
    if owner.kind != ProcessKind.WORKER:
        assert _job_namespace is not None, "a driver's namespace is set by init"
        return _job_namespace
    executor = owner.executor
    spec = executor.actor_spec if executor is not None and executor.actor_spec is not None else owner.current_task
    if spec is None:
        raise EmberUserError("a worker has no namespace between tasks: ask from inside a task or an actor")
    found = _namespaces_of_jobs.get(spec.job_id)
    if found is None:
        found = _namespace_in_log(owner, spec.job_id)
        _namespaces_of_jobs[spec.job_id] = found
    return found


def _namespace_in_log(owner: Owner, job_id: bytes) -> str:
    conninfo = owner.conninfo
    if conninfo is None:
        return _options.anonymous_namespace(job_id)  # no log: init refused a namespace of its own
    reads = RuntimeEnvLog(conninfo)
    try:
        found = reads.job_namespace(job_id)
    finally:
        reads.close()
    return found or _options.anonymous_namespace(job_id)


def _lookup_named(name: str, namespace: str | None = None) -> Any:
    from ember._actor import handle_from_meta

    if namespace is None:
        namespace = current_namespace()
    found = core().call_scheduler(Op.GET_NAMED_ACTOR, _options.qualified_name(namespace, name))
    if found is None:
        return None
    return handle_from_meta(*found)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the live actor created with ``.options(name=name)``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"ember.get_actor() expects a non-empty actor name, got {name!r}")
    _options.check_namespace(namespace, "ember.get_actor")
    if namespace is None:
        namespace = current_namespace()
    handle = _lookup_named(name, namespace)
    if handle is None:
        raise ActorHandleNotFoundError(
            f"no live actor named {name!r} in namespace {namespace!r}; create one with Cls.options(name={name!r})"
            f".remote() in a job of that namespace (ember.init(namespace=...)), or pass get_actor the namespace "
            "it was created in")
    return handle


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """The names of the cluster's live named actors (Ray's ``ray.util.list_named_actors``).

    Those of the current job's namespace (``current_namespace``); with
    ``all_namespaces``, every namespace's, each entry ``{"namespace": ...,
    "name": ...}``, as Ray's.
    """
    keys = core().call_scheduler(Op.LIST_NAMED_ACTORS)
    named = [_options.split_name(key) for key in keys]
    if all_namespaces:
        return [{"namespace": namespace, "name": name} for namespace, name in named]
    mine = current_namespace()
    return [name for namespace, name in named if namespace == mine]


def cluster_resources() -> dict[str, float]:
    total, _ = require_core().call_scheduler(Op.RESOURCES)
    return _with_other_nodes(total, "resources")


def available_resources() -> dict[str, float]:
    _, available = require_core().call_scheduler(Op.RESOURCES)
    return {k: v for k, v in _with_other_nodes(available, "available").items() if v > 0}


def _with_other_nodes(local: dict[str, float], field: str) -> dict[str, float]:
    """``local`` (this node's, exact) plus the other live nodes' ``field`` as of their last heartbeat."""
    core = require_core()
    if core.session.gcs_address.startswith("unix:"):
        return local  # a cluster of this program's own: one node
    summed = dict(local)
    for node in _gcs_nodes(core):
        if node["alive"] and node["node_id"] != core.node_id:
            for name, amount in node.get(field, {}).items():
                summed[name] = summed.get(name, 0.0) + amount
    return summed


NODES_TIMEOUT_S = 10.0


def get_node_ip_address() -> str:
    """The IP of this process's node, as its ``node:<ip>`` resource names it (Ray's ``ray.util`` helper)."""
    total, _ = require_core().call_scheduler(Op.RESOURCES)
    return _node_ip(total)


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes as the GCS service knows them (waits for it while it restarts), keyed as Ray's.

    ``NodeManagerAddress`` and ``NodeName`` are the node's IP, as its ``node:<ip>`` resource names it;
    ``SchedulerAddress`` is where its scheduler listens (ember's own), as is ``RayletSocketName``.
    """
    core = require_core()
    found = []
    for n in _gcs_nodes(core):
        ip = _node_ip(n["resources"])
        here = n["node_id"] == core.node_id
        found.append({"NodeID": n["node_id"], "Alive": n["alive"], "alive": n["alive"], "Resources": n["resources"],
                      "NodeManagerAddress": ip, "NodeName": ip,
                      "NodeManagerHostname": socket.gethostname() if here else ip,
                      "NodeManagerPort": _port_of(n["address"]), "RayletSocketName": n["address"],
                      "ObjectStoreSocketName": str(core.session.store_socket) if here else "",
                      "MetricsExportPort": -1, "Labels": {"ray.io/node-id": n["node_id"]},
                      "SchedulerAddress": n["address"], "DeathCause": n["death_cause"],
                      "DeathReason": _death_reason(n["alive"], n["death_cause"]),
                      "DeathReasonMessage": n["death_cause"] or ""})
    return found


# Ray's NodeDeathInfo reasons: what ember can tell from a node's death cause.
_DEATH_UNSPECIFIED, _DEATH_EXPECTED, _DEATH_UNEXPECTED = 0, 1, 2


def _death_reason(alive: bool, cause: str | None) -> int:
    if alive:
        return _DEATH_UNSPECIFIED
    return _DEATH_EXPECTED if cause and cause.endswith("shut down") else _DEATH_UNEXPECTED


def _port_of(address: str) -> int:
    """The TCP port in a node's scheduler address (a relay's ``host:port``), 0 for a Unix socket's path."""
    match = re.search(r":(\d+)(?:/|$)", address)
    return int(match.group(1)) if match else 0


def _node_ip(resources: dict[str, float]) -> str:
    for name in resources:
        if name.startswith(NODE_RESOURCE_PREFIX):
            return name[len(NODE_RESOURCE_PREFIX):]
    return ""  # a node of an ember from before node resources


def _gcs_nodes(core: Owner) -> list[dict[str, Any]]:
    from ember.exceptions import ClusterUnavailableError
    from ember.lineage._rpc import GcsUnreachable, client_for

    client = client_for(core.session.gcs_address, core.session.token())
    deadline = time.monotonic() + NODES_TIMEOUT_S
    while True:
        try:
            reply = client.call("Nodes", timeout_s=max(0.1, deadline - time.monotonic()))
        except GcsUnreachable as exc:
            raise ClusterUnavailableError(
                f"{exc} within {NODES_TIMEOUT_S:.0f}s; the cluster's GCS service is down and was not restarted"
            ) from exc
        # Right after init this node may still be registering with the GCS.
        if any(n["node_id"] == core.node_id for n in reply["nodes"]) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return reply["nodes"]
