"""The nodes of this cluster as the GCS service lists them, by relay endpoint, asked again only on a miss.

A process that meets a relay endpoint it does not know (an object's holder,
a ref's owner) looks it up here: the GCS's node table is read at most once
per ``REFRESH_S``, and only when an endpoint is missing, so a known one
costs a dict lookup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ember.scheduler._address import is_relayed, parse_relay_address

REFRESH_S = 1.0
ASK_TIMEOUT_S = 5.0


class NodeDirectory:
    def __init__(self, gcs_address: str, token: bytes) -> None:
        self._gcs_address = gcs_address
        self._token = token
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, Any]] = {}  # relay endpoint -> the GCS's record of that node
        self._asked_at = float("-inf")

    def find(self, endpoint: str, usable: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any] | None:
        """The GCS's record of the node whose relay is ``endpoint`` (alive or dead), or None.

        A known record that is not ``usable`` (it lacks what the caller needs: a node that had
        not registered its transfer endpoint yet with a restarted GCS) counts as a miss.
        Raises ``GcsUnreachable`` (or ``PermissionError``) when it had to ask and could not.
        """
        with self._lock:
            found = self._nodes.get(endpoint)
            if (found is not None and (usable is None or usable(found))) \
                    or time.monotonic() - self._asked_at < REFRESH_S:
                return found
            self._asked_at = time.monotonic()
        from ember.lineage._rpc import client_for

        nodes = client_for(self._gcs_address, self._token).call("Nodes", {}, timeout_s=ASK_TIMEOUT_S)["nodes"]
        known = {parse_relay_address(n["address"]).endpoint: n for n in nodes if is_relayed(n.get("address"))}
        with self._lock:
            self._nodes = known
            return known.get(endpoint)
