"""The dashboard: HTML pages over the orchestrator's calls, for people.

Mounted by the API at ``/dashboard`` (every link below is relative to where
it is mounted). Pages are rendered on the server from the storage, in
process; a small script of our own refreshes them. Nothing loads from
anywhere else: the Content-Security-Policy allows this origin only.

- ``GET /``: the calls, newest first, 50 to a page ("older" follows the
  ``before`` cursor, the (created_at, id) of the page's last call), filtered
  by state, status (a status name such as ``permanent_error``, ``failed``:
  done and not OK, or ``cancelled``), function, root id, top-level calls only, and
  creation time (``since``/``until``: ISO 8601 in UTC, Unix seconds, or an age
  such as ``15m``, ``2h``, ``1d``); the counts per state on top. The rows
  refresh every 2 s from ``GET /rows`` (same query, JSON) without a reload.
- ``GET /calls/{id}``: a call's fields, its tree of descendants, its
  attempts on a timeline (with their tracebacks), its error, its input and
  output (plain data decoded; sealed pickles only by their size), where it
  waits (the frames of each task of a suspended coroutine), its snapshot
  sizes; a Cancel button while it is not done, Retry once it failed or was
  cancelled (``POST /calls/{id}/cancel``, ``/retry``: a new call).
  While the call is not done, the page reloads itself when it changes
  (``GET /calls/{id}/state``).
- ``GET|POST /login``, ``POST /logout``; ``GET /static/...``: the stylesheet
  and the script.

Auth, when the orchestrator has an API key: pasting the key in the login
form sets a session cookie whose value is the HMAC-SHA256 of a fixed label
keyed by the API key (never the key; changing the key ends every session),
``HttpOnly``, ``SameSite=Strict`` and ``Path`` the dashboard's root
(``Secure`` over HTTPS). A page without it redirects to the login form; a
POST without it is refused (403), as is a POST whose ``Origin`` (when sent)
is not this host, or that a browser marks cross-site. ``Authorization:
Bearer <API key>`` is also accepted, as by the API, for scripts. Without an
API key (an orchestrator nothing else can reach) there is no login.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import html
import math
import pprint
import reprlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import msgpack  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import _wire
from .._status import Status
from ._api import retry_call, status_value
from ._engine import Engine
from ._storage import (
    CANCELLED,
    DONE,
    PENDING,
    RUNNING,
    WAITING,
    AttemptRecord,
    CallQuery,
    CallRecord,
    CallSummary,
    status_name,
)

STATES = (PENDING, RUNNING, WAITING, DONE)
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
TREE_LIMIT = 500
"""Calls of a tree shown on a call's page at most."""
MAX_ATTEMPTS_SHOWN = 500
MAX_VALUE_TEXT = 100_000
"""Characters of a rendered input or output at most."""
PRETTY_LIMIT = 64 * 1024
"""Values encoded in more bytes than this are shown abbreviated, not pretty-printed."""
REFRESH_SECONDS = 2.0
COUNTS_SECONDS = 1.0
"""How long the counts per state are reused: however many pages are open and
refreshing, the storage counts at most once a second."""
MAX_FORM = 16 * 1024

COOKIE = "dispatch_dashboard"
SESSION_LABEL = b"dispatch dashboard session v1"
SESSION_DAYS = 7

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


def session_token(api_key: str) -> str:
    """The session cookie's value for ``api_key``: an HMAC of a fixed label, not the key."""
    return hmac.new(api_key.encode(), SESSION_LABEL, hashlib.sha256).hexdigest()


