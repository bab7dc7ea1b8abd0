"""What the current process is doing: ``ember.get_runtime_context()``.

It only reads the process's owner; it never starts or joins a cluster.
"""

from __future__ import annotations

from ember.scheduler import TaskKind, require_core


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

    def get_worker_id(self) -> str:
        return require_core().worker_id.hex()

    def get_actor_id(self) -> str | None:
        executor = require_core().executor
        actor_id = getattr(executor, "_actor_id", None)
        return actor_id.hex() if actor_id else None

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators the running task or actor holds, by kind: ``{"GPU": ["0"]}`` (Ray's, GPUs only).

        Each id as ``CUDA_VISIBLE_DEVICES`` names it; empty in a driver and in work that asked for none.
        """
        executor = require_core().executor
        return {"GPU": [str(i) for i in executor.devices.gpu_ids()] if executor is not None else []}

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or actor holds (``{"CPU": 1.0, "GPU": 1.0}``); {} in a driver."""
        core = require_core()
        task, executor = core.current_task, core.executor
        if executor is None:
            return {}
        if task is not None and task.kind == TaskKind.NORMAL:
            return dict(task.resources)
        return dict(executor.devices.resources)  # an actor's, held for its life

    @property
    def node_id(self) -> str:
        return self.get_node_id()


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
