"""``ember.util.metrics`` (Ray's Counter, Gauge, Histogram) and ``init(_metrics_export_port=...)``'s
Prometheus endpoint, on a real one-node cluster: series from the driver, tasks and an actor, each
labelled with its process; bad input's typed errors; a dead process's series gone."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

import ember
from ember._metrics_export import render
from ember.exceptions import InvalidOptionError
from ember.util.metrics import Counter, Gauge, Histogram

BOUND_S = 60.0
SCRAPE_BOUND_S = 30.0  # a process writes its series within a second of a change


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    info = ember.init(num_cpus=2, _metrics_export_port=_free_port())
    try:
        yield info["metrics_export_url"]
    finally:
        ember.shutdown()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
            found.append((labels, float(match.group(2))))
    return found


def _until(url: str, done) -> str:
    deadline = time.monotonic() + SCRAPE_BOUND_S
    while True:
        text = _scrape(url)
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@ember.remote
class Server:
    def __init__(self, name: str) -> None:
        self.count = 0
        self.requests = Counter("t_requests", description="Requests served.", tag_keys=("actor_name",))
        self.requests.set_default_tags({"actor_name": name})
        self.current = Gauge("t_current", description="The count now.", tag_keys=("actor_name",))
        self.current.set_default_tags({"actor_name": name})
        self.latency = Histogram("t_latency_ms", description="Latency.", boundaries=[1, 10], tag_keys=("actor_name",))
        self.latency.set_default_tags({"actor_name": name})

    def serve(self, n: int, took_ms: float) -> int:
        self.count += n
        self.requests.inc()
        self.current.set(self.count)
        self.latency.observe(took_ms)
        return os.getpid()


@ember.remote
def work(i: int) -> int:
    Counter("t_tasks", description="Tasks run.", tag_keys=("kind",)).inc(2, tags={"kind": "even" if i % 2 == 0 else "odd"})
    return os.getpid()


def test_series_of_an_actor_tasks_and_the_driver_reach_the_endpoint(url: str) -> None:
    server = Server.remote("s1")
    pids = {ember.get(server.serve.remote(n, ms), timeout=BOUND_S) for n, ms in ((5, 0.5), (-2, 3.0), (4, 50.0))}
    assert len(pids) == 1
    ember.get([work.remote(i) for i in range(6)], timeout=BOUND_S)
    Gauge("t_driver", description="Set by the driver.").set(2.5)

    text = _until(url, lambda t: sum(v for _, v in _samples(t, "ember_t_tasks")) == 12 and "ember_t_driver" in t
                  and _samples(t, "ember_t_latency_ms_count"))
    assert "# TYPE ember_t_requests counter" in text and "# HELP ember_t_requests Requests served." in text
    (labels, value), = _samples(text, "ember_t_requests")
    assert value == 3 and labels["actor_name"] == "s1" and labels["Pid"] == str(pids.pop())
    assert _samples(text, "ember_t_current")[0][1] == 7  # 5 - 2 + 4: the last value set
    buckets = {labels["le"]: value for labels, value in _samples(text, "ember_t_latency_ms_bucket")}
    assert buckets == {"1.0": 1, "10.0": 2, "+Inf": 3}  # cumulative, as Prometheus reads them
    assert _samples(text, "ember_t_latency_ms_sum")[0][1] == pytest.approx(53.5)
    tasks = _samples(text, "ember_t_tasks")
    assert {labels["kind"] for labels, _ in tasks} == {"even", "odd"}
    assert sum(v for labels, v in tasks if labels["kind"] == "even") == 6  # summed over the workers' Pid
    (labels, value), = _samples(text, "ember_t_driver")
    assert value == 2.5 and labels["Pid"] == str(os.getpid())


def test_a_dead_processs_series_leave_the_endpoint(url: str) -> None:
    server = Server.remote("doomed")
    pid = ember.get(server.serve.remote(1, 1.0), timeout=BOUND_S)
    _until(url, lambda t: any(labels["actor_name"] == "doomed" for labels, _ in _samples(t, "ember_t_requests")))
    os.kill(pid, signal.SIGKILL)  # the actor's process, which this module's cluster started
    text = _until(url, lambda t: not any(labels["actor_name"] == "doomed"
                                         for labels, _ in _samples(t, "ember_t_requests")))
    assert not any(labels["actor_name"] == "doomed" for labels, _ in _samples(text, "ember_t_requests"))


def test_bad_metrics_get_typed_errors(url: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Counter("")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        Counter("has space")
    with pytest.raises(TypeError, match="tag_keys must be a tuple of strings"):
        Counter("t_bad_keys", tag_keys="kind")
    counter = Counter("t_checked", tag_keys=("kind",))
    with pytest.raises(ValueError, match=r"missing value for tag key\(s\) \['kind'\]"):
        counter.inc()
    with pytest.raises(ValueError, match="unknown tag key 'other'"):
        counter.inc(tags={"kind": "a", "other": "b"})
    with pytest.raises(ValueError, match="value > 0"):
        counter.inc(0, tags={"kind": "a"})
    with pytest.raises(TypeError, match="takes a number"):
        Gauge("t_gauge_checked").set("high")
    with pytest.raises(ValueError, match="increasing numbers > 0"):
        Histogram("t_bad_bounds", boundaries=[5, 1])
    with pytest.raises(ValueError, match="is a counter with tag_keys"):
        Gauge("t_checked", tag_keys=("kind",))
    with pytest.raises(InvalidOptionError, match="_metrics_export_port must be a port number"):
        ember.init(_metrics_export_port="8080")


def test_render_reads_only_live_processes_and_escapes_labels(tmp_path) -> None:
    dead = tmp_path / "999999999.json"
    dead.write_text('{"pid": 999999999, "node_id": "n", "metrics": {}}')
    (tmp_path / f"{os.getpid()}.json").write_text(
        '{"pid": %d, "node_id": "n", "metrics": {"m": {"kind": "gauge", "description": "", "tag_keys": ["k"], '
        '"boundaries": null, "series": {"[\\"a\\\\\\"b\\"]": 1.5}}}}' % os.getpid())
    text = render(tmp_path)
    assert text.splitlines() == ["# HELP ember_m m", "# TYPE ember_m gauge",
                                 f'ember_m{{k="a\\"b",Pid="{os.getpid()}",NodeId="n"}} 1.5']
    assert not dead.exists()  # a process that is gone: its file removed
