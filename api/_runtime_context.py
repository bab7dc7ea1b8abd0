"""What the current process is doing: ``ember.get_runtime_context()``.

It only reads the process's owner and, in an actor's process, what its
executor recorded of the actor; it never starts or joins a cluster.
"""

from __future__ import annotations

import json
from typing import Any

from ember._actor import ActorHandle, _method_table
from ember._options import split_name
from ember._placement_group import current_strategy
from ember._runtime import current_namespace
from ember.exceptions import EmberUserError
from ember.scheduler import TaskKind, require_core


def _task_name(spec: Any) -> str:
    if spec.name:
        return spec.name
    if spec.kind == TaskKind.ACTOR_CALL:
        return f"{spec.function_name}.{spec.method}"
    return spec.function_name


def _actor_executor() -> Any:
    """The executor of this actor's process, or None outside an actor."""
    executor = require_core().executor
    return executor if executor is not None and executor.actor_spec is not None else None


class RuntimeContext:
    """What the current process is doing: ``ember.get_runtime_context()``."""

    def get_node_id(self) -> str:
        return require_core().node_id

    def get_job_id(self) -> str:
        core = require_core()
        task = core.current_task
        return (task.job_id if task is not None else core.job_id).hex()

    def get_task_id(self) -> str | None:
        task = require_core().current_task
        return task.task_id.hex() if task is not None else None

    def get_task_name(self) -> str | None:
        """The running task's name: its ``name`` option, else ``f`` or ``Class.method``; None outside a task."""
        task = require_core().current_task
        return _task_name(task) if task is not None else None

    def get_worker_id(self) -> str:
        return require_core().worker_id.hex()

    def get_actor_id(self) -> str | None:
        executor = _actor_executor()
        return executor.actor_spec.actor_id.hex() if executor is not None else None

    def get_actor_name(self) -> str | None:
        """In an actor: the name it was created with (``""`` if none), as in Ray; None outside an actor."""
        executor = _actor_executor()
        if executor is None:
            return None
        return split_name(executor.actor_spec.name)[1] if executor.actor_spec.name else ""

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in (pass it to tasks to call back); RuntimeError outside an actor.

        Its calls are not sent again if the actor dies while they run (as a
        handle made with ``max_task_retries=0``), whatever the creator's handle does.
        """
        executor = _actor_executor()
        if executor is None:
            raise EmberUserError("current_actor is only available in an actor's methods")
        spec = executor.actor_spec
        return ActorHandle(spec.actor_id, spec.function_name, _method_table(executor.actor_class), 0)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor's process is a restart (after its process died), not its first start."""
        executor = _actor_executor()
        if executor is None:
            raise EmberUserError("was_current_actor_reconstructed is only available in an actor's process")
        return executor.actor_restarts > 0

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime_env this code runs in, resolved ({} for none): ``env_vars`` and ``pip`` as given,
        ``working_dir`` and ``py_modules`` as the packages they became (``{"hash": ..., "name": ...}``)."""
        env = require_core().runtime_env
        return {} if env is None else json.loads(env[1])

    def get_runtime_env_string(self) -> str:
        """``runtime_env`` as its canonical JSON (what the log and the task's spec name by its hash)."""
        env = require_core().runtime_env
        return "{}" if env is None else env[1]

    @property
    def namespace(self) -> str:
        require_core()
        return current_namespace()

    def get_placement_group_id(self) -> str | None:
        """The placement group the running task or actor was scheduled in (hex), or None (Ray's)."""
        strategy = current_strategy()
        return strategy[1] if strategy is not None else None

    @property
    def current_placement_group_id(self) -> str | None:
        return self.get_placement_group_id()

    @property
    def should_capture_child_tasks_in_placement_group(self) -> bool:
        """Whether work this task or actor creates runs in its placement group by default."""
        strategy = current_strategy()
        return strategy is not None and strategy[3]

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators the running task or actor holds, by kind: ``{"GPU": ["0"]}`` (Ray's, GPUs only).

        Each id as ``CUDA_VISIBLE_DEVICES`` names it; empty in a driver and in work that asked for none.
        """
        executor = require_core().executor
        return {"GPU": [str(i) for i in executor.devices.gpu_ids()] if executor is not None else []}

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task holds (``{"CPU": 1.0, "GPU": 1.0}``), or an actor those it holds
        for its life, by name; EmberUserError in a driver (Ray asserts it runs in a worker)."""
        core = require_core()
        task, executor = core.current_task, core.executor
        if executor is None:
            raise EmberUserError("get_assigned_resources is only available in a task or an actor")
        if task is not None and task.kind == TaskKind.NORMAL:
            return {name: amount for name, amount in task.resources if amount}
        return {name: amount for name, amount in dict(executor.devices.resources).items() if amount}

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def actor_id(self) -> str | None:
        return self.get_actor_id()


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()


def get_gpu_ids() -> list[int] | list[str]:
    """The GPUs the running task or actor holds (Ray's ``get_gpu_ids``); [] in a driver.

    Device numbers (``[0]``), or, when the node was started with
    ``CUDA_VISIBLE_DEVICES`` set, the names it gave them (``["4"]``), as in Ray.
    """
    executor = require_core().executor
    return executor.devices.gpu_ids() if executor is not None else []


__all__ = ["RuntimeContext", "get_gpu_ids", "get_runtime_context"]
