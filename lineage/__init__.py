"""ember.lineage: the durable lineage log (global control store) and reconstruction.

The PostgreSQL-backed log arrives with the durable-GCS work; this package is
its home.
"""

__all__: list[str] = []