def dashboard_app(engine: Engine, api_key: str | None) -> Starlette:
    """The dashboard of ``engine``'s orchestrator; ``api_key`` None: no login."""
    storage = engine.storage
    counted: list[tuple[float, dict[str, int]]] = []
    token = session_token(api_key) if api_key else None
    bearer = f"Bearer {api_key}".encode() if api_key else None

    def authenticated(request: Request) -> bool:
        if token is None:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if hmac.compare_digest(cookie.encode(), token.encode()):
            return True
        given = request.headers.get("authorization")
        return (
            given is not None and bearer is not None and hmac.compare_digest(given.encode(), bearer)
        )

    def page(handler: Handler) -> Handler:
        """A page: without a session, the login form."""

        async def guarded(request: Request) -> Response:
            if not authenticated(request):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                query = urlencode({"next": target})
                return _redirect(f"{_base(request)}/login?{query}")
            return await handler(request)

        return guarded

    def data(handler: Handler) -> Handler:
        """What the script fetches: 401 without a session (the script reloads the page)."""

        async def guarded(request: Request) -> Response:
            if not authenticated(request):
                return _text("log in again", 401)
            return await handler(request)

        return guarded

    def action(handler: Handler) -> Handler:
        """A POST: 403 without a session, or from another site."""

        async def guarded(request: Request) -> Response:
            if not _same_origin(request):
                return _text("forbidden: this form was posted from another site", 403)
            if not authenticated(request):
                return _text("forbidden: log in to the dashboard first", 403)
            return await handler(request)

        return guarded

    # --- the calls list ----------------------------------------------------------------

    async def list_calls(request: Request) -> tuple[_Listing, dict[str, int]]:
        listing = _listing(request)
        if not listing.errors:
            query = listing.query
            # One more than shown: is there an older page?
            rows = await storage.list_calls(dataclasses.replace(query, limit=query.limit + 1))
            listing.rows, listing.more = rows[: query.limit], len(rows) > query.limit
        return listing, await counts()

    async def counts() -> dict[str, int]:
        if counted and time.monotonic() - counted[0][0] < COUNTS_SECONDS:
            return counted[0][1]
        value = await storage.counts()
        counted[:] = [(time.monotonic(), value)]
        return value

    async def calls_page(request: Request) -> Response:
        listing, counts = await list_calls(request)
        base = _base(request)
        return _page(
            request,
            "calls",
            _calls_body(base, listing, counts, time.time()),
            status=400 if listing.errors else 200,
            logout=token is not None,
        )

    async def rows(request: Request) -> Response:
        listing, counts = await list_calls(request)
        base = _base(request)
        if listing.errors:
            return _text("; ".join(listing.errors), 400)
        document = {
            "rows": _rows_html(base, listing.rows, time.time()),
            "counts": _counts_html(base, counts, listing),
            "pager": _pager_html(base, listing),
        }
        return JSONResponse(document, headers=SECURITY_HEADERS)

    # --- a call ----------------------------------------------------------------------

    async def call_page(request: Request) -> Response:
        call_id = request.path_params["id"]
        record = await storage.get(call_id)
        base = _base(request)
        if record is None:
            body = f"<h1>No such call</h1><p>There is no call <code>{_e(call_id)}</code>.</p>"
            return _page(request, "no such call", body, status=404, logout=token is not None)
        tree = await storage.tree(call_id, TREE_LIMIT + 1)
        notice = _notice(request, base)
        return _page(
            request,
            f"{record.function} {record.id}",
            _call_body(base, record, tree, notice, time.time()),
            logout=token is not None,
        )

    async def call_state(request: Request) -> Response:
        record = await storage.get(request.path_params["id"])
        if record is None:
            return _text("no such call", 404)
        return JSONResponse({"version": _version(record)}, headers=SECURITY_HEADERS)

    async def cancel(request: Request) -> Response:
        call_id = request.path_params["id"]
        if await storage.get(call_id) is None:
            return _text("no such call", 404)
        count = await storage.cancel(call_id, time.time())
        engine.wake()
        return _redirect(f"{_base(request)}/calls/{_q(call_id)}?done=cancelled&n={count}")

    async def retry(request: Request) -> Response:
        call_id = request.path_params["id"]
        record = await storage.get(call_id)
        if record is None:
            return _text("no such call", 404)
        try:
            new = await retry_call(engine, call_id)
        except (LookupError, ValueError) as error:
            base = _base(request)
            tree = await storage.tree(call_id, TREE_LIMIT + 1)
            notice = f'<p class="notice bad">Cannot retry: {_e(error)}</p>'
            body = _call_body(base, record, tree, notice, time.time())
            return _page(request, record.function, body, status=409, logout=token is not None)
        query = urlencode({"done": "retried", "from": call_id})
        return _redirect(f"{_base(request)}/calls/{_q(new)}?{query}")

    # --- sessions --------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        base = _base(request)
        if token is None:
            return _redirect(f"{base}/")
        target = _next(base, request.query_params.get("next"))
        return _page(request, "log in", _login_body(base, target, None))

    async def login(request: Request) -> Response:
        base = _base(request)
        if token is None or api_key is None:
            return _redirect(f"{base}/")
        if not _same_origin(request):
            return _text("forbidden: this form was posted from another site", 403)
        form = await _form(request)
        target = _next(base, form.get("next"))
        given = form.get("api_key", "").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            body = _login_body(base, target, "That is not this orchestrator's API key.")
            return _page(request, "log in", body, status=401)
        response = _redirect(target)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_DAYS * 24 * 3600,
            path=base or "/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(request: Request) -> Response:
        base = _base(request)
        if not _same_origin(request):
            return _text("forbidden: this form was posted from another site", 403)
        response = _redirect(f"{base}/login")
        response.delete_cookie(COOKIE, path=base or "/", httponly=True, samesite="strict")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _text("not found", 404)
        content, media_type = _STATIC[name]
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
        return Response(content, media_type=media_type, headers=headers)

    return Starlette(
        routes=[
            Route("/", page(calls_page), methods=["GET"]),
            Route("/rows", data(rows), methods=["GET"]),
            Route("/calls/{id}", page(call_page), methods=["GET"]),
            Route("/calls/{id}/state", data(call_state), methods=["GET"]),
            Route("/calls/{id}/cancel", action(cancel), methods=["POST"]),
            Route("/calls/{id}/retry", action(retry), methods=["POST"]),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/static/{name}", static, methods=["GET"]),
        ]
    )


# --- requests ---------------------------------------------------------------------------


def _base(request: Request) -> str:
    """The path the dashboard is mounted at ("/dashboard"), without a final slash."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _same_origin(request: Request) -> bool:
    """Whether a POST may come from this dashboard's own pages: a browser sends
    ``Origin`` (and ``Sec-Fetch-Site``) with a form it posts."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form's fields (their first values)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def _next(base: str, target: str | None) -> str:
    """Where to go after logging in: a page of this dashboard, nowhere else."""
    if (
        target
        and target.startswith(f"{base}/")
        and not target.startswith("//")
        and "\\" not in target
        and not urlsplit(target).netloc
    ):
        return target
    return f"{base}/"


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _text(text: str, status: int) -> Response:
    return Response(text, status_code=status, media_type="text/plain", headers=SECURITY_HEADERS)


