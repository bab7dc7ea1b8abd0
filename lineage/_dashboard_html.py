"""The dashboard's HTML: escaping, the page frame, tables, links, and reading a page's query string.

Every page of ``ember dashboard`` (and ``chaos run --html``) is made of the
helpers here. Text that came from the log (function names, errors, ids,
arguments) goes through ``esc`` before it lands in markup, and markup is
only ever built by these helpers and the page modules, never from log text.
The frame links the package's own stylesheet and script (``/static/...``);
a standalone report inlines the stylesheet and carries no script.

It must never emit a URL of another host, an inline ``style=`` attribute or
an inline script (the served pages' CSP, ``default-src 'self'``, would block
them), and never read the log.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from ember.exceptions import EmberUserError
from ember.lineage._listing import OFFSET_MAX

PAGE_ROWS_DEFAULT = 50
PAGE_ROWS_MAX = 500
TEXT_CHARS_MAX = 20_000  # an error or traceback longer than this is cut, and says so


__all__ = ["BadRequest", "Page", "Query", "esc", "frame", "table"]


class BadRequest(EmberUserError):
    """A page was asked for with a parameter it cannot use: answered with 400 and this message."""


@dataclass
class Page:
    """One answer: a title, the body's markup, the JSON twin's data, and whether it should refresh itself."""

    title: str
    body: str
    data: Any
    live: bool = False
    crumbs: list[tuple[str, str]] = field(default_factory=list)  # (label, href) above the title


def esc(value: Any) -> str:
    """``value`` as text safe anywhere in markup, attribute values included."""
    return html.escape("" if value is None else str(value), quote=True)


def cut(text: str | None, chars_max: int = TEXT_CHARS_MAX) -> str:
    if not text:
        return ""
    return text if len(text) <= chars_max else text[:chars_max] + f"\n… ({len(text) - chars_max:,} more characters)"


def href(path: str, **params: Any) -> str:
    """A link within the dashboard, parameters that are None or False left out (already escaped)."""
    kept = {k: ("1" if v is True else v) for k, v in params.items() if v not in (None, False, "")}
    return esc(path + ("?" + urlencode(kept) if kept else ""))


def link(path: str, text: Any, css: str = "", **params: Any) -> str:
    cls = f' class="{esc(css)}"' if css else ""
    return f'<a href="{href(path, **params)}"{cls}>{esc(text)}</a>'


def task_link(task_id: str | None, text: str | None = None) -> str:
    return link(f"/task/{task_id}", text or task_id, "id") if task_id else "-"


def object_link(object_id: str | None, text: str | None = None) -> str:
    return link(f"/object/{object_id}", text or object_id, "id") if object_id else "-"


def when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if value else "-"


def state_badge(state: str | None) -> str:
    return f'<span class="state s-{esc((state or "none").lower())}">{esc(state or "-")}</span>'


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """A table of already-escaped cells (use ``esc`` or the link helpers for each)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(columns)}" class="none">(none)</td></tr>'
    return f'<table class="{esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list of (label, already-escaped value)."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def pager(path: str, query: Mapping[str, Any], offset: int, limit: int, shown: int) -> str:
    """Previous/next links that keep the page's filters."""
    parts = []
    if offset > 0:
        parts.append(link(path, "← newer", "pager", **{**query, "offset": max(offset - limit, 0) or None}))
    parts.append(f"<span>rows {offset + 1 if shown else 0:,}–{offset + shown:,}</span>")
    if shown == limit:
        parts.append(link(path, "older →", "pager", **{**query, "offset": offset + limit}))
    return '<nav class="pager">' + " ".join(parts) + "</nav>"


def asset(name: str) -> str:
    """A file shipped in the package's ``dashboard_assets`` folder."""
    return resources.files("ember.lineage").joinpath("dashboard_assets", name).read_text(encoding="utf-8")


def frame(page: Page, standalone: bool = False) -> str:
    """The whole document around a page: the served one links /static, a standalone one inlines its CSS."""
    if standalone:
        head = f"<style>{asset('style.css')}</style>"
    else:
        head = ('<link rel="stylesheet" href="/static/style.css">'
                '<script src="/static/live.js" defer></script>')
    nav = "" if standalone else (
        '<header><a class="brand" href="/">ember dashboard</a>'
        '<a href="/">jobs</a><a href="/chaos">chaos runs</a></header>')
    crumbs = " / ".join(f'<a href="{esc(h)}">{esc(label)}</a>' for label, h in page.crumbs)
    live = ' data-live="1"' if page.live and not standalone else ""
    note = '<p class="live-note">live: this page refreshes while the job runs</p>' if live else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(page.title)} · ember</title>{head}</head><body{live}>{nav}"
            f'<main id="main"><p class="crumbs">{crumbs}</p><h1>{esc(page.title)}</h1>{note}{page.body}</main>'
            f"</body></html>")


def error_page(status: int, message: str) -> str:
    reason = {400: "Bad request", 401: "Token required", 403: "Wrong token", 404: "Not found",
              405: "Method not allowed", 500: "Internal error", 503: "Log unavailable"}.get(status, "Error")
    return frame(Page(f"{status} {reason}", f'<p class="error">{esc(message)}</p>'
                      '<p><a href="/">back to the jobs</a></p>', {"error": message}))


class Query:
    """A page's query string, read with clear 400s for what does not parse."""

    def __init__(self, params: Mapping[str, list[str]]) -> None:
        self._params = params

    def text(self, name: str, chars_max: int = 200) -> str | None:
        values = self._params.get(name)
        if not values or not values[-1].strip():
            return None
        value = values[-1].strip()
        if len(value) > chars_max:
            raise BadRequest(f"{name}: at most {chars_max} characters")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{name}={value!r}: expected a whole number from {low} to {high:,}") from None
        if not low <= number <= high:
            raise BadRequest(f"{name}={number}: expected a whole number from {low} to {high:,}")
        return number

    def flag(self, name: str) -> bool:
        value = self.text(name)
        if value is None:
            return False
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise BadRequest(f"{name}={value!r}: expected 1 or 0")

    def time(self, name: str) -> dt.datetime | None:
        value = self.text(name, 40)
        if value is None:
            return None
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{name}={value!r}: expected an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.text(name) or default
        if value not in choices:
            raise BadRequest(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value

    def paging(self) -> tuple[int, int]:
        return (self.integer("offset", 0, 0, OFFSET_MAX),
                self.integer("limit", PAGE_ROWS_DEFAULT, 1, PAGE_ROWS_MAX))
