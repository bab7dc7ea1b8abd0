"""``ember dashboard``'s HTTP server: routes, the token, security headers, and answers in HTML or JSON.

A standard-library ``ThreadingHTTPServer`` (no web framework: the pages are
a few functions, and the stdlib needs nothing installed) on loopback unless
told otherwise. Every request needs the dashboard's token: in the URL the
command prints (``?token=``), then in an HttpOnly, SameSite=Strict cookie the
first answer sets, or as ``Authorization: Bearer``. Without it, 401; with a
wrong one, 403. Every answer carries ``Content-Security-Policy: default-src
'self'``; pages are read-only views of the log through one read-only
connection, reopened if the server restarts.

``Dashboard.answer`` turns a path and query into (status, type, bytes) with
no socket, so tests and the benchmark time the pages server-side.

It must never write to the log, never answer without the token, never serve
a file from outside ``dashboard_assets``, and never show a Python traceback
to a client (a bug is a 500 with a one-line message; the traceback goes to
stderr).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ember.exceptions import EmberUserError
from ember.lineage import _dashboard_chaos as chaos
from ember.lineage import _dashboard_pages as pages
from ember.lineage._dashboard_graph import lineage_page
from ember.lineage._dashboard_html import Page, Query, asset, error_page, frame
from ember.lineage._ids import EmptyLogError, UnknownIdError
from ember.lineage._reader import LineageLog
from ember.lineage._schema_version import SchemaVersionError

COOKIE = "ember_dashboard"
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
ASSETS = {"style.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
PATH_CHARS_MAX = 2_000
_ID = r"([0-9a-fA-F]{1,64})"
_JOB = r"([0-9a-fA-F]{1,64})"

# (pattern, page function); the function takes (log, *ids from the path, query).
ROUTES: list[tuple[re.Pattern[str], Callable[..., Page]]] = [
    (re.compile(r"/"), pages.jobs_page),
    (re.compile(rf"/job/{_JOB}"), pages.job_page),
    (re.compile(rf"/job/{_JOB}/tasks"), pages.tasks_page),
    (re.compile(rf"/job/{_JOB}/timeline"), pages.timeline_page),
    (re.compile(rf"/job/{_JOB}/actors"), pages.actors_page),
    (re.compile(rf"/job/{_JOB}/nodes"), pages.nodes_page),
    (re.compile(rf"/task/{_ID}"), pages.task_page),
    (re.compile(rf"/object/{_ID}"), pages.object_page),
    (re.compile(rf"/lineage/{_ID}"), lineage_page),
    (re.compile(rf"/actor/{_ID}"), pages.actor_page),
    (re.compile(r"/chaos"), chaos.chaos_runs_page),
    (re.compile(rf"/chaos/{_ID}"), chaos.chaos_page),
]


__all__ = ["Dashboard"]


class Dashboard:
    """The dashboard over one log: ``answer`` for a request, ``serve`` to listen."""

    def __init__(self, conninfo: str, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self._conninfo = conninfo
        self._log: LineageLog | None = None
        self._lock = threading.Lock()  # one connection, one request at a time on it
        self._server: ThreadingHTTPServer | None = None

    # -- answering, without a socket ---------------------------------------------------------

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path`` with ``query`` (the token already checked)."""
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in ASSETS:
                return self._error(404, f"no asset {name!r}", False)
            return 200, ASSETS[name], asset(name).encode()
        want_json = query.get("format", [""])[-1] == "json"
        for pattern, page_function in ROUTES:
            match = pattern.fullmatch(path.rstrip("/") or "/")
            if match:
                return self._render(page_function, match.groups(), Query(query), want_json)
        return self._error(404, f"no page at {path}", want_json)

    def _render(self, page_function: Callable[..., Page], ids: tuple[str, ...], query: Query,
                want_json: bool) -> tuple[int, str, bytes]:
        import psycopg

        with self._lock:
            for attempt in range(2):  # once more on a fresh connection if the server went away
                try:
                    page = page_function(self._open(), *ids, query)
                    break
                except (UnknownIdError, KeyError) as exc:
                    if isinstance(exc, EmptyLogError):
                        return self._error(503, str(exc), want_json)
                    return self._error(404, str(exc).strip("'\""), want_json)
                except (EmberUserError, SchemaVersionError) as exc:
                    return self._error(400 if isinstance(exc, EmberUserError) else 503, str(exc), want_json)
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt:
                        return self._error(503, f"the lineage log cannot be read now: {exc}", want_json)
                except Exception as exc:  # noqa: BLE001 - a bug: one line to the client, the traceback to stderr
                    traceback.print_exc(file=sys.stderr)
                    return self._error(500, f"internal error ({type(exc).__name__}); see the dashboard's output",
                                       want_json)
        if want_json:
            return 200, "application/json", json.dumps(page.data, default=str, ensure_ascii=False).encode()
        return 200, "text/html; charset=utf-8", frame(page).encode()

    @staticmethod
    def _error(status: int, message: str, want_json: bool) -> tuple[int, str, bytes]:
        if want_json:
            return status, "application/json", json.dumps({"error": message, "status": status}).encode()
        return status, "text/html; charset=utf-8", error_page(status, message).encode()

    def _open(self) -> LineageLog:
        if self._log is None:
            self._log = LineageLog(self._conninfo)
        return self._log

    def _drop(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                pass
            self._log = None

    # -- the token ---------------------------------------------------------------------------

    def check(self, query: dict[str, list[str]], cookie_header: str | None, authorization: str | None) -> int:
        """200 if a request carries the token, 401 if it carries none, 403 if a wrong one."""
        offered = query.get("token", [None])[-1]
        if offered is None and authorization and authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        if offered is None and cookie_header:
            cookie = SimpleCookie()
            try:
                cookie.load(cookie_header)
            except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                return 401
            offered = cookie[COOKIE].value if COOKIE in cookie else None
        if offered is None:
            return 401
        return 200 if secrets.compare_digest(offered.encode(), self.token.encode()) else 403

    # -- listening ---------------------------------------------------------------------------

    def bind(self, host: str, port: int) -> str:
        """Listen on ``host:port`` (0: any free port); returns the URL to open, token included."""
        dashboard = self

        class Handler(_Handler):
            owner = dashboard

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        bound_host, bound_port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}/?token={self.token}"

    def serve_forever(self) -> None:
        assert self._server is not None, "bind() first"
        self._server.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            self._drop()


