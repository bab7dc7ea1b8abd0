"""``ember demo``: what a new user runs first, and the commands it tells them to run next."""

import os
import re
import shutil
import subprocess
import sys


def _ember(*args: str) -> subprocess.CompletedProcess:
    ember = shutil.which("ember", path=os.path.dirname(sys.executable)) or "ember"
    return subprocess.run([ember, *args], capture_output=True, text=True, timeout=300)


def test_demo_survives_a_store_kill_and_its_closing_commands_work():
    demo = _ember("demo", "--size-mb", "40")
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    rebuilt = re.search(r"SIGKILLed the object store \(pid \d+\) holding 8 results: (\d) rebuilt from lineage, "
                        r"total 1,400,000 is right", out)
    assert rebuilt is not None, out
    assert int(rebuilt.group(1)) >= 1  # what the store held came back by replaying lineage
    lineage_id = re.search(r"ember lineage ([0-9a-f]{40})", out).group(1)
    task_id = re.search(r"ember replay ([0-9a-f]{32}) --pdb", out).group(1)

    # The cluster is gone; the log is not.
    lineage = _ember("lineage", lineage_id)
    assert lineage.returncode == 0, lineage.stderr
    assert "_total(" in lineage.stdout and "then rebuilt" in lineage.stdout
    replay = _ember("replay", task_id)
    assert replay.returncode == 0, replay.stderr + replay.stdout
    assert "matches the recorded result" in replay.stdout
