"""``runtime_env`` (Ray's): what it may hold, how it is checked, merged, packed and named by a content hash.

A ``runtime_env`` option is checked when it is given (``check_runtime_env``: a typed
error naming the field and what is supported), then *resolved* by the
process that submits work (``resolve_runtime_env``): merged over the environment that
process runs in (a task's over its job's, as Ray does: ``env_vars`` merged
key by key, every other field replaced), its local folders and files packed
into deterministic zip archives named by their content hash. The result is a
*record*: plain JSON that names packages by hash and never by path, so it
means the same on every node and after the cluster is gone. A record's own
hash (``RuntimeEnv.hash``) is what a task's spec and its log row carry, and
what keys the worker processes that may run it.

Setting an environment up on a node (fetching packages, unpacking, pip) is
``lineage/_env_setup.py``'s. This module must never touch the log or the
process's own environment.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import stat
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from ember.exceptions import InvalidOptionError

__all__ = ["PACKAGE_BYTES_MAX", "SUPPORTED_FIELDS", "RuntimeEnv", "check_runtime_env", "pack", "resolve_runtime_env"]

SUPPORTED_FIELDS = ("env_vars", "working_dir", "py_modules", "excludes", "pip", "worker_process_setup_hook")
# A working_dir or each py_modules entry, as the files packed after excludes (uncompressed).
PACKAGE_BYTES_MAX = 100 * 1024 * 1024
PACKAGE_FILES_MAX = 100_000
# Never packed: version control and byte-code caches (a worker makes its own).
DEFAULT_EXCLUDES = (".git/", "__pycache__/")
_REMOTE_PREFIXES = ("s3://", "gs://", "http://", "https://", "file://", "gcs://", "hdfs://")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every entry's time: equal files make equal archives
_SUPPORTED_TEXT = ("env_vars (dict of str to str), working_dir (a local folder), py_modules (local package "
                   "folders, .py files or imported modules), excludes (gitignore-style patterns), pip (a list "
                   "of requirements, a requirements.txt path, or {'packages': [...]}) and worker_process_setup_hook "
                   "(a function, or the 'module.function' name of one)")


@dataclass(frozen=True)
class RuntimeEnv:
    """A resolved environment: its canonical JSON text and that text's hash (what specs and logs carry)."""

    hash: str
    text: str

    @classmethod
    def of(cls, record: dict[str, Any]) -> "RuntimeEnv":
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return cls(hashlib.sha256(text.encode()).hexdigest()[:32], text)

    @classmethod
    def of_text(cls, text: str) -> "RuntimeEnv":
        """From its canonical JSON (as a worker is given it); the hash made again, so it cannot lie."""
        return cls.of(json.loads(text))

    @classmethod
    def from_wire(cls, wire: tuple[str, str] | None) -> "RuntimeEnv | None":
        return None if wire is None else cls(wire[0], wire[1])

    @property
    def wire(self) -> tuple[str, str]:
        """As a spec carries it: a plain (hash, text) tuple."""
        return (self.hash, self.text)

    @property
    def record(self) -> dict[str, Any]:
        return json.loads(self.text)

    def packages(self) -> list[str]:
        """The hashes of the packages it unpacks (its working_dir's first; not its setup hook's)."""
        record = self.record
        found = [record["working_dir"]["hash"]] if "working_dir" in record else []
        return found + [module["hash"] for module in record.get("py_modules", ())]


