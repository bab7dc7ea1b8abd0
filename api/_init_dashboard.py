"""``init(include_dashboard=..., dashboard_host=..., dashboard_port=...)``: the dashboard served by the
driver that started the cluster, for as long as that cluster runs.

Ray starts its dashboard with every cluster it can; ember starts one when
the program asks: ``include_dashboard=True``, or a ``dashboard_host`` or
``dashboard_port`` given without ``include_dashboard=False``. It serves the
same read-only pages as ``ember dashboard`` (``lineage/_dashboard_server.py``),
on a thread of the driver, and stops at ``shutdown``.

It must never write to the log, and never listen beyond loopback without
saying so on stderr.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ember.exceptions import InvalidOptionError

__all__ = ["PORT_DEFAULT", "DriverDashboard", "dashboard_wanted", "exposed_warning"]

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 8265  # Ray's dashboard port, where Ray users look first


def exposed_warning(host: str) -> str:
    """What a dashboard listening beyond loopback says on stderr."""
    return (f"the dashboard listens on {host} over plain HTTP: its token and the log's contents cross the "
            "network in the clear; prefer loopback and an SSH tunnel")


def dashboard_wanted(include: Any, host: Any, port: Any) -> bool:
    """Whether ``init`` starts a dashboard, from its three options (checked here)."""
    if include is not None and not isinstance(include, bool):
        raise InvalidOptionError(f"init option include_dashboard must be True, False or None, got {include!r}")
    if host is not None and not isinstance(host, str):
        raise InvalidOptionError(f"init option dashboard_host must be a host name or address, got {host!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise InvalidOptionError(f"init option dashboard_port must be a port number (0: any free one), got {port!r}")
    return include is True or (include is None and (host is not None or port is not None))


class DriverDashboard:
    """A dashboard over one cluster's log, served from this process until ``stop``."""

    def __init__(self, conninfo: str, token: str | None) -> None:
        from ember.lineage import Dashboard

        self._dashboard = Dashboard(conninfo, token=token)
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, host: str | None, port: int | None) -> str:
        """Listen (on loopback and port 8265 unless told otherwise) and serve; the URL, token included."""
        from ember.scheduler import _tls

        host = HOST_DEFAULT if host is None else host
        port = PORT_DEFAULT if port is None else port
        try:
            self.url = self._dashboard.bind(host, port)
        except OSError as exc:
            raise InvalidOptionError(
                f"the dashboard cannot listen on {host}:{port} ({exc.strerror or exc}); pass another "
                "dashboard_port (0: any free one), or include_dashboard=False") from None
        if not _tls.is_loopback(host):
            print(f"ember: {exposed_warning(host)}", file=sys.stderr, flush=True)
        self._thread = threading.Thread(target=self._dashboard.serve_forever, name="ember-dashboard", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._dashboard.shutdown()
        if self._thread is not None:
            self._thread.join(5.0)
