"""ember's settings from ``EMBER_*`` environment variables, read in one place into one immutable object.

Every ``EMBER_*`` variable ember reads is a field of ``Settings``; the
variable's name is ``EMBER_`` and the field's name in capitals
(``log_commit_wait_s`` is ``EMBER_LOG_COMMIT_WAIT_S``). Its type says how the
text is read: seconds (``float``, zero or more), a byte count or pid (``int``,
zero or more), a switch (``bool``: on/off, 1/0, true/false, yes/no), or text
(``str | None``; empty counts as unset). A value that does not read raises
``InvalidOptionError`` naming the variable and the fix; ``ember.init()``
checks them all first, so a mistake shows there, not in a worker.

``load()`` reads the environment each time it is called, so a process that
sets a variable before starting a part of ember (a test, a child started
with its own environment) gets what it set. Parts read their settings when
they are made and keep the object; nothing on a hot path calls ``load()``.

A leaf module: it imports nothing of ember but the exceptions, so every
layer may use it. It must never read anything but the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ember.exceptions import InvalidOptionError

__all__ = ["Settings", "load", "variable"]

# How long a value waits for its lineage to commit before the caller gets
# LineageLogUnavailableError instead of the value.
LOG_COMMIT_WAIT_S = 60.0
# How long rows nobody waits for yet may sit before they are committed.
LOG_LAZY_S = 0.01
PUT_COPY_MAX_BYTES = 4 << 30
RESULT_HASH_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class Settings:
    """What the ``EMBER_*`` variables say; see the module docstring for how each is named and read."""

    # -- where things are ------------------------------------------------------------------
    home: str | None = None  # the embedded PostgreSQL's data (lineage/_postgres.py has the default)
    runtime_dir: str | None = None  # session folders and sockets (default: $TMPDIR/ember-<uid>)
    gcs_url: str | None = None  # a PostgreSQL server for the log instead of the embedded one
    address: str | None = None  # the cluster init() with no address, and the API's first use, join
    cluster_token: str | None = None  # hex: a cluster's token, for a node on another machine than its head
    dashboard_token: str | None = None  # the token `ember dashboard` asks for (default: a fresh one)
    tls_cert: str | None = None  # PEM files: TLS on every TCP endpoint (all three, or none)
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None  # the name clients expect in the nodes' certificates
    # -- the lineage log -------------------------------------------------------------------
    lineage: bool = True  # off: no log at all (a switch for measuring what logging costs)
    log_commit_wait_s: float = LOG_COMMIT_WAIT_S
    log_lazy_s: float = LOG_LAZY_S
    # A commit waits for PostgreSQL's flush of its write-ahead log to disk
    # (synchronous_commit on). Off, a commit is acknowledged once the server
    # has it: it survives any ember process's crash and a server restart, not
    # a crash of the server or its machine in the next moments.
    log_sync_commit: bool = True
    gcs_outage_alert_s: float = 30.0  # tell the driver when the log has been unreachable this long
    node_dead_after_s: float = 1.0  # a node silent this long is declared dead
    # A cluster node's actors hold calls while the GCS has not answered it (scheduler/_actor_lease.py);
    # held this long, the calls are refused with ActorUnavailableError until it answers again.
    actor_hold_max_s: float = 60.0
    # -- objects ---------------------------------------------------------------------------
    put_copies: bool = True  # durable copies of large puts, by-value arguments and actor results
    put_copy_max_bytes: int = PUT_COPY_MAX_BYTES
    # Free disk durable copies leave under $EMBER_HOME (None: 5% of the disk, at least 1 GiB): a copy
    # that would eat into it is not written (store/_put_copies.py says what happens instead).
    copy_disk_reserve_bytes: int | None = None
    result_hash_max_bytes: int = RESULT_HASH_MAX_BYTES  # larger store results are not content-hashed
    # -- processes -------------------------------------------------------------------------
    log_level: str | None = None  # ember's own processes' log level (default WARNING)
    # Workers are forked by a per-node fork server that imported what they need once
    # (scheduler/_fork_server.py); off, each starts as a fresh interpreter.
    worker_fork: bool = True
    parent_pid: int = 0  # set by ember for the processes it starts: they die with this one
    # Set by a node's scheduler for a worker it starts in a runtime_env: the environment's JSON record.
    runtime_env: str | None = None
    chaos_socket: str | None = None  # set by `chaos run` for the program it runs
    chaos_token: str | None = None
    # Set by LocalCluster(network=True) for the nodes it starts: the node's place in its network (JSON:
    # role, address, and the GCS's, PostgreSQL's and the drivers' addresses), which `chaos run` cuts.
    chaos_net: str | None = None


_SWITCH = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}


def variable(field_name: str) -> str:
    """The environment variable of ``Settings`` field ``field_name``."""
    return "EMBER_" + field_name.upper()


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the environment (``os.environ`` by default) gives; defaults for what it leaves out."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in fields(Settings):
        name = variable(field.name)
        text = environ.get(name)
        if text is None or text == "":
            continue
        values[field.name] = _READERS[str(field.type)](name, text)
    return Settings(**values)


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidOptionError(f"{name}={text!r} is not a number of seconds; unset it or give e.g. {name}=30")
    if not value >= 0:  # also refuses nan
        raise InvalidOptionError(f"{name}={text!r} must be zero or more seconds")
    return value


def _whole(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidOptionError(f"{name}={text!r} is not a whole number; unset it or give e.g. {name}=1024")
    if value < 0:
        raise InvalidOptionError(f"{name}={text!r} must be zero or more")
    return value


def _switch(name: str, text: str) -> bool:
    value = _SWITCH.get(text.strip().lower())
    if value is None:
        raise InvalidOptionError(f"{name}={text!r} is neither on nor off; unset it or give {name}=on or {name}=off")
    return value


def _text(name: str, text: str) -> str:
    return text


_READERS = {"float": _seconds, "int": _whole, "int | None": _whole, "bool": _switch, "str | None": _text}
