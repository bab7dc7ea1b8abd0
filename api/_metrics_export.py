"""``init(_metrics_export_port=PORT)``: the cluster's application metrics in Prometheus' text format.

Every process of the node writes its ``ember.util.metrics`` series to the
session's ``metrics`` folder (``ember.util.metrics``); this endpoint, on a
thread of the driver that started the cluster, reads them at each scrape
and serves ``GET /metrics``: each metric as ``ember_<name>``, each series
with its tags and the ``Pid`` and ``NodeId`` of the process that recorded
it (Ray labels its series with the worker that recorded them too: sum over
``Pid`` for a cluster-wide total). A process that is gone is left out, and
its file removed.

It listens on loopback unless told otherwise, and never writes anything but
the files of processes that are gone.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ember.exceptions import InvalidOptionError
from ember.scheduler import _procutil

__all__ = ["METRICS_FOLDER", "MetricsEndpoint", "check_port", "render"]

METRICS_FOLDER = "metrics"  # in a node's session folder: a file per process that records metrics

HOST_DEFAULT = "127.0.0.1"
PREFIX = "ember_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def check_port(port: Any) -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidOptionError(f"init option _metrics_export_port must be a port number (0: any free one), "
                                 f"got {port!r}")
    return port


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{key}="{_label(value)}"' for key, value in pairs) + "}"


def _number(value: float) -> str:
    return repr(float(value))  # 5.0, 0.1, 1e+20: Prometheus reads Python's float spelling


def render(folder: Path) -> str:
    """The series in ``folder``'s files, of processes still alive, as Prometheus' text exposition format."""
    by_name: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        if not _procutil.pid_alive(pid):
            path.unlink(missing_ok=True)
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced or removed while read: the next scrape has it
        for name, metric in data["metrics"].items():
            entry = by_name.setdefault(name, {**metric, "rows": []})
            process = [("Pid", str(data["pid"])), ("NodeId", str(data["node_id"]))]
            for key, value in metric["series"].items():
                tags = list(zip(metric["tag_keys"], json.loads(key)))
                entry["rows"].append((tags + process, value))
    lines: list[str] = []
    for name, metric in sorted(by_name.items()):
        full = PREFIX + name
        description = metric["description"] or name
        lines.append(f"# HELP {full} {description.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {full} {metric['kind']}")
        for labels, value in metric["rows"]:
            if metric["kind"] != "histogram":
                lines.append(f"{full}{_labels(labels)} {_number(value)}")
                continue
            counts, total = value
            running = 0
            for bound, count in zip([*metric["boundaries"], None], counts):
                running += count
                le = "+Inf" if bound is None else _number(bound)
                lines.append(f"{full}_bucket{_labels([*labels, ('le', le)])} {running}")
            lines.append(f"{full}_sum{_labels(labels)} {_number(total)}")
            lines.append(f"{full}_count{_labels(labels)} {running}")
    return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """``GET /metrics`` over one node's session folder, served from this process until ``stop``."""

    def __init__(self, session_dir: Path) -> None:
        self._folder = Path(session_dir) / METRICS_FOLDER
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self, port: int, host: str = HOST_DEFAULT) -> str:
        folder = self._folder

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(folder).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass  # a scrape every few seconds is not news

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise InvalidOptionError(f"init option _metrics_export_port={port}: cannot listen on {host}:{port} "
                                     f"({exc.strerror}); choose a free port, or 0 for any") from None
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="ember-metrics-export", daemon=True).start()
        self.url = f"http://{host}:{server.server_address[1]}/metrics"
        print(f"ember: this node's application metrics are at {self.url} (Prometheus text format)",
              file=sys.stderr, flush=True)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