def _notice(request: Request, base: str) -> str:
    """What the POST that led here did (from fixed codes, never text from the URL)."""
    done = request.query_params.get("done")
    if done == "cancelled":
        count = request.query_params.get("n", "")
        calls = f"{int(count)} call{'s' if count != '1' else ''}" if count.isdigit() else "calls"
        return f'<p class="notice">Cancelled {calls} (the call and its descendants not done).</p>'
    if done == "retried":
        origin = request.query_params.get("from", "")
        link = f'<a href="{base}/calls/{_q(origin)}">{_e(origin)}</a>'
        return f'<p class="notice">This call retries {link}.</p>'
    return ""


# --- the calls list -----------------------------------------------------------------------


class _Listing:
    def __init__(self) -> None:
        self.query = CallQuery(limit=PAGE_SIZE)
        """The list's query, as parsed from the URL."""
        self.form: dict[str, str] = {}
        """The filters as given (the form's values; links keep them)."""
        self.errors: list[str] = []
        self.rows: list[CallSummary] = []
        self.more = False


FILTERS = ("state", "status", "function", "root_id", "roots_only", "since", "until", "limit")


def _listing(request: Request) -> _Listing:
    listing = _Listing()
    params = request.query_params
    query: dict[str, Any] = {}
    for name in FILTERS:
        value = params.get(name, "").strip()
        if value:
            listing.form[name] = value
    form = listing.form
    if "state" in form:
        if form["state"] in STATES:
            query["state"] = form["state"]
        else:
            listing.errors.append(f"unknown state {form['state']!r}")
    if "status" in form:
        try:
            query["status"] = status_value(form["status"].lower())
        except ValueError as error:
            listing.errors.append(str(error))
    query["function"] = form.get("function")
    query["root_id"] = form.get("root_id")
    query["roots_only"] = form.get("roots_only") in ("1", "on", "true")
    for name in ("since", "until"):
        if name in form:
            try:
                query[name] = parse_time(form[name], time.time())
            except ValueError as error:
                listing.errors.append(f"{name}: {error}")
    if "limit" in form:
        try:
            query["limit"] = max(1, min(MAX_PAGE_SIZE, int(form["limit"])))
        except ValueError:
            listing.errors.append(f"limit: not a number: {form['limit']!r}")
    before = params.get("before", "")
    if before:
        created, _, call_id = before.partition(",")
        try:
            query["before"] = (float(created), call_id)
        except ValueError:
            listing.errors.append("before: not a cursor of this list")
    listing.query = dataclasses.replace(listing.query, **query)
    return listing


def parse_time(text: str, now: float) -> float:
    """Unix seconds from ISO 8601 (UTC unless it says otherwise), Unix
    seconds, or an age: a number and ``s``, ``m``, ``h`` or ``d`` (``15m``: 15
    minutes ago)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        value = float(text)
        if math.isfinite(value):
            return value
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    compact = text.lower().removesuffix("ago").strip()
    if compact and compact[-1] in units:
        with contextlib.suppress(ValueError):
            amount = float(compact[:-1].strip())
            if math.isfinite(amount):
                return now - amount * units[compact[-1]]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601 in UTC, Unix seconds, or an age like 15m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _list_url(base: str, form: dict[str, str], **changes: str | None) -> str:
    fields = {**form, **changes}
    query = urlencode({k: v for k, v in fields.items() if v})
    return f"{base}/?{query}" if query else f"{base}/"


def _calls_body(base: str, listing: _Listing, counts: dict[str, int], now: float) -> str:
    form = listing.form
    errors = "".join(f'<p class="notice bad">{_e(error)}</p>' for error in listing.errors)
    state_options = _options([("", "any"), *((s, s) for s in STATES)], form.get("state", ""))
    statuses = [("", "any"), ("failed", "failed (done, not ok)"), ("cancelled", "cancelled")]
    statuses += [(s.name.lower(), s.name.lower()) for s in Status]
    status_options = _options(statuses, form.get("status", "").lower())
    rows_query = urlencode(
        {**form, **({"before": _cursor(listing.query.before)} if listing.query.before else {})}
    )
    checked = " checked" if listing.query.roots_only else ""
    return f"""
<h1>Calls</h1>
<div id="counts" class="counts">{_counts_html(base, counts, listing)}</div>
{errors}
<form class="filters" method="get" action="{base}/">
  <label>state <select name="state">{state_options}</select></label>
  <label>status <select name="status">{status_options}</select></label>
  <label>function <input name="function" value="{_e(form.get("function", ""))}"
    placeholder="name" size="18"></label>
  <label>root id <input name="root_id" value="{_e(form.get("root_id", ""))}" size="18"></label>
  <label>since <input name="since" value="{_e(form.get("since", ""))}"
    placeholder="2025-01-31 12:00, 1h" size="16"></label>
  <label>until <input name="until" value="{_e(form.get("until", ""))}"
    placeholder="UTC, or an age" size="16"></label>
  <label class="check"><input type="checkbox" name="roots_only" value="1"{checked}>
    top-level only</label>
  {f'<input type="hidden" name="limit" value="{_e(form["limit"])}">' if "limit" in form else ""}
  <button type="submit">Filter</button>
  <a class="button quiet" href="{base}/">Clear</a>
</form>
<p class="meta"><label class="check"><input type="checkbox" id="live" checked> live</label>
  <span id="updated" class="muted">times in UTC</span></p>
<table id="calls" class="calls" data-rows="{base}/rows?{_e(rows_query)}">
  <thead><tr><th>id</th><th>function</th><th>state</th><th>status</th>
    <th class="num">attempt</th><th>created</th><th class="num">duration</th></tr></thead>
  <tbody>{_rows_html(base, listing.rows, now)}</tbody>
