"""runtime_env and namespaces across a three-node ``LocalCluster``: a working_dir reaches every node through
the lineage log (each node unpacks its own copy), and jobs in different namespaces do not see each
other's named actors.

The runtime folder is private to this module; drivers other than the test's own are run as
separate programs (``run_script``) joined to the cluster, and end before their test does.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ember
from ember.chaos import LocalCluster
from tests.fix_cluster import driver_of, run_script

GET_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalCluster]:
    nodes = [{"num_cpus": 1, "resources": {f"node{k}": 1}} for k in (1, 2, 3)]
    with driver_of(nodes) as cluster:
        yield cluster


def on(k: int) -> dict:
    return {"resources": {f"node{k}": 0.01}}


@ember.remote
def in_working_dir() -> tuple[str, str, int, str]:
    import renv_cluster_helper

    with open("payload.txt") as payload:
        return (ember.get_runtime_context().get_node_id(), os.getcwd(), renv_cluster_helper.VALUE,
                payload.read())


def test_a_working_dir_reaches_each_node_through_the_log(three_nodes: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "renv_cluster_helper.py").write_text("VALUE = 7\n")
    (tmp_path / "payload.txt").write_text("shipped\n")
    shipped = in_working_dir.options(runtime_env={"working_dir": str(tmp_path)})
    seen = ember.get([shipped.options(**on(k)).remote() for k in (1, 2, 3)], timeout=GET_TIMEOUT_S)
    assert [node for node, *_ in seen] == [node.node_id for node in three_nodes.nodes]
    assert all(tuple(one[2:]) == (7, "shipped\n") for one in seen)
    # Each node unpacked its own copy, in its own session folder, by the package's hash.
    for (_, cwd, *_), node in zip(seen, three_nodes.nodes):
        assert cwd.startswith(str(node.session.dir)) and "/runtime_env/pkg/" in cwd
    assert len({cwd for _, cwd, *_ in seen}) == 3


def _driver(address: str, namespace: str | None, body: str) -> str:
    """Run a driver joined to the cluster in ``namespace`` (None: its anonymous one); its output."""
    init = f"ember.init(address={address!r}" + (f", namespace={namespace!r})" if namespace else ")")
    code = "import ember\n" + init + "\n" + textwrap.dedent(body)
    done = run_script(code, timeout_s=GET_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


ACTOR = """
@ember.remote
class Tag:
    def __init__(self, tag):
        self.tag = tag
    def get(self):
        return self.tag
"""


def test_namespaces_separate_named_actors_between_drivers(three_nodes: LocalCluster) -> None:
    address = three_nodes.address
    _driver(address, "colors", ACTOR + """
ember.get(Tag.options(name="orange", lifetime="detached").remote("color").get.remote())
print("made")
""")
    out = _driver(address, "fruits", ACTOR + """
try:
    ember.get_actor("orange")
except ValueError:
    print("not found")
ember.get(Tag.options(name="orange", lifetime="detached").remote("fruit").get.remote())
print(ember.get(ember.get_actor("orange").get.remote()))
""")
    assert out.splitlines() == ["not found", "fruit"]
    out = _driver(address, "colors", ACTOR + """
@ember.remote
def by_name_in_a_task():
    context = ember.get_runtime_context()
    return context.namespace, ember.get(ember.get_actor("orange").get.remote())
print(ember.get(ember.get_actor("orange").get.remote()))
print(ember.get(by_name_in_a_task.options(resources={"node3": 0.01}).remote()))
print(sorted(ember.util.list_named_actors()))
""")
    assert out.splitlines() == ["color", "('colors', 'color')", "['orange']"]
    # The test's own driver is in its anonymous namespace: neither is its to see without naming one.
    with pytest.raises(ValueError, match="no live actor named 'orange' in namespace 'anonymous-"):
        ember.get_actor("orange")
    assert ember.get(ember.get_actor("orange", namespace="fruits").get.remote(), timeout=GET_TIMEOUT_S) == "fruit"
    every = ember.util.list_named_actors(all_namespaces=True)
    assert {"namespace": "colors", "name": "orange"} in every and {"namespace": "fruits", "name": "orange"} in every
    assert "orange" not in ember.util.list_named_actors()
    for namespace in ("colors", "fruits"):
        ember.kill(ember.get_actor("orange", namespace=namespace))
