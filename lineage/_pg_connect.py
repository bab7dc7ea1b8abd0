"""How every connection to the lineage log's PostgreSQL is opened: one definition for writers and readers.

A connection over TCP whose server went out of reach (a network partition)
fails within seconds, not after the kernel's ~15 minutes of retransmissions:
libpq's keepalives for an idle one, and ``tcp_user_timeout`` for one with
data in flight. Its user then reconnects (the writer with backoff, the
readers within their own wait), and a healed network is used again. The
options are ignored on a Unix socket (the embedded server's).

It must never open a connection itself, nor import anything of ember's:
every module that reaches the log takes its options from here.
"""

from __future__ import annotations

__all__ = ["CONNECT_OPTIONS", "TCP_TIMEOUT_S"]

TCP_TIMEOUT_S = 5
CONNECT_OPTIONS: dict[str, int] = {"keepalives": 1, "keepalives_idle": TCP_TIMEOUT_S, "keepalives_interval": 1,
                                   "keepalives_count": 3, "tcp_user_timeout": TCP_TIMEOUT_S * 1000}