</table>
<nav id="pager" class="pager">{_pager_html(base, listing)}</nav>
"""


def _counts_html(base: str, counts: dict[str, int], listing: _Listing) -> str:
    items = []
    for state in STATES:
        url = _list_url(base, listing.form, state=state)
        current = ' aria-current="true"' if listing.query.state == state else ""
        items.append(
            f'<a class="count state-{state}" href="{_e(url)}"{current}>{state} '
            f'<b data-state="{state}">{counts.get(state, 0):,}</b></a>'
        )
    total = sum(counts.values())
    items.append(f'<span class="count">total <b data-state="total">{total:,}</b></span>')
    return "".join(items)


def _rows_html(base: str, rows: Sequence[CallSummary], now: float) -> str:
    if not rows:
        return '<tr><td colspan="7" class="empty">No calls match.</td></tr>'
    out = []
    for call in rows:
        end = call.finished_at if call.finished_at is not None else now
        duration = _duration(end - call.created_at)
        if call.state != DONE:
            duration += "…"
        child = (
            f' <span class="muted" title="child of {_e(call.parent_id)}">↳</span>'
            if call.parent_id
            else ""
        )
        out.append(
            f'<tr data-id="{_e(call.id)}">'
            f'<td class="id"><a href="{base}/calls/{_q(call.id)}">{_e(call.id)}</a></td>'
            f'<td class="function">{_e(call.function)}{child}</td>'
            f"<td>{_state_badge(call.state)}</td>"
            f"<td>{_status_badge(call.state, call.status)}</td>"
            f'<td class="num">{call.attempt}</td>'
            f'<td class="time">{_time(call.created_at)}</td>'
            f'<td class="num">{duration}</td></tr>'
        )
    return "".join(out)


def _pager_html(base: str, listing: _Listing) -> str:
    links = []
    if listing.query.before is not None:
        links.append(f'<a href="{_e(_list_url(base, listing.form))}">« newest</a>')
    if listing.more and listing.rows:
        last = listing.rows[-1]
        url = _list_url(base, listing.form, before=_cursor((last.created_at, last.id)))
        links.append(f'<a rel="next" href="{_e(url)}">older »</a>')
    return " ".join(links)


def _cursor(before: tuple[float, str] | None) -> str:
    assert before is not None
    return f"{before[0]!r},{before[1]}"


# --- a call ---------------------------------------------------------------------------------


def _version(record: CallRecord) -> str:
    """Changes whenever what the call's page shows of a call in progress changes."""
    return "|".join(
        str(part)
        for part in (
            record.state,
            record.status,
            record.attempt,
            len(record.attempts),
            record.cancelled_at,
            len(record.children),
            hashlib.sha256(record.frames or b"").hexdigest()[:16],
        )
    )


def _call_body(
    base: str, record: CallRecord, tree: list[CallSummary], notice: str, now: float
) -> str:
    call_url = f"{base}/calls/{_q(record.id)}"
    buttons = []
    if record.state != DONE:
        buttons.append(
            f'<form method="post" action="{call_url}/cancel" '
            f'data-confirm="Cancel this call and its descendants?">'
            f'<button type="submit" class="danger" id="cancel">Cancel</button></form>'
        )
    elif record.status != Status.OK.value:  # failed or cancelled
        buttons.append(
            f'<form method="post" action="{call_url}/retry">'
            f'<button type="submit" id="retry">Retry</button></form>'
        )
    watch = (
        f' data-watch="{call_url}/state" data-version="{_e(_version(record))}"'
        if record.state != DONE
        else ""
    )
    sections = [
        _fields_html(base, record, now),
        _error_html(record),
        _where_html(record),
        _tree_html(base, record, tree),
        _attempts_html(record, now),
        _snapshots_html(record.attempts),
        _value_section("Input", record.input, arguments=True),
        _value_section("Output", record.output, arguments=False),
    ]
    return f"""
<div class="call"{watch}>
<p class="crumbs"><a href="{base}/">Calls</a> /
  <a href="{_e(_list_url(base, {"root_id": record.root_id}))}">tree {_e(record.root_id)}</a></p>
<h1><span class="function">{_e(record.function)}</span>
  {_state_badge(record.state)} {_status_badge(record.state, record.status)}</h1>
{notice}
<div class="actions">{"".join(buttons)}</div>
{"".join(sections)}
</div>
"""


def _fields_html(base: str, record: CallRecord, now: float) -> str:
    def link(call_id: str | None) -> str:
        if call_id is None:
            return '<span class="muted">none</span>'
        return f'<a href="{base}/calls/{_q(call_id)}">{_e(call_id)}</a>'

    end = record.finished_at if record.finished_at is not None else now
    duration = _duration(end - record.created_at) + ("" if record.finished_at else " so far")
    rows = [
        ("id", f'<code id="call-id">{_e(record.id)}</code>'),
        ("function", f"<code>{_e(record.function)}</code>"),
        ("state", _state_badge(record.state)),
        ("status", _status_badge(record.state, record.status) or "—"),
        ("attempt", f"{record.attempt} of its step; {_plural(len(record.attempts), 'run')}"),
        ("root", link(record.root_id) if record.root_id != record.id else "itself"),
        ("parent", link(record.parent_id)),
        ("endpoint", f"<code>{_e(record.endpoint)}</code>"),
        ("created", _time(record.created_at)),
        ("finished", _time(record.finished_at) if record.finished_at else "—"),
        ("duration", duration),
    ]
    if record.cancelled_at is not None:
        rows.append(("cancelled", _time(record.cancelled_at)))
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<section><table class="fields" id="fields">{cells}</table></section>'


