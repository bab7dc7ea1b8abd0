"""What the current process is doing: ``ember.get_runtime_context()``.

It only reads the process's owner; it never starts or joins a cluster.
"""

from __future__ import annotations

from ember.scheduler import require_core


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

    @property
    def node_id(self) -> str:
        return self.get_node_id()


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()


__all__ = ["RuntimeContext", "get_runtime_context"]
