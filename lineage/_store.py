"""Which PostgreSQL holds the lineage log, and bringing it up for ``ember.init()``.

``EMBER_GCS_URL`` (or ``init(gcs_url=...)``) names any PostgreSQL server;
without one, ember runs its embedded server under ``$EMBER_HOME``. Either way
the schema is created or checked before the cluster takes work, and an
unreachable server is a clear error naming the URL and the cause.

``EMBER_LINEAGE=off`` turns logging off entirely: an internal switch for
measuring what logging costs, not a mode to run in.
"""

from __future__ import annotations

import threading

from ember import _settings
from ember.exceptions import ClusterStartError
from ember.lineage._pg_connect import CONNECT_OPTIONS
from ember.lineage._postgres import EmbeddedPostgres

CONNECT_TIMEOUT_S = 10


def logging_enabled() -> bool:
    return _settings.load().lineage


class LineageStore:
    def __init__(self, gcs_url: str | None = None) -> None:
        self.url = gcs_url or _settings.load().gcs_url
        self._embedded: EmbeddedPostgres | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._conninfo: str | None = None
        self.enabled = logging_enabled()

    def planned_conninfo(self) -> str | None:
        """Where the log will be, known before the server is up (workers connect lazily)."""
        if not self.enabled:
            return None
        return self.url or EmbeddedPostgres().conninfo

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._bring_up, name="ember-lineage-start", daemon=True)
        self._thread.start()

    def ready(self) -> str | None:
        """The conninfo of a reachable, schema-checked log (None with logging off)."""
        if not self.enabled:
            return None
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._conninfo

    @property
    def embedded_home(self) -> str | None:
        """``$EMBER_HOME`` of the embedded server this process started (None for a server by URL)."""
        return str(self._embedded.home.parent) if self._embedded is not None else None

    def release(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._embedded is not None:
            self._embedded.release()
            self._embedded = None

    def _bring_up(self) -> None:
        try:
            if self.url is None:
                self._embedded = EmbeddedPostgres()
                self._embedded.start()
                conninfo = self._embedded.conninfo
                where = f"the embedded PostgreSQL under {self._embedded.home}"
            else:
                conninfo = self.url
                where = self.url
            self._check(conninfo, where)
            self._conninfo = conninfo
        except BaseException as exc:  # handed to the thread calling init()
            self._error = exc

    @staticmethod
    def _check(conninfo: str, where: str) -> None:
        import psycopg
        import sqlalchemy as sa

        from ember.lineage._schema import ensure_schema

        try:
            with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S, **CONNECT_OPTIONS):
                pass
        except psycopg.Error as exc:
            raise ClusterStartError(
                f"cannot reach the lineage log's PostgreSQL at {where}: {exc}".strip()
                + "; check EMBER_GCS_URL (or init(gcs_url=...)), or unset it to use the embedded server"
            ) from exc
        engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo, **CONNECT_OPTIONS))
        try:
            ensure_schema(engine)
        finally:
            engine.dispose()