def _error_html(record: CallRecord) -> str:
    if record.error is None:
        return _last_error_html(record)
    title = "Cancelled" if record.status == CANCELLED else "Error"
    data = record.error
    try:
        error = _wire.Error.from_msgpack(data)
    except _wire.ProtocolError as problem:
        return f'<section><h2>{title}</h2><p class="muted">undecodable: {_e(problem)}</p></section>'
    status = status_name(error.status) or ""
    traceback = (
        f'<pre class="traceback" id="traceback">{_e(error.traceback)}</pre>'
        if error.traceback
        else '<p class="muted">no traceback</p>'
    )
    return f"""
<section class="error" id="error"><h2>{title}</h2>
<p><code class="error-type">{_e(error.type)}</code>:
  <span class="error-message">{_e(error.message)}</span>
  <span class="muted">({_e(status)})</span></p>
{traceback}
</section>"""


def _last_error_html(record: CallRecord) -> str:
    """For a call still going: the error of its last failed attempt, if any."""
    for attempt in reversed(record.attempts):
        if attempt.error_type is not None:
            traceback = (
                f'<pre class="traceback">{_e(attempt.traceback)}</pre>' if attempt.traceback else ""
            )
            return f"""
<section class="error"><h2>Last error <span class="muted">(run {attempt.number})</span></h2>
<p><code class="error-type">{_e(attempt.error_type)}</code>:
  <span class="error-message">{_e(attempt.error_message or "")}</span></p>
{traceback}
</section>"""
    return ""


def _where_html(record: CallRecord) -> str:
    """Where a suspended coroutine waits: each task's stack of frames."""
    if record.frames is None:
        return ""
    try:
        tasks = msgpack.unpackb(record.frames)
    except Exception as problem:
        return (
            f'<section id="where"><h2>Where is it waiting?</h2>'
            f'<p class="muted">undecodable: {_e(problem)}</p></section>'
        )
    out = ['<section id="where"><h2>Where is it waiting?</h2>']
    if not isinstance(tasks, list) or not tasks:
        out.append('<p class="muted">no frames described</p>')
    for index, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict):
            continue
        number = task.get("task", index)
        frames = task.get("frames")
        out.append(f'<div class="task"><h3>task {_e(number)}</h3><ol class="stack">')
        for frame in frames if isinstance(frames, list) else []:
            if not isinstance(frame, dict):
                continue
            locals_ = frame.get("locals")
            table = ""
            if isinstance(locals_, dict) and locals_:
                cells = "".join(
                    f"<tr><th>{_e(name)}</th><td><code>{_e(value)}</code></td></tr>"
                    for name, value in locals_.items()
                )
                table = f'<table class="locals">{cells}</table>'
            out.append(
                f'<li class="frame"><code class="frame-function">{_e(frame.get("function"))}</code>'
                f' <span class="location">{_e(frame.get("file"))}:{_e(frame.get("line"))}</span>'
                f"{table}</li>"
            )
        out.append("</ol></div>")
    out.append("</section>")
    return "".join(out)


def _tree_html(base: str, record: CallRecord, tree: list[CallSummary]) -> str:
    """The call and its descendants as nested lists (iteratively: trees may be deep)."""
    if not tree:
        return ""
    more = len(tree) > TREE_LIMIT
    tree = tree[:TREE_LIMIT]
    children: dict[str | None, list[CallSummary]] = {}
    top = tree[0]
    for call in tree:
        if call.id == record.id:
            top = call
        else:
            children.setdefault(call.parent_id, []).append(call)
    out = ['<ul class="tree">']
    stack: list[Iterator[CallSummary]] = [iter([top])]
    while stack:
        following = next(stack[-1], None)
        if following is None:
            stack.pop()
            out.append("</ul></li>" if stack else "</ul>")
            continue
        call = following
        current = ' aria-current="page"' if call.id == record.id else ""
        out.append(
            f'<li><a href="{base}/calls/{_q(call.id)}"{current}>{_e(call.function)}</a> '
            f"{_state_badge(call.state)} {_status_badge(call.state, call.status)}"
            f' <span class="muted id">{_e(call.id)}</span>'
        )
        kids = children.get(call.id)
        if kids:
            out.append("<ul>")
            stack.append(iter(kids))
        else:
            out.append("</li>")
    note = f'<p class="muted">the first {TREE_LIMIT} calls of the tree only</p>' if more else ""
    count = len(tree) - 1
    if count == 0:
        return '<section id="tree"><h2>Descendants</h2><p class="muted">none</p></section>'
    title = f'Descendants <span class="muted">({count}{"+" if more else ""})</span>'
    return f'<section id="tree"><h2>{title}</h2>{"".join(out)}{note}</section>'


