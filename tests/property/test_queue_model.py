"""``ember.util.queue.Queue`` against Python's deque, with the queue's actor SIGKILLed between operations.

A hypothesis state machine applies the same operations to a Queue and to a
plain ``collections.deque`` model, sized alike: ``put_nowait``,
``get_nowait``, their batch variants (all or nothing), ``size``/``empty``/
``full``; and, at most ``KILLS_MAX`` times an example, a SIGKILL of the
queue actor's process (by pid, a process of the cluster this module started).

Fault injected and what must recover: the queue actor is restarted and
replays its logged calls, so after every kill the queue holds exactly the
model's items in the model's order, and every answer (an item, ``Empty``,
``Full``, a size) equals the model's.
"""

from __future__ import annotations

import os
import signal
from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from ember.util.queue import Empty, Full, Queue
from tests.fix_kill import actor_pid, wait_gone

MAXSIZE = 4
KILLS_MAX = 2
ITEMS = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.tuples(st.integers(0, 3), st.booleans()))
KILLED: list[int] = []  # pids killed across the run's examples: the recovery path must really have run
SETTINGS = settings(settings.default, max_examples=4, stateful_step_count=25, deadline=None,
                    suppress_health_check=list(HealthCheck))


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue(maxsize=MAXSIZE)
        self.model: deque = deque()
        self.kills = 0

    def teardown(self) -> None:
        self.queue.shutdown(force=True)

    @rule(item=ITEMS)
    def put_nowait(self, item):
        if len(self.model) >= MAXSIZE:
            with pytest.raises(Full):
                self.queue.put_nowait(item)
        else:
            self.queue.put_nowait(item)
            self.model.append(item)

    @rule()
    def get_nowait(self):
        if not self.model:
            with pytest.raises(Empty):
                self.queue.get_nowait()
        else:
            assert self.queue.get_nowait() == self.model.popleft()

    @rule(items=st.lists(ITEMS, max_size=3))
    def put_nowait_batch(self, items):
        if len(self.model) + len(items) > MAXSIZE:
            with pytest.raises(Full):
                self.queue.put_nowait_batch(items)
        else:
            self.queue.put_nowait_batch(items)
            self.model.extend(items)

    @rule(count=st.integers(0, 3))
    def get_nowait_batch(self, count):
        if count > len(self.model):
            with pytest.raises(Empty):
                self.queue.get_nowait_batch(count)
        else:
            assert self.queue.get_nowait_batch(count) == [self.model.popleft() for _ in range(count)]

    @precondition(lambda self: self.kills < KILLS_MAX)
    @rule()
    def kill_the_queues_actor(self):
        pid = actor_pid(self.queue.actor)
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        self.kills += 1
        KILLED.append(pid)

    @invariant()
    def sizes_agree(self):
        assert self.queue.size() == len(self.model)
        assert self.queue.empty() == (not self.model)
        assert self.queue.full() == (len(self.model) >= MAXSIZE)


def test_a_queue_answers_as_a_deque_while_its_actor_is_killed(fault_cluster):
    KILLED.clear()
    run_state_machine_as_test(QueueMachine, settings=SETTINGS)
    assert KILLED, "no example killed the queue's actor: the recovery path never ran"