def check_runtime_env(value: Any, where: str) -> dict[str, Any] | None:
    """``value`` as a runtime_env option (a dict, or None), each field's type checked; a copy."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidOptionError(f"{where} runtime_env must be a dict, got {value!r:.80} (type={type(value).__name__})")
    unknown = sorted(str(key) for key in value if key not in SUPPORTED_FIELDS)
    if unknown:
        raise InvalidOptionError(
            f"{where} runtime_env field(s) {', '.join(map(repr, unknown))} are not supported: ember supports "
            f"{_SUPPORTED_TEXT}. conda, container, image_uri, uv, java_jars and the plugin fields are refused: "
            "build that environment where the cluster runs, or use pip")
    out = dict(value)
    env_vars = out.get("env_vars")
    if env_vars is not None and (not isinstance(env_vars, dict)
                                 or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())):
        raise InvalidOptionError(f"{where} runtime_env env_vars must be a dict of str to str (Ray's rule: "
                                 f"str(value) them yourself), got {env_vars!r:.120}")
    if "working_dir" in out and out["working_dir"] is not None:
        out["working_dir"] = _local_path(out["working_dir"], where, "working_dir", folder=True)
    if out.get("py_modules") is not None:
        modules = out["py_modules"]
        if not isinstance(modules, (list, tuple)):
            raise InvalidOptionError(f"{where} runtime_env py_modules must be a list, got {modules!r:.80}")
        out["py_modules"] = [_module_path(m, where) for m in modules]
    if out.get("excludes") is not None:
        excludes = out["excludes"]
        if not isinstance(excludes, (list, tuple)) or not all(isinstance(p, str) for p in excludes):
            raise InvalidOptionError(f"{where} runtime_env excludes must be a list of gitignore-style patterns "
                                     f"(str), got {excludes!r:.80}")
        for pattern in excludes:
            if pattern.startswith("!"):
                raise InvalidOptionError(f"{where} runtime_env excludes pattern {pattern!r}: negation ('!') is not "
                                         "supported; list only what to leave out")
        out["excludes"] = list(excludes)
    if out.get("pip") is not None:
        out["pip"] = _requirements(out["pip"], where)
    hook = out.get("worker_process_setup_hook")
    if hook is not None and not callable(hook) and not (
            isinstance(hook, str) and all(part.isidentifier() for part in hook.split(".")) and "." in hook):
        raise InvalidOptionError(f"{where} runtime_env worker_process_setup_hook must be a function or the "
                                 f"'module.function' name of one, got {hook!r:.80}")
    return out


def _local_path(value: Any, where: str, field: str, folder: bool) -> str:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{where} runtime_env {field} must be a local path (str), got {value!r:.80}")
    if value.startswith(_REMOTE_PREFIXES) or value.endswith(".zip") or value.endswith(".whl"):
        raise InvalidOptionError(f"{where} runtime_env {field}={value!r}: remote URIs, .zip and .whl files are not "
                                 "supported; give a local folder (ember packs and ships it to every node)")
    path = Path(value).expanduser()
    if folder and not path.is_dir():
        raise InvalidOptionError(f"{where} runtime_env {field}={value!r} is not a folder on this machine")
    return str(path.resolve())


def _module_path(module: Any, where: str) -> str:
    if isinstance(module, types.ModuleType):
        file = getattr(module, "__file__", None)
        if file is None:
            raise InvalidOptionError(f"{where} runtime_env py_modules: module {module.__name__} has no file to ship")
        path = Path(file)
        return str((path.parent if path.name == "__init__.py" else path).resolve())
    text = _local_path(module, where, "py_modules entry", folder=False)
    path = Path(text)
    if not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
        raise InvalidOptionError(f"{where} runtime_env py_modules entry {module!r} is neither a package folder nor "
                                 "a .py file on this machine")
    return text


def _requirements(pip: Any, where: str) -> list[str]:
    if isinstance(pip, dict):
        extra = sorted(set(pip) - {"packages", "pip_check"})
        if extra or "packages" not in pip:
            raise InvalidOptionError(f"{where} runtime_env pip as a dict takes 'packages' (and 'pip_check'), got "
                                     f"{sorted(pip)}")
        pip = pip["packages"]
    if isinstance(pip, (str, Path)):
        path = Path(pip).expanduser()
        if not path.is_file():
            raise InvalidOptionError(f"{where} runtime_env pip={str(pip)!r}: a string must be the path of a "
                                     "requirements.txt on this machine; give requirements as a list")
        pip = [line.strip() for line in path.read_text().splitlines()
               if line.strip() and not line.strip().startswith("#")]
    if not isinstance(pip, (list, tuple)) or not all(isinstance(r, str) and r.strip() for r in pip):
        raise InvalidOptionError(f"{where} runtime_env pip must be a list of requirement strings (e.g. "
                                 f"['requests==2.31']), got {pip!r:.80}")
    return [r.strip() for r in pip]


# -- resolving ----------------------------------------------------------------------------


def resolve_runtime_env(option: dict[str, Any], base: RuntimeEnv | None) -> tuple[RuntimeEnv, dict[str, bytes]]:
    """The environment ``option`` (checked by ``check_runtime_env``) gives over ``base``, and the packages it made.

    As Ray merges a task's runtime_env over its parent's: ``env_vars`` key by
    key (the option's win), every other field given replaces the base's.
    """
    record = base.record if base is not None else {}
    packages: dict[str, bytes] = {}
    excludes = list(DEFAULT_EXCLUDES) + list(option.get("excludes") or ())
    if option.get("env_vars"):
        record["env_vars"] = {**record.get("env_vars", {}), **option["env_vars"]}
    if "working_dir" in option:
        record.pop("working_dir", None)
        if option["working_dir"] is not None:
            digest, data = pack(Path(option["working_dir"]), excludes, top=None)
            packages[digest] = data
            record["working_dir"] = {"hash": digest, "name": Path(option["working_dir"]).name}
    if "py_modules" in option:
        record.pop("py_modules", None)
        modules = []
        for text in option["py_modules"] or ():
            path = Path(text)
            digest, data = pack(path, excludes, top=path.name)
            packages[digest] = data
            modules.append({"hash": digest, "name": path.name})
        if modules:
            record["py_modules"] = modules
    if "pip" in option:
        record.pop("pip", None)
        if option["pip"]:
            record["pip"] = list(option["pip"])
    if "worker_process_setup_hook" in option:
        record.pop("worker_process_setup_hook", None)
        hook = option["worker_process_setup_hook"]
        if isinstance(hook, str):
            record["worker_process_setup_hook"] = {"import": hook}
        elif hook is not None:
            # The function itself, pickled by value, is a package of its own: in the log, as working_dirs are.
            data = cloudpickle.dumps(hook, protocol=5)
            digest = hashlib.sha256(data).hexdigest()[:32]
            packages[digest] = data
            record["worker_process_setup_hook"] = {"hash": digest, "name": getattr(hook, "__qualname__", repr(hook))}
    return RuntimeEnv.of(record), packages


def pack(path: Path, excludes: list[str], top: str | None) -> tuple[str, bytes]:
    """A folder (or one .py file) as a deterministic zip archive, and its hash; ``top``: a folder to put it in.

    Raises InvalidOptionError past ``PACKAGE_BYTES_MAX`` of files, naming the limit and the fix.
    """
    buffer = io.BytesIO()
    total = count = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file, name in _files(path, excludes, top):
            info = file.stat()
            total += info.st_size
            count += 1
            if total > PACKAGE_BYTES_MAX or count > PACKAGE_FILES_MAX:
                raise InvalidOptionError(
                    f"runtime_env: {path} holds more than {PACKAGE_BYTES_MAX >> 20} MiB (or {PACKAGE_FILES_MAX} "
                    f"files) after excludes, ember's limit for a working_dir or py_modules entry; leave out data "
                    "and build outputs with excludes=[...], or read large inputs from shared storage in the task")
            entry = zipfile.ZipInfo(name, _ZIP_TIME)
            entry.external_attr = (stat.S_IMODE(info.st_mode) | stat.S_IFREG) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, file.read_bytes())
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest()[:32], data


def _files(path: Path, excludes: list[str], top: str | None) -> Iterator[tuple[Path, str]]:
    """(file, its name in the archive), sorted, without what ``excludes`` leaves out."""
    prefix = f"{top}/" if top else ""
    if path.is_file():
        yield path, path.name
        return
    rules = [_rule(p) for p in excludes if p.strip() and not p.strip().startswith("#")]
    for root, dirs, names in os.walk(path):
        rel_root = Path(root).relative_to(path).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not _excluded(rules, rel_root + d, d, True))
        for name in sorted(names):
            rel = rel_root + name
            file = Path(root) / name
            if file.is_file() and not _excluded(rules, rel, name, False):
                yield file, prefix + rel


def _rule(pattern: str) -> tuple[str, bool, bool]:
    """(pattern, anchored to the root, folders only), as gitignore reads a line."""
    text = pattern.strip()
    folders_only = text.endswith("/")
    text = text.rstrip("/")
    if text.startswith("**/"):
        text = text[3:]
    anchored = "/" in text
    return text.lstrip("/"), anchored, folders_only


def _excluded(rules: list[tuple[str, bool, bool]], rel: str, name: str, is_dir: bool) -> bool:
    for pattern, anchored, folders_only in rules:
        if folders_only and not is_dir:
            continue
        if fnmatch.fnmatchcase(rel if anchored else name, pattern):
            return True
    return False