def _attempts_html(record: CallRecord, now: float) -> str:
    attempts = record.attempts[-MAX_ATTEMPTS_SHOWN:]
    if not attempts:
        return '<section id="attempts"><h2>Attempts</h2><p class="muted">none yet</p></section>'
    start = min([record.created_at, *(a.started_at for a in attempts if a.started_at)])
    end = max(
        [
            record.finished_at or now,
            *(a.finished_at or now for a in attempts if a.started_at is not None),
        ]
    )
    span = max(end - start, 1e-6)
    rows = []
    for attempt in attempts:
        started = attempt.started_at
        finished = attempt.finished_at
        if started is not None:
            length = (finished if finished is not None else now) - started
            x = 100 * (started - start) / span
            width = max(0.4, 100 * length / span)
            name = status_name(attempt.status) if finished is not None else "running"
            bar = (
                f'<svg class="bar" role="img" aria-label="{_e(name)}" width="100%" height="14">'
                f'<rect x="{x:.3f}%" y="1" width="{min(width, 100 - x):.3f}%" height="12" '
                f'class="{_status_class(attempt.status, finished is None)}">'
                f"<title>{_e(name)}, {_duration(length)}</title></rect></svg>"
            )
            duration = _duration(length) + ("" if finished is not None else "…")
        else:
            bar, duration = "", "—"
        error = ""
        if attempt.error_type is not None:
            error = (
                f'<code class="error-type">{_e(attempt.error_type)}</code>: '
                f'<span class="error-message">{_e(_clip(attempt.error_message or "", 300))}</span>'
            )
        status = (
            _badge(status_name(attempt.status) or "", _status_class(attempt.status, False))
            if attempt.status is not None
            else _badge("running", "state-running")
            if finished is None
            else ""
        )
        rows.append(
            f'<tr class="attempt"><td class="num">{attempt.number}</td>'
            f'<td class="num">{attempt.attempt}</td>'
            f'<td class="time">{_time(started) if started else "—"}</td>'
            f'<td class="num">{duration}</td><td>{status}</td><td>{error}</td>'
            f'<td class="num">{_size(attempt.snapshot_size)}</td>'
            f'<td class="timeline">{bar}</td></tr>'
        )
        if attempt.traceback:
            rows.append(
                f'<tr class="details"><td></td><td colspan="7"><details>'
                f"<summary>traceback of run {attempt.number}</summary>"
                f'<pre class="traceback">{_e(attempt.traceback)}</pre></details></td></tr>'
            )
    skipped = len(record.attempts) - len(attempts)
    note = (
        f'<p class="muted">the last {len(attempts)} only ({skipped} before)</p>' if skipped else ""
    )
    return f"""
<section id="attempts"><h2>Attempts</h2>{note}
<table class="attempts">
<thead><tr><th class="num">run</th><th class="num">attempt</th><th>started</th>
  <th class="num">duration</th><th>status</th><th>error</th><th class="num">snapshot</th>
  <th class="timeline">timeline <span class="muted">{_duration(span)}</span></th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>"""


def _snapshots_html(attempts: Sequence[AttemptRecord]) -> str:
    sizes = [(a.number, a.snapshot_size) for a in attempts if a.snapshot_size is not None]
    if not sizes:
        return ""
    largest = max(size for _, size in sizes) or 1
    width = min(100 / len(sizes), 4.0)
    bars = "".join(
        f'<rect x="{i * width:.3f}%" y="{100 - 100 * size / largest:.3f}%" '
        f'width="{max(width * 0.8, 0.2):.3f}%" height="{100 * size / largest:.3f}%" '
        f'class="snapshot"><title>run {number}: {_size(size)}</title></rect>'
        for i, (number, size) in enumerate(sizes)
    )
    last = sizes[-1][1]
    smallest = min(size for _, size in sizes)
    return f"""
<section id="snapshots"><h2>Snapshot sizes</h2>
<p>{_plural(len(sizes), "snapshot")}: last {_size(last)}, smallest {_size(smallest)},
  largest {_size(largest)}</p>
<svg class="chart" role="img" aria-label="snapshot size of each run" width="100%"
  height="80">{bars}</svg></section>"""


def _value_section(title: str, data: bytes | None, *, arguments: bool) -> str:
    anchor = title.lower()
    if data is None:
        return f'<section id="{anchor}"><h2>{title}</h2><p class="muted">none</p></section>'
    try:
        value = _wire.readable(data)
    except Exception as problem:
        return (
            f'<section id="{anchor}"><h2>{title}</h2><p class="muted">'
            f"cannot decode {len(data)} bytes: {_e(problem)}</p></section>"
        )
    large = len(data) > PRETTY_LIMIT
    size = f' <span class="muted">({_size(len(data))}{", abbreviated" if large else ""})</span>'
    if (
        arguments
        and type(value) is list
        and len(value) == 2
        and type(value[0]) is list
        and type(value[1]) is dict
    ):
        cells = [
            f'<tr><th>{index}</th><td><pre class="value">{_e(_show(arg, large))}</pre></td></tr>'
            for index, arg in enumerate(value[0])
        ]
        cells += [
            f'<tr><th>{_e(name)}</th><td><pre class="value">{_e(_show(arg, large))}</pre></td></tr>'
            for name, arg in value[1].items()
        ]
        body = (
            f'<table class="kv">{"".join(cells)}</table>'
            if cells
            else '<p class="muted">no arguments</p>'
        )
    else:
        body = f'<pre class="value">{_e(_show(value, large))}</pre>'
    return f'<section id="{anchor}"><h2>{title}{size}</h2>{body}</section>'


_abbreviated = reprlib.Repr()
_abbreviated.maxstring = _abbreviated.maxother = 2000
_abbreviated.maxlist = _abbreviated.maxtuple = _abbreviated.maxdict = 100
_abbreviated.maxlevel = 6


def _show(value: Any, large: bool) -> str:
    """A readable text of a decoded value (sealed pickles show as their size)."""
    if isinstance(value, _wire.Sealed):
        return f"sealed pickle, {value.size} bytes"
    try:
        text = _abbreviated.repr(value) if large else pprint.pformat(value, width=96)
    except Exception as problem:  # a value decoded from msgpack always has a repr
        text = f"<cannot show: {problem}>"
    return _clip(text, MAX_VALUE_TEXT)


