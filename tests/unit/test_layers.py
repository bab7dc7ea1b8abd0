"""Dependencies run one way: store, then lineage, then scheduler, then chaos, then api (``ember``).

A module may import modules of its own package and of the packages below
it, and the leaf modules (exceptions, settings, the states and process kinds,
the wire and RPC plumbing, the chaos fault points), which any layer may use and which import nothing
but other leaves. Across packages only a package itself (its ``__init__``,
the public names) or a leaf is imported, never another private module.
Every import counts: top-level, in a function, under ``TYPE_CHECKING``.
docs/architecture.md states the same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first: a package may import those before it.
LAYERS = ("store", "lineage", "scheduler", "chaos", "api")
PACKAGES = {"store": "ember.store", "lineage": "ember.lineage", "scheduler": "ember.scheduler",
            "chaos": "ember.chaos", "api": "ember"}
LEAVES = frozenset({
    "ember.exceptions",  # the error families
    "ember._settings",  # the EMBER_* settings
    "ember.lineage._states",  # task, object, actor, node and job states and process kinds, as the log spells them
    # the wire: messages, framing, sockets, sessions, addresses, TLS, gRPC options, process plumbing
    "ember.scheduler._spec", "ember.scheduler._protocol", "ember.scheduler._messages",
    "ember.scheduler._listener", "ember.scheduler._relay_client", "ember.scheduler._address",
    "ember.scheduler._session", "ember.scheduler._tls", "ember.scheduler._grpc_shared",
    "ember.scheduler._procutil", "ember.scheduler._node_directory", "ember.lineage._rpc",
    "ember.scheduler._context",  # the process's owner, which ObjectRef and the API reach
    # refs, which every layer may name (replay makes a dynamic generator's), and how one finds its owner
    "ember.scheduler._object_ref", "ember.scheduler._owner_lookup",
    "ember.scheduler._relay",  # the gRPC relay every node runs between its sockets and other nodes
    "ember.chaos._agent",  # the chaos fault points every process reports to
})


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "api" else "api"


def _imports(module: str, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ember"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            if base.startswith("ember"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in MODULES else base)
    return found


def _problems() -> list[str]:
    problems = []
    for module, path in MODULES.items():
        layer = _layer(module)
        for target in sorted(_imports(module, path)):
            if target == module or target not in MODULES:
                continue
            if module in LEAVES:
                if target not in LEAVES:
                    problems.append(f"{module} (a leaf) imports {target}, which is not a leaf")
                continue
            if target in LEAVES or _layer(target) == layer:
                continue
            if LAYERS.index(_layer(target)) > LAYERS.index(layer):
                problems.append(f"{module} ({layer}) imports {target} ({_layer(target)} is above it)")
            elif target != PACKAGES[_layer(target)]:
                problems.append(f"{module} imports {target}, a private module of {PACKAGES[_layer(target)]}: "
                                "import the package's public name")
    return problems


def test_dependencies_run_one_way():
    assert _problems() == []


def test_the_order_is_the_one_architecture_md_states():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "store → lineage → scheduler → chaos → api" in text


MODULE_LINES_MAX = 800  # docs/architecture.md: a module a newcomer can read through


def test_no_module_is_over_the_size_a_newcomer_reads_through():
    too_long = {module: n for module, path in MODULES.items()
                if (n := len(path.read_text().splitlines())) > MODULE_LINES_MAX}
    assert not too_long, f"split these by what they own (parts built with their collaborators): {too_long}"


def test_no_class_is_built_from_mixins():
    # Parts are objects an owner holds and hands its collaborators to, never bases sharing state through self.
    mixins = [f"{module}.{node.name}" for module, path in MODULES.items()
              for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
              and (node.name.endswith("Mixin") or any(isinstance(b, ast.Name) and b.id.endswith("Mixin")
                                                      for b in node.bases))]
    assert not mixins
