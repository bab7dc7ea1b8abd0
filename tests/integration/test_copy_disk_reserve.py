"""Durable copies never fill the disk: past the reserve a put or a task's large argument goes without a copy,
and an actor call that would need one (for its replay) is refused before it runs, naming why.

The reserve is set above the disk's size (``EMBER_COPY_DISK_RESERVE_BYTES``), so every copy is out of
room, whatever the machine: nothing is filled for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import json
    import numpy as np
    import ember

    ember.init(num_cpus=1)
    big = np.arange(2_000_000, dtype=np.int64)  # 16 MB: a store object, which would get a copy

    @ember.remote
    def total(a):
        return int(a.sum())

    @ember.remote
    class Keeper:
        def __init__(self):
            self.seen = 0

        def take(self, a):
            self.seen += 1
            return int(a.sum())

        def count(self):
            return self.seen

    seen = {"put": int(ember.get(ember.put(big)).sum()), "task": ember.get(total.remote(big))}
    keeper = Keeper.remote()
    try:
        ember.get(keeper.take.remote(big))
        seen["call"] = "ran"
    except ember.exceptions.ObjectStoreFullError as exc:
        seen["call"] = str(exc)
    seen["count"] = ember.get(keeper.count.remote())  # the refused call took no place in the actor's order
    print(json.dumps(seen), flush=True)
    ember.shutdown()
""")


def test_past_the_disk_reserve_copies_are_skipped_and_an_actor_call_needing_one_is_refused(ember_home) -> None:
    env = {**os.environ, "EMBER_COPY_DISK_RESERVE_BYTES": str(10**18), "EMBER_HOME": str(ember_home)}
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    expected = 2_000_000 * 1_999_999 // 2
    assert seen["put"] == expected and seen["task"] == expected  # no copy, and no harm while nothing is lost
    assert "was not run" in seen["call"] and "EMBER_COPY_DISK_RESERVE_BYTES" in seen["call"]
    assert seen["count"] == 0
    copies = ember_home / "objects"
    assert not copies.exists() or not [p for p in copies.rglob("*") if p.is_file()]  # nothing written
