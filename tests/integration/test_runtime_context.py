"""``ember.get_runtime_context()``'s fields as Ray has them: task and actor names, assigned resources,
the current actor's handle, whether it was reconstructed, the namespace.

The actor kill is by pid, of an actor process this module's cluster started.
"""

from __future__ import annotations

import os
import signal

import pytest

import ember
from ember.exceptions import EmberUserError

BOUND_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def _cluster(fault_cluster):
    yield


@ember.remote(num_cpus=0.5)
def describe():
    context = ember.get_runtime_context()
    return (context.get_task_name(), context.get_assigned_resources(), context.get_actor_name(),
            context.get_actor_id(), context.namespace, context.task_id == context.get_task_id())


@ember.remote
class Probe:
    def __init__(self):
        self.me = ember.get_runtime_context().current_actor

    def describe(self):
        context = ember.get_runtime_context()
        return (context.get_task_name(), context.get_assigned_resources(), context.get_actor_name(),
                context.get_actor_id(), context.was_current_actor_reconstructed)

    def pid(self):
        return os.getpid()

    def me_again(self):
        return self.me

    def twice(self, x):
        return 2 * x


def test_a_tasks_name_resources_and_namespace():
    # The job's anonymous namespace: the driver's, which its tasks share.
    assert ember.get(describe.remote(), timeout=BOUND_S) == ("describe", {"CPU": 0.5}, None, None,
                                                            ember.get_runtime_context().namespace, True)
    named = describe.options(name="my-task", num_cpus=1, resources={"accelerator": 0})
    assert ember.get(named.remote(), timeout=BOUND_S)[:2] == ("my-task", {"CPU": 1.0})


def test_in_the_driver():
    context = ember.get_runtime_context()
    assert context.get_task_name() is None and context.get_actor_name() is None and context.get_actor_id() is None
    assert context.namespace == "anonymous-" + context.get_job_id()
    with pytest.raises(EmberUserError):
        context.get_assigned_resources()
    with pytest.raises(EmberUserError):
        context.current_actor
    with pytest.raises(EmberUserError):
        context.was_current_actor_reconstructed


def test_an_actors_fields_its_own_handle_and_a_restart():
    probe = Probe.options(name="probe-ctx", num_cpus=0.25, max_restarts=1, max_task_retries=-1).remote()
    name, resources, actor_name, actor_id, reconstructed = ember.get(probe.describe.remote(), timeout=BOUND_S)
    assert (name, resources, actor_name, actor_id, reconstructed) == (
        "Probe.describe", {"CPU": 0.25}, "probe-ctx", probe._actor_id.hex(), False)
    assert ember.get(Probe.remote().describe.remote(), timeout=BOUND_S)[2] == ""  # unnamed: "" as in Ray
    handle = ember.get(probe.me_again.remote(), timeout=BOUND_S)
    assert handle == probe and ember.get(handle.twice.remote(21), timeout=BOUND_S) == 42
    os.kill(ember.get(probe.pid.remote(), timeout=BOUND_S), signal.SIGKILL)
    assert ember.get(probe.describe.remote(), timeout=BOUND_S)[4] is True