# --- the login form -------------------------------------------------------------------------


def _login_body(base: str, target: str, error: str | None) -> str:
    problem = f'<p class="notice bad" id="login-error">{_e(error)}</p>' if error else ""
    return f"""
<div class="login">
<h1>dispatch</h1>
<p>Paste the orchestrator's API key (<code>DISPATCH_API_KEY</code>, or
  <code>.dispatch/keys.json</code>) to open its dashboard.</p>
{problem}
<form method="post" action="{base}/login">
  <input type="hidden" name="next" value="{_e(target)}">
  <label>API key <input type="password" name="api_key" autocomplete="current-password"
    required autofocus size="40"></label>
  <button type="submit">Log in</button>
</form>
</div>"""


# --- pieces ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _q(call_id: str) -> str:
    """A call id in a URL path."""
    return quote(call_id, safe="")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[:size] + f"… ({len(text) - size:,} more characters)"


def _options(choices: Iterable[tuple[str, str]], selected: str) -> str:
    return "".join(
        f'<option value="{_e(value)}"{" selected" if value == selected else ""}>'
        f"{_e(label)}</option>"
        for value, label in choices
    )


def _badge(text: str, cls: str) -> str:
    return f'<span class="badge {cls}">{_e(text)}</span>'


def _state_badge(state: str) -> str:
    return _badge(state, f"state-{state}")


def _status_class(status: int | None, running: bool) -> str:
    if running or status is None:
        return "state-running"
    if status == CANCELLED:
        return "st-cancelled"
    if status == Status.OK.value:
        return "st-ok"
    try:
        retried = Status(status).retry
    except ValueError:
        retried = False
    return "st-retry" if retried else "st-fail"


def _status_badge(state: str, status: int | None) -> str:
    """A call's status: once done, its outcome (a failure in red, whether or not
    its status is one that is retried: it was, as far as it could be); before
    that, the status of its last attempt if it failed (it is being retried)."""
    name = status_name(status)
    if name is None:
        return ""
    if state != DONE:
        if status == Status.OK.value:
            return ""
        return (
            f'<span class="badge last {_status_class(status, False)}" '
            f'title="status of the last attempt: retrying">{_e(name)}</span>'
        )
    cls = _status_class(status, False)
    return _badge(name, "st-fail" if cls == "st-retry" else cls)


