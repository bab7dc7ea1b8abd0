"""runtime_env without processes: checks, merging over a base, packing (determinism, excludes, limits)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import ember
from ember._options import validate
from ember.exceptions import InvalidOptionError
from ember.lineage import RuntimeEnv, check_runtime_env, resolve_runtime_env
from ember.lineage import _runtime_env


def _names(data: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_each_field_is_checked_by_type_and_unknown_fields_are_refused_by_name(tmp_path: Path) -> None:
    for kind in ("task", "actor"):
        assert validate({"runtime_env": {"env_vars": {"A": "1"}}}, kind)["runtime_env"] == {"env_vars": {"A": "1"}}
    with pytest.raises(InvalidOptionError, match="env_vars must be a dict of str to str"):
        validate({"runtime_env": {"env_vars": {"A": 1}}}, "task")
    with pytest.raises(InvalidOptionError, match="'conda' are not supported: ember supports env_vars"):
        validate({"runtime_env": {"conda": "env.yaml"}}, "actor")
    with pytest.raises(InvalidOptionError, match="must be a dict"):
        check_runtime_env(["pip"], "x")
    with pytest.raises(InvalidOptionError, match="is not a folder on this machine"):
        check_runtime_env({"working_dir": str(tmp_path / "nowhere")}, "x")
    with pytest.raises(InvalidOptionError, match="remote URIs"):
        check_runtime_env({"working_dir": "s3://bucket/dir.zip"}, "x")
    with pytest.raises(InvalidOptionError, match="negation"):
        check_runtime_env({"excludes": ["!keep.txt"]}, "x")
    with pytest.raises(InvalidOptionError, match="pip must be a list of requirement strings"):
        check_runtime_env({"pip": [3]}, "x")
    with pytest.raises(InvalidOptionError, match="takes 'packages'"):
        check_runtime_env({"pip": {"pkgs": ["a"]}}, "x")
    assert check_runtime_env({"pip": {"packages": ["a==1"]}}, "x")["pip"] == ["a==1"]
    # An imported module stands for its file, a package for its folder.
    assert check_runtime_env({"py_modules": [_runtime_env]}, "x")["py_modules"] == [str(Path(_runtime_env.__file__).resolve())]
    assert check_runtime_env({"py_modules": [ember]}, "x")["py_modules"] == [str(Path(ember.__file__).parent.resolve())]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nsix==1.16.0\n\n")
    assert check_runtime_env({"pip": str(requirements)}, "x")["pip"] == ["six==1.16.0"]
    with pytest.raises(InvalidOptionError, match="runtime_env"):
        ember.init(runtime_env={"container": {"image": "x"}})  # refused before anything starts
    assert not ember.is_initialized()


def test_a_task_env_merges_over_its_base_as_ray_does(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    base, packages = resolve_runtime_env(check_runtime_env(
        {"env_vars": {"A": "job", "B": "job"}, "working_dir": str(tmp_path), "pip": ["six"]}, "x"), None)
    assert len(packages) == 1 and base.packages() == list(packages)
    child, more = resolve_runtime_env({"env_vars": {"B": "task", "C": "task"}, "pip": ["attrs"]}, base)
    record = child.record
    assert record["env_vars"] == {"A": "job", "B": "task", "C": "task"}  # key by key, the task's win
    assert record["working_dir"] == base.record["working_dir"] and not more  # kept, not packed again
    assert record["pip"] == ["attrs"]  # replaced
    same, _ = resolve_runtime_env({}, base)
    assert same == base  # nothing of its own: the base, with the base's hash
    assert RuntimeEnv.of_text(child.text) == child and RuntimeEnv.from_wire(child.wire) == child


def test_packing_is_deterministic_and_honours_excludes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "data").mkdir()
    (root / ".git").mkdir()
    (root / "main.py").write_text("x = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"\0")
    (root / "data" / "big.bin").write_bytes(b"1" * 100)
    (root / "notes.log").write_text("log")
    (root / "sub").mkdir()
    (root / "sub" / "notes.log").write_text("log")
    (root / ".git" / "HEAD").write_text("ref")
    first = _runtime_env.pack(root, [*_runtime_env.DEFAULT_EXCLUDES, "data/", "*.log"], top=None)
    assert _names(first[1]) == ["main.py", "pkg/__init__.py"]
    (root / "main.py").touch()  # a new mtime, the same content: the same archive
    assert _runtime_env.pack(root, [*_runtime_env.DEFAULT_EXCLUDES, "data/", "*.log"], top=None) == first
    anchored = _runtime_env.pack(root, ["/notes.log", ".git/", "__pycache__/"], top="proj")
    assert "proj/sub/notes.log" in _names(anchored[1]) and "proj/notes.log" not in _names(anchored[1])
    (root / "main.py").write_text("x = 2\n")
    assert _runtime_env.pack(root, ["data/", "*.log"], top=None)[0] != first[0]


def test_a_package_past_the_size_limit_is_refused_naming_the_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_runtime_env, "PACKAGE_BYTES_MAX", 1000)
    (tmp_path / "big.bin").write_bytes(b"0" * 2000)
    with pytest.raises(InvalidOptionError, match="more than 0 MiB .* after excludes.*excludes="):
        resolve_runtime_env({"working_dir": str(tmp_path)}, None)
    resolved, _ = resolve_runtime_env({"working_dir": str(tmp_path), "excludes": ["*.bin"]}, None)
    assert "working_dir" in resolved.record


def test_ray_s_runtime_env_class_is_a_checked_dict(tmp_path: Path) -> None:
    from ember.runtime_env import RuntimeEnv as RayStyle

    made = RayStyle(env_vars={"A": "1"}, working_dir=str(tmp_path), pip={"packages": ["six"]})
    assert made == {"env_vars": {"A": "1"}, "working_dir": str(tmp_path.resolve()), "pip": ["six"]}
    assert validate({"runtime_env": made}, "task")["runtime_env"] == made
    with pytest.raises(InvalidOptionError, match="'uv' are not supported"):
        RayStyle(uv=["six"])
