"""Fetching objects from other nodes into this node's store, when a process here asks (``Op.PULL``).

A core client that needs an object another node holds names that node by its
relay endpoint (the ``HOST:PORT`` every address of a process there carries).
The store learns which transfer endpoint serves that node's objects from the
GCS service's node table (``NodeDirectory``), pulls the object with ``ObjectPuller`` on a thread
of its own (one pull per object, however many ask), and seals it: whoever
subscribed is told it is ready, as for an object written here. A pull that
no source completes tells the subscribers why (``Op.PULL_FAILED``); they ask
the object's owner again, which rebuilds it if its copy died with its node.

It must never block the store's reader thread: the GCS call and the pull
run on the fetch thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember.scheduler._node_directory import NodeDirectory
from ember.scheduler._session import Session

log = logging.getLogger("ember.store")

class Fetcher:
    """Runs the store's pulls: ``request`` starts one per object; ``on_done(oid, size)`` or
    ``on_failed(oid, why)`` is called from the fetch thread when it ends. ``segment_for(size)``
    offers a recycled file to write an arriving object into."""

    def __init__(self, session: Session, files: Any, on_done: Callable[[bytes, int], None],
                 on_failed: Callable[[bytes, str], None],
                 segment_for: Callable[[int], Path | None] | None = None) -> None:
        from ember.store._transfer_pull import ObjectPuller  # loads gRPC: only stores of multi-node clusters

        self._puller = ObjectPuller(files, session.token(), segment_for=segment_for)
        self._directory = NodeDirectory(session.gcs_address, session.token())
        self._on_done = on_done
        self._on_failed = on_failed
        self._lock = threading.Lock()
        self._pulling: set[bytes] = set()

    def request(self, oid: bytes, relay_endpoints: list[str]) -> None:
        with self._lock:
            if oid in self._pulling:
                return
            self._pulling.add(oid)
        threading.Thread(target=self._fetch, args=(oid, relay_endpoints), name="ember-fetch", daemon=True).start()

    def _transfer_endpoint(self, relay_endpoint: str) -> str | None:
        """Where the store of the node at ``relay_endpoint`` serves its objects (the GCS's node table)."""
        from ember.lineage._rpc import GcsUnreachable

        try:
            node = self._directory.find(relay_endpoint, usable=_serves_objects)
        except (GcsUnreachable, PermissionError) as exc:
            log.warning("cannot learn where node %s serves its objects: %s", relay_endpoint, exc)
            return None
        return node.get("transfer") if node is not None and _serves_objects(node) else None

    def _fetch(self, oid: bytes, relay_endpoints: list[str]) -> None:
        from ember.exceptions import ObjectTransferError

        try:
            sources = [s for s in (self._transfer_endpoint(e) for e in relay_endpoints if type(e) is str) if s]
            if not sources:
                self._on_failed(oid, f"no live node among {relay_endpoints} serves objects")
                return
            started = time.monotonic()
            result = self._puller.pull(oid, sources)
            elapsed = time.monotonic() - started
            log.info("fetched object %s (%d bytes) from %s in %.3f s", oid.hex(), result.total_bytes,
                     [a.source for a in result.attempts], elapsed)
            self._on_done(oid, result.total_bytes)
        except ObjectTransferError as exc:
            self._on_failed(oid, str(exc))
        except Exception as exc:  # a full disk, a bug: the waiters must hear of it, not hang
            log.exception("fetching object %s failed", oid.hex())
            self._on_failed(oid, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._pulling.discard(oid)


def _serves_objects(node: dict[str, Any]) -> bool:
    return bool(node.get("alive") and node.get("transfer"))