class _Handler(BaseHTTPRequestHandler):
    owner: Dashboard
    server_version = "ember-dashboard"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _refuse(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"the dashboard is read-only: GET only\n", True)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _answer(self, send_body: bool) -> None:
        if len(self.path) > PATH_CHARS_MAX:
            self._send(414, "text/plain; charset=utf-8", b"URL too long\n", send_body)
            return
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=False, max_num_fields=50)
        verdict = self.owner.check(query, self.headers.get("Cookie"), self.headers.get("Authorization"))
        if verdict != 200:
            message = ("this dashboard needs its token: open the URL `ember dashboard` printed" if verdict == 401
                       else "wrong token: open the URL `ember dashboard` printed")
            status, kind, body = self.owner._error(verdict, message, query.get("format", [""])[-1] == "json")
            self._send(status, kind, body, send_body)
            return
        status, kind, body = self.owner.answer(parts.path, query)
        self._send(status, kind, body, send_body, set_cookie="token" in query)

    def _send(self, status: int, kind: str, body: bytes, send_body: bool, set_cookie: bool = False) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token may be in the URL
        self.send_header("Cache-Control", "no-store")
        if set_cookie:
            self.send_header("Set-Cookie", f"{COOKIE}={self.owner.token}; Path=/; HttpOnly; SameSite=Strict")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # quiet: the command prints its URL and nothing per request
