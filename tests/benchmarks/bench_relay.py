"""The node relay's cost: an ember connection through gRPC (``grpc://``) against a direct Unix socket.

Starts node B's processes from ``tests/relay_node.py`` (an echo listener and a
relay host), then, from this process, over each path in turn:

* ``round_trip_us``        one small message sent and echoed back, one at a time (median)
* ``small_messages_per_s`` a stream of small messages, batched by the connection's
  writer as usual, all echoed back (counted once)
* ``frame_50mb_s``         one 50 MB frame sent and echoed back (median); the MB/s
  figure is the payload moved in both directions over that time

Prints the figures; asserts nothing about time. Usage:
``python tests/benchmarks/bench_relay.py [--quick]``. The machine may be
shared: repeat a run before drawing conclusions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ember.scheduler._address import relay_address  # noqa: E402
from ember.scheduler._listener import connect  # noqa: E402
from ember.scheduler._protocol import Connection  # noqa: E402
from ember.scheduler._relay import hosted_relay  # noqa: E402
from ember.scheduler._session import Session  # noqa: E402
from tests import relay_node  # noqa: E402

WAIT_S = 120.0  # any one wait for echoes
START_WAIT_S = 30.0
MESSAGE = 12345


class _Echoes:
    def __init__(self) -> None:
        self.count = 0
        self.last: object = None
        self.changed = threading.Condition()

    def handle(self, conn: Connection, msg: tuple) -> None:
        with self.changed:
            self.count += 1
            self.last = msg[1]
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.count >= count, WAIT_S):
                raise SystemExit(f"only {self.count} of {count} echoes came back within {WAIT_S}s")


def _measure(address: str, token: bytes, rounds: int, stream: int, frames: int) -> dict[str, float]:
    echoes = _Echoes()
    conn = connect(address, token, {"kind": "bench", "pid": os.getpid()}, echoes.handle, name="echo")
    try:
        for _ in range(50):  # warm-up
            conn.send_now((MESSAGE, 0))
        echoes.wait_for(50)
        samples = []
        for _ in range(rounds):
            expected = echoes.count + 1
            start = time.perf_counter()
            conn.send_now((MESSAGE, 1))
            echoes.wait_for(expected)
            samples.append(time.perf_counter() - start)
        expected = echoes.count + stream
        start = time.perf_counter()
        for i in range(stream):
            conn.send((MESSAGE, i))
        conn.flush()
        echoes.wait_for(expected)
        stream_s = time.perf_counter() - start
        payload = os.urandom(50 << 20)
        frame_samples = []
        for _ in range(frames):
            expected = echoes.count + 1
            start = time.perf_counter()
            conn.send_now((MESSAGE, payload))
            echoes.wait_for(expected)
            frame_samples.append(time.perf_counter() - start)
        assert echoes.last == payload
    finally:
        conn.close()
    frame_s = statistics.median(frame_samples)
    return {"round_trip_us": statistics.median(samples) * 1e6, "small_messages_per_s": stream / stream_s,
            "frame_50mb_s": frame_s, "frame_50mb_mb_per_s": 2 * 50 / frame_s}


def _start(*args: str) -> subprocess.Popen:
    proc = relay_node.spawn(*args)
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), ready.set()), daemon=True).start()  # type: ignore[union-attr]
    if not ready.wait(START_WAIT_S):
        raise SystemExit(f"{args} did not start within {START_WAIT_S}s")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for a smoke run)")
    args = parser.parse_args()
    rounds, stream, frames = (200, 5_000, 2) if args.quick else (2_000, 50_000, 5)
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    session = Session(root / "node-b", "node-b")
    session.sockets.mkdir(parents=True, mode=0o700)
    session.token_path.write_bytes(os.urandom(32))
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start("echo", str(session.dir), "echo"))
        procs.append(_start("relay", str(session.dir)))
        endpoint = hosted_relay(session)
        assert endpoint is not None
        target = session.sockets / "echo"
        paths = {"unix socket": str(target), "gRPC relay": relay_address(*endpoint, target)}
        results = {name: _measure(address, session.token(), rounds, stream, frames)
                   for name, address in paths.items()}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=START_WAIT_S)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'':24}{'round trip (us)':>17}{'small msgs/s':>15}{'50 MB echo (s)':>16}{'MB/s':>8}")
    for name, r in results.items():
        print(f"{name:24}{r['round_trip_us']:>17.0f}{r['small_messages_per_s']:>15.0f}"
              f"{r['frame_50mb_s']:>16.3f}{r['frame_50mb_mb_per_s']:>8.0f}")


if __name__ == "__main__":
    main()
