"""A real embedded PostgreSQL in a temporary EMBER_HOME, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ember_home() -> Iterator[Path]:
    # Under /tmp and world-searchable: under root the server runs as its own
    # user, which must reach the data directory.
    home = Path(tempfile.mkdtemp(prefix="ember-home-", dir="/tmp"))
    os.chmod(home, 0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(ember_home: Path):
    from ember.lineage._postgres import EmbeddedPostgres

    server = EmbeddedPostgres(ember_home)
    server.start()
    try:
        yield server
    finally:
        server.release()
