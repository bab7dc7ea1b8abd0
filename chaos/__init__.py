"""ember.chaos: failure injection against a running cluster's processes."""

from ember.chaos._faults import (
    PAUSE_MAX_S,
    Fault,
    FaultKind,
    Injected,
    InvalidFaultError,
    Outcome,
    PostgresNotRestartableError,
    Target,
    inject,
    live_pids,
    paused_pids,
    resume_all,
)
from ember.chaos._cluster import LocalCluster
from ember.chaos._netfaults import Direction, NetFault, NetFaultKind, NetFaultUnavailableError, Peer
from ember.chaos._network import NetworkCommandError, NetworkUnavailableError
from ember.chaos._processes import ProcessRecord, processes

__all__ = [
    "PAUSE_MAX_S",
    "Fault",
    "FaultKind",
    "Injected",
    "LocalCluster",
    "Direction",
    "InvalidFaultError",
    "NetFault",
    "NetFaultKind",
    "NetFaultUnavailableError",
    "Peer",
    "NetworkCommandError",
    "NetworkUnavailableError",
    "Outcome",
    "PostgresNotRestartableError",
    "ProcessRecord",
    "Target",
    "inject",
    "live_pids",
    "paused_pids",
    "processes",
    "resume_all",
]