def _time(moment: float | None) -> str:
    if moment is None:
        return "—"
    when = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f'<time datetime="{when.isoformat()}" title="{moment!r}">{text}</time>'


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _size(size: int | None) -> str:
    if size is None:
        return "—"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def _page(
    request: Request, title: str, body: str, *, status: int = 200, logout: bool = False
) -> Response:
    base = _base(request)
    css = f"{base}/static/dashboard.css?v={_STATIC_VERSION}"
    js = f"{base}/static/dashboard.js?v={_STATIC_VERSION}"
    session = (
        f'<form method="post" action="{base}/logout" class="logout">'
        f'<button type="submit" class="quiet">Log out</button></form>'
        if logout
        else ""
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · dispatch</title>
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head><body>
<header><a class="brand" href="{base}/">dispatch</a>{session}</header>
<main>{body}</main>
</body></html>"""
    return Response(document, status_code=status, media_type="text/html", headers=SECURITY_HEADERS)


CSS = """
:root { --fg: #1d232b; --muted: #6b7380; --bg: #fff; --line: #e3e6ea; --head: #f5f6f8;
  --link: #1f5fbf; --ok: #1d7a3a; --fail: #c0262d; --retry: #b45b00; --cancel: #6b7380;
  --pending: #5b6b82; --running: #1f5fbf; --waiting: #7a3fb0; --done: #2d3540; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e3e6ea; --muted: #98a1ad; --bg: #15191e; --line: #2c333c; --head: #1d232b;
    --link: #7fb0ff; --ok: #4cc26f; --fail: #ff6b6b; --retry: #f0a34b; --cancel: #98a1ad;
    --pending: #9aa9bf; --running: #7fb0ff; --waiting: #c59cf0; --done: #c9d0d8; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; justify-content: space-between;
  padding: 8px 20px; border-bottom: 1px solid var(--line); background: var(--head); }
.brand { font-weight: 700; font-size: 16px; color: var(--fg); text-decoration: none; }
main { padding: 12px 20px 40px; max-width: 1400px; }
a { color: var(--link); }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
h3 { font-size: 14px; margin: 12px 0 4px; }
code, pre, .id, .time, .num { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace;
  font-size: 12.5px; }
pre { background: var(--head); border: 1px solid var(--line); padding: 8px 10px;
  overflow: auto; max-height: 480px; white-space: pre-wrap; word-break: break-word; margin: 0; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
thead th { background: var(--head); font: 600 13px system-ui, sans-serif; position: sticky;
  top: 0; }
.calls { width: 100%; }
.calls td.id { max-width: 22ch; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
.time { white-space: nowrap; }
.muted { color: var(--muted); }
.empty { color: var(--muted); text-align: center; padding: 24px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 12px;
  font-weight: 600; color: #fff; background: var(--muted); white-space: nowrap; }
.badge.last { opacity: .65; }
.state-pending { background: var(--pending); } .state-running { background: var(--running); }
.state-waiting { background: var(--waiting); } .state-done { background: var(--done); }
.st-ok { background: var(--ok); } .st-fail { background: var(--fail); }
.st-retry { background: var(--retry); } .st-cancelled { background: var(--cancel); }
rect.state-running { fill: var(--running); } rect.st-ok { fill: var(--ok); }
rect.st-fail { fill: var(--fail); } rect.st-retry { fill: var(--retry); }
rect.st-cancelled { fill: var(--cancel); } rect.snapshot { fill: var(--waiting); }
.counts { display: flex; gap: 8px; flex-wrap: wrap; margin-bottom: 12px; }
.count { padding: 4px 10px; border: 1px solid var(--line); border-radius: 6px;
  color: var(--fg); text-decoration: none; background: var(--head); }
a.count { border-left: 4px solid var(--muted); }
a.count.state-pending, a.count.state-running, a.count.state-waiting, a.count.state-done {
  background: var(--head); }
a.count.state-pending { border-left-color: var(--pending); }
a.count.state-running { border-left-color: var(--running); }
a.count.state-waiting { border-left-color: var(--waiting); }
a.count.state-done { border-left-color: var(--done); }
a.count[aria-current] { outline: 2px solid var(--link); }
.filters { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: end; padding: 10px;
  border: 1px solid var(--line); border-radius: 6px; margin-bottom: 8px; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.filters label.check { flex-direction: row; align-items: center; gap: 4px; }
input, select, button, .button { font: inherit; font-size: 13px; }
input, select { padding: 3px 6px; border: 1px solid var(--line); border-radius: 4px;
  background: var(--bg); color: var(--fg); }
button, .button { padding: 4px 14px; border: 1px solid var(--link); border-radius: 4px;
  background: var(--link); color: #fff; cursor: pointer; text-decoration: none; }
button.quiet, .button.quiet { background: transparent; color: var(--link); }
button.danger { background: var(--fail); border-color: var(--fail); }
.meta { display: flex; gap: 14px; align-items: center; margin: 6px 0; font-size: 12px; }
.stale { color: var(--fail); }
.pager { display: flex; gap: 16px; margin: 12px 0; }
.notice { padding: 8px 12px; border-left: 4px solid var(--ok); background: var(--head); }
.notice.bad { border-left-color: var(--fail); }
.actions { display: flex; gap: 8px; margin: 8px 0 4px; }
.fields th { color: var(--muted); font-weight: 500; width: 10ch; }
.crumbs { margin: 0; color: var(--muted); }
.error .error-type { color: var(--fail); font-weight: 600; }
.tree, .tree ul { list-style: none; padding-left: 18px; margin: 0; }
.tree { padding-left: 0; }
.tree li { padding: 2px 0; }
.tree ul { border-left: 1px solid var(--line); margin-left: 6px; }
.tree a[aria-current] { font-weight: 700; }
.tree .id { font-size: 11px; }
.attempts td.timeline, .attempts th.timeline { width: 30%; min-width: 160px; }
svg.bar { display: block; background: var(--head); }
svg.chart { display: block; background: var(--head); max-width: 800px; }
.stack { padding-left: 22px; }
.frame { margin: 6px 0; }
.location { color: var(--muted); }
.locals { margin: 4px 0; }
.locals th { font-family: ui-monospace, monospace; font-size: 12.5px; font-weight: 500; }
.kv th { font-family: ui-monospace, monospace; color: var(--muted); font-weight: 500; }
.kv td { width: 100%; }
.login { max-width: 480px; margin: 60px auto; }
.login form { display: flex; flex-direction: column; gap: 12px; }
.login label { display: flex; flex-direction: column; gap: 4px; }
"""

JS = """"use strict";
// The dashboard's only script: live updates of the calls list, call pages that
// reload when their call changes, and a confirmation before cancelling.
(() => {
  const every = REFRESH_MS;
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const get = async (url) => {
    const response = await fetch(url, {headers: {Accept: "application/json"}, cache: "no-store"});
    if (response.status === 401) { window.location.reload(); return null; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  };
  const table = document.querySelector("table[data-rows]");
  if (table) {
    const live = document.getElementById("live");
    const stamp = document.getElementById("updated");
    const refresh = async () => {
      if (!document.hidden && live.checked) {
        try {
          const data = await get(table.dataset.rows);
          if (data) {
            table.tBodies[0].innerHTML = data.rows;
            document.getElementById("counts").innerHTML = data.counts;
            document.getElementById("pager").innerHTML = data.pager;
            stamp.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
            stamp.classList.remove("stale");
          }
        } catch (error) {
          stamp.textContent = "update failed: " + error.message;
          stamp.classList.add("stale");
        }
      }
      setTimeout(refresh, every);
    };
    setTimeout(refresh, every);
  }
  const call = document.querySelector("[data-watch]");
  if (call) {
    const watch = async () => {
      try {
        const data = await get(call.dataset.watch);
        if (data && data.version !== call.dataset.version) { window.location.reload(); return; }
      } catch (error) { /* try again at the next turn */ }
      setTimeout(watch, every);
    };
    setTimeout(watch, every);
  }
})();
""".replace("REFRESH_MS", str(int(REFRESH_SECONDS * 1000)))

_STATIC = {
    "dashboard.css": (CSS.encode(), "text/css; charset=utf-8"),
    "dashboard.js": (JS.encode(), "text/javascript; charset=utf-8"),
}
_STATIC_VERSION = hashlib.sha256(CSS.encode() + JS.encode()).hexdigest()[:10]

__all__ = ["dashboard_app", "parse_time", "retry_call", "session_token", "status_name"]
