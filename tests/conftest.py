"""Shared test set-up: a private EMBER_HOME, hypothesis profiles and the fixture plugins."""

import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=20, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("soak", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["tests.fix_cluster", "tests.fix_postgres", "tests.fix_stores"]


# Tests never write to (or prune) the user's own lineage log: the whole run
# gets an EMBER_HOME of its own, world-searchable because under root the
# embedded server runs as its own user.
_HOME = tempfile.mkdtemp(prefix="ember-test-home-", dir="/tmp")
os.chmod(_HOME, 0o755)
os.environ["EMBER_HOME"] = _HOME


def pytest_sessionfinish(session, exitstatus):
    from ember.lineage._postgres import EmbeddedPostgres

    # A server a SIGKILLed test driver left running stops when its last holder releases it.
    if (os.path.isdir(os.path.join(_HOME, "pg"))):
        server = EmbeddedPostgres()
        server.start()
        server.release()
    shutil.rmtree(_HOME, ignore_errors=True)
