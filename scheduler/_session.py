"""Where a running cluster's files live: sockets, token, shared memory, spill.

A session directory is private to the user (0700). The token file is 0600.
Nothing here starts processes; ``_node`` does that.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ember import _settings
from ember.scheduler import _procutil

SHM_ROOT = Path("/dev/shm")
RELAY_INFO_KEY = "relay"  # session info: HOST:PORT of the node's relay, in a node of a multi-node cluster


def runtime_root() -> Path:
    root = Path(_settings.load().runtime_dir or Path(tempfile.gettempdir()) / f"ember-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Session:
    """Paths of one cluster session on this machine."""

    dir: Path
    name: str

    @property
    def token_path(self) -> Path:
        return self.dir / "token"

    @property
    def sockets(self) -> Path:
        return self.dir / "s"

    @property
    def scheduler_socket(self) -> Path:
        return self.sockets / "scheduler"

    @property
    def store_socket(self) -> Path:
        return self.sockets / "store"

    @property
    def gcs_address(self) -> str:
        """The GCS service's gRPC address: the cluster's (``host:port``) for a node started by
        ``ember start``, else a Unix socket in this session, private to the user."""
        try:
            address = self.read_info().get("gcs_address")
        except (OSError, ValueError):
            address = None
        return address or f"unix:{self.sockets / 'gcs'}"

    def relay_endpoint(self) -> str | None:
        """``HOST:PORT`` of this node's relay, if it has one: then the node is part of a multi-node cluster."""
        try:
            return self.read_info().get(RELAY_INFO_KEY)
        except (OSError, ValueError):
            return None

    @property
    def shm_dir(self) -> Path:
        base = SHM_ROOT if SHM_ROOT.is_dir() else self.dir
        return base / f"ember-{self.name}"

    @property
    def spill_dir(self) -> Path:
        return self.dir / "spill"

    @property
    def free_dir(self) -> Path:
        return self.shm_dir / ".free"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def info_path(self) -> Path:
        return self.dir / "session.json"

    def token(self) -> bytes:
        return self.token_path.read_bytes()

    def worker_socket(self, kind: str, worker_id: bytes) -> Path:
        return self.sockets / f"{kind}-{worker_id.hex()[:16]}"

    def write_info(self, info: dict) -> None:
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(self.info_path)

    def read_info(self) -> dict:
        return json.loads(self.info_path.read_text())

    def update_info(self, fields: dict) -> None:
        """Add ``fields`` to the info file (made if missing); readers see the old file or the new, whole."""
        try:
            info = self.read_info()
        except FileNotFoundError:
            info = {}
        self.write_info({**info, **fields})

    def remove_runtime_files(self) -> None:
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def create_session(token: bytes | None = None) -> Session:
    """A new session directory; ``token``: the cluster's, for a node that joins one (else a new one)."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
    session = Session(runtime_root() / name, name)
    session.dir.mkdir(mode=0o700)
    for sub in (session.sockets, session.spill_dir, session.log_dir):
        sub.mkdir(mode=0o700)
    session.shm_dir.mkdir(mode=0o700)
    session.free_dir.mkdir(mode=0o700)
    fd = os.open(session.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token if token is not None else secrets.token_bytes(32))
    return session


def open_session(path: str | Path) -> Session:
    path = Path(path)
    return Session(path, path.name)


def remove_stale_sessions() -> None:
    """Delete sessions whose creating driver is gone (a SIGKILLed driver leaves them)."""
    root = runtime_root()
    for entry in root.iterdir():
        parts = entry.name.split("-")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _procutil.pid_alive(pid):
            continue
        Session(entry, entry.name).remove()


def session_info(session: Session) -> dict:
    """The cluster's facts its node wrote for this session ({} if not written yet or unreadable)."""
    try:
        return session.read_info()
    except (OSError, ValueError):
        return {}


def log_conninfo(session: Session) -> str | None:
    """How to reach the lineage log's PostgreSQL (None when the cluster logs no lineage)."""
    return session_info(session).get("gcs_conninfo")
