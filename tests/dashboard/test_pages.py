"""The dashboard's pages in process (Starlette's TestClient): auth, lists, a call's page."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from dispatch.orchestrator._dashboard import COOKIE, parse_time, session_token
from dispatch.orchestrator._storage import CANCELLED, DONE, PENDING

from .conftest import KEY, T0, Dashboard

pytestmark = pytest.mark.timeout(120)


def ids(page: str) -> list[str]:
    """The ids of a list page's rows, in order."""
    return re.findall(r'<tr data-id="([^"]+)"', page)


def older(page: str) -> str | None:
    match = re.search(r'<a rel="next" href="([^"]+)"', page)
    return match.group(1).replace("&amp;", "&") if match else None


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/calls/add-00120", "/dashboard/?a=b"])
def test_a_page_without_a_session_redirects_to_the_login_form(
    dashboard: Dashboard, path: str
) -> None:
    response = dashboard.client.get(path, follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/dashboard/login"
    assert parse_qs(location.query)["next"] == [path]
    form = dashboard.client.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="api_key"' in form.text and 'type="password"' in form.text


def test_data_without_a_session_is_refused(dashboard: Dashboard) -> None:
    assert dashboard.client.get("/dashboard/rows").status_code == 401
    assert dashboard.client.get(f"/dashboard/calls/{dashboard.calls.ok}/state").status_code == 401
    assert dashboard.client.get("/dashboard/static/dashboard.css").status_code == 200


def test_a_post_without_a_session_is_forbidden(dashboard: Dashboard) -> None:
    pending = dashboard.calls.pending
    for action in ("cancel", "retry"):
        response = dashboard.client.post(
            f"/dashboard/calls/{pending}/{action}", follow_redirects=False
        )
        assert response.status_code == 403, action
    # A cookie that is not the session's, or the API key itself, is no session.
    for cookie in ("forged", KEY):
        dashboard.client.cookies.set(COOKIE, cookie)
        response = dashboard.client.post(
            f"/dashboard/calls/{pending}/cancel", follow_redirects=False
        )
        assert response.status_code == 403
    dashboard.client.cookies.clear()
    assert dashboard.get(pending).state == PENDING


def test_a_wrong_key_is_refused(dashboard: Dashboard) -> None:
    response = dashboard.client.post(
        "/dashboard/login", data={"api_key": "not-the-key"}, follow_redirects=False
    )
    assert response.status_code == 401
    assert "not this orchestrator&#x27;s API key" in response.text
    assert "set-cookie" not in response.headers
    assert dashboard.client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_an_hmac_of_a_label_not_the_key(dashboard: Dashboard) -> None:
    response = dashboard.client.post(
        "/dashboard/login",
        data={"api_key": KEY, "next": "/dashboard/calls/add-00120"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/calls/add-00120"
    cookie = response.headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    expected = hmac.new(KEY.encode(), b"dispatch dashboard session v1", hashlib.sha256)
    assert value == session_token(KEY) == expected.hexdigest()
    assert KEY not in cookie
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path=/dashboard", "samesite=strict"} <= attributes
    assert "secure" not in attributes  # plain HTTP here; set over HTTPS
    page = dashboard.client.get("/dashboard/calls/add-00120")
    assert page.status_code == 200 and "add-00120" in page.text
    headers = page.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


def test_login_goes_back_only_to_the_dashboard(dashboard: Dashboard) -> None:
    for target in ("https://evil.example/", "//evil.example/dashboard/", "/v1/calls/x", ""):
        response = dashboard.client.post(
            "/dashboard/login", data={"api_key": KEY, "next": target}, follow_redirects=False
        )
        assert response.headers["location"] == "/dashboard/", target


def test_posts_from_another_site_are_forbidden(dashboard: Dashboard) -> None:
    dashboard.login()
    pending = dashboard.calls.pending
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        response = dashboard.client.post(
            f"/dashboard/calls/{pending}/cancel", headers=headers, follow_redirects=False
        )
        assert response.status_code == 403, headers
    response = dashboard.client.post(
        "/dashboard/login",
        data={"api_key": KEY},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert dashboard.get(pending).state == PENDING
    # The dashboard's own origin may.
    response = dashboard.client.post(
        f"/dashboard/calls/{pending}/cancel",
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert dashboard.get(pending).status == CANCELLED


def test_the_api_key_as_a_bearer_token_works_too(dashboard: Dashboard) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert dashboard.client.get("/dashboard/", headers=auth).status_code == 200
    wrong = {"Authorization": "Bearer nope"}
    assert dashboard.client.get("/dashboard/rows", headers=wrong).status_code == 401


def test_logout_ends_the_session(dashboard: Dashboard) -> None:
    dashboard.login()
    assert dashboard.client.get("/dashboard/", follow_redirects=False).status_code == 200
    response = dashboard.client.post("/dashboard/logout", follow_redirects=False)
    assert response.status_code == 303
    assert dashboard.client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_without_an_api_key_there_is_no_login(open_dashboard: Dashboard) -> None:
    client = open_dashboard.client
    assert client.get("/dashboard/").status_code == 200
    assert client.get("/dashboard/login", follow_redirects=False).headers["location"] == (
        "/dashboard/"
    )
    assert "Log out" not in client.get("/dashboard/").text
    response = client.post(
        f"/dashboard/calls/{open_dashboard.calls.pending}/cancel", follow_redirects=False
    )
    assert response.status_code == 303


def test_the_root_redirects_to_the_dashboard(dashboard: Dashboard) -> None:
    response = dashboard.client.get("/", follow_redirects=False)
    assert response.headers["location"] == "/dashboard/"
    response = dashboard.client.get("/dashboard", follow_redirects=False)
    assert response.headers["location"].endswith("/dashboard/")


# --- the list -------------------------------------------------------------------------------


def test_the_list_pages_by_cursor_newest_first(dashboard: Dashboard) -> None:
    dashboard.login()
    bulk = dashboard.calls.bulk
    seen: list[str] = []
    url: str | None = "/dashboard/?function=bulk"
    pages = 0
    while url is not None:
        page = dashboard.client.get(url)
        assert page.status_code == 200
        assert "function=bulk" in url  # the filters are kept
        seen += ids(page.text)
        url = older(page.text)
        pages += 1
    assert pages == 3
    assert seen == bulk[::-1]
    page = dashboard.client.get("/dashboard/?function=bulk&limit=7")
    assert ids(page.text) == bulk[::-1][:7]
    assert "newest" not in page.text
    second = dashboard.client.get(older(page.text) or "")
    assert ids(second.text) == bulk[::-1][7:14]
    assert "« newest" in second.text


def test_the_list_shows_every_call_and_the_counts(dashboard: Dashboard) -> None:
    dashboard.login()
    page = dashboard.client.get("/dashboard/?limit=500").text
    calls = dashboard.calls
    assert len(ids(page)) == 127
    assert ids(page)[:3] == ["reserve-pen", "reserve-book", calls.root]
    counts = dict(re.findall(r'<b data-state="(\w+)">([\d,]+)</b>', page))
    assert counts == {"pending": "121", "running": "1", "waiting": "1", "done": "4", "total": "127"}
    row = page[page.index(f'<tr data-id="{calls.failed}"') :].split("</tr>")[0]
    assert "charge" in row and "permanent_error" in row and "2023-11-14 22:15:21.000" in row
    assert ">2<" in row  # its attempt


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=done", ["reserve-book", "cancelled", "failed", "ok"]),
        ("state=waiting", ["root"]),
        ("state=running", ["reserve-pen"]),
        ("status=failed", ["cancelled", "failed"]),
        ("status=PERMANENT_ERROR", ["failed"]),
        ("status=permanent_error", ["failed"]),
        ("status=cancelled", ["cancelled"]),
        ("status=OK", ["reserve-book", "ok"]),
        ("function=add", ["pending", "cancelled", "ok"]),
        ("function=add&state=pending", ["pending"]),
        ("root_id={root}", ["reserve-pen", "reserve-book", "root"]),
        ("roots_only=1&function=reserve", []),
        ("roots_only=1&function=checkout", ["root"]),
        (f"since={T0 + 121}&until={T0 + 124}", ["pending", "cancelled", "failed"]),
        ("since=2023-11-14T22:15:21&until=2023-11-14 22:15:23", ["cancelled", "failed"]),
        ("since=2023-11-14T23:15:21%2B01:00&until=2023-11-14T22:15:22Z", ["failed"]),
    ],
)
def test_filters(dashboard: Dashboard, query: str, expected: list[str]) -> None:
    dashboard.login()
    calls = dashboard.calls
    names = {
        calls.ok: "ok",
        calls.failed: "failed",
        calls.cancelled: "cancelled",
        calls.pending: "pending",
        calls.root: "root",
        "reserve-book": "reserve-book",
        "reserve-pen": "reserve-pen",
    }
    query = query.format(root=calls.root)
    page = dashboard.client.get(f"/dashboard/?{query}&limit=500")
    assert page.status_code == 200, page.text
    assert [names[i] for i in ids(page.text)] == expected
    rows = dashboard.client.get(f"/dashboard/rows?{query}&limit=500")
    assert rows.status_code == 200
    assert [names[i] for i in ids(rows.json()["rows"])] == expected
    # The live updates fetch the same query.
    match = re.search(r'data-rows="/dashboard/rows\?([^"]*)"', page.text)
    assert match is not None
    given = parse_qs(query)
    assert parse_qs(html.unescape(match.group(1))) == {**given, "limit": ["500"]}


def test_the_form_keeps_its_values(dashboard: Dashboard) -> None:
    dashboard.login()
    page = dashboard.client.get("/dashboard/?state=done&status=failed&function=a%22b").text
    assert '<option value="done" selected>' in page
    assert '<option value="failed" selected>' in page
    assert 'name="function" value="a&quot;b"' in page


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=sleeping", "unknown state"),
        ("status=FINE", "unknown status"),
        ("since=yesterday", "not a time"),
        ("before=garbage", "not a cursor"),
        ("limit=many", "not a number"),
    ],
)
def test_bad_filters_say_what_is_wrong(dashboard: Dashboard, query: str, message: str) -> None:
    dashboard.login()
    page = dashboard.client.get(f"/dashboard/?{query}")
    assert page.status_code == 400
    assert message in page.text
    assert dashboard.client.get(f"/dashboard/rows?{query}").status_code == 400


def test_parse_time() -> None:
    now = 1_000_000.0
    assert parse_time("1700000000.5", now) == 1700000000.5
    assert parse_time("15m", now) == now - 900
    assert parse_time("2h ago", now) == now - 7200
    assert parse_time("1d", now) == now - 86400
    assert parse_time("2023-11-14 22:13:20", now) == T0
    assert parse_time("2023-11-14T23:13:20+01:00", now) == T0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon", now)


def test_the_rows_fragment_for_live_updates(dashboard: Dashboard) -> None:
    dashboard.login()
    document = dashboard.client.get("/dashboard/rows?function=bulk").json()
    assert set(document) == {"rows", "counts", "pager"}
    assert len(ids(document["rows"])) == 50
    assert 'rel="next"' in document["pager"]
    assert "pending <b" in document["counts"]


# --- a call ---------------------------------------------------------------------------------


def test_a_failed_call(dashboard: Dashboard) -> None:
    dashboard.login()
    page = dashboard.client.get(f"/dashboard/calls/{dashboard.calls.failed}").text
    assert "billing.CardDeclined" in page
    assert "card 4242 declined &lt;insufficient funds&gt;" in page  # escaped
    assert '<pre class="traceback" id="traceback">Traceback (most recent call last):' in page
    assert "File &quot;/app/billing.py&quot;, line 12, in charge" in page
    # Its attempts: a retried TEMPORARY_ERROR, then the PERMANENT_ERROR.
    assert page.count('<tr class="attempt">') == 2
    assert "billing.Timeout" in page and "gateway slow" in page
    assert '<svg class="bar"' in page
    # Its input: keyword arguments, one a sealed pickle (a Status is not plain data).
    assert "&#x27;4242&#x27;" in page and "12.5" in page
    assert re.search(r"sealed pickle, \d+ bytes", page)
    assert 'id="retry"' in page and 'id="cancel"' not in page


def test_a_waiting_call_with_its_tree_and_frames(dashboard: Dashboard) -> None:
    dashboard.login()
    root = dashboard.calls.root
    page = dashboard.client.get(f"/dashboard/calls/{root}").text
    assert "Where is it waiting?" in page
    assert '<code class="frame-function">checkout</code>' in page
    assert "/app/shop.py:31" in page
    assert "<th>cart</th><td><code>[&#x27;book&#x27;, &#x27;pen&#x27;]</code>" in page
    tree = page[page.index('<ul class="tree">') :].split("</section>")[0]
    assert tree.index(root) < tree.index("reserve-book") < tree.index("reserve-pen")
    assert tree.count("<ul>") == 1  # the children, one level down
    assert "Descendants" in page and "(2)" in page
    assert "Snapshot sizes" in page and "2.0 KiB" in page
    assert 'id="cancel"' in page and 'id="retry"' not in page
    assert f'data-watch="/dashboard/calls/{root}/state"' in page
    version = dashboard.client.get(f"/dashboard/calls/{root}/state").json()["version"]
    assert version.startswith("waiting|")
    child = dashboard.client.get("/dashboard/calls/reserve-book").text
    assert f'<a href="/dashboard/calls/{root}">{root}</a>' in child  # its parent
    assert "True" in child  # its output
    assert 'id="retry"' not in child and 'id="cancel"' not in child  # it succeeded


def test_an_unknown_call(dashboard: Dashboard) -> None:
    dashboard.login()
    response = dashboard.client.get("/dashboard/calls/nope")
    assert response.status_code == 404 and "No such call" in response.text
    assert dashboard.client.post("/dashboard/calls/nope/cancel").status_code == 404
    assert dashboard.client.post("/dashboard/calls/nope/retry").status_code == 404


def test_cancel_then_back_to_the_call(dashboard: Dashboard) -> None:
    dashboard.login()
    root = dashboard.calls.root
    response = dashboard.client.post(f"/dashboard/calls/{root}/cancel", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/calls/{root}?done=cancelled&n=2"
    page = dashboard.client.get(response.headers["location"]).text
    assert "Cancelled 2 calls" in page
    assert dashboard.get("reserve-pen").status == CANCELLED
    assert dashboard.get(root).cancelled_at is not None


def test_retry_lands_on_the_new_call(dashboard: Dashboard) -> None:
    dashboard.login()
    failed = dashboard.calls.failed
    response = dashboard.client.post(f"/dashboard/calls/{failed}/retry", follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    new = location.path.rsplit("/", 1)[1]
    assert new != failed
    page = dashboard.client.get(response.headers["location"]).text
    assert f'This call retries <a href="/dashboard/calls/{failed}">{failed}</a>' in page
    record, original = dashboard.get(new), dashboard.get(failed)
    assert (record.function, record.input, record.state) == ("charge", original.input, PENDING)
    assert record.created_at > time.time() - 60
    # A call not done yet cannot be retried; the page says why.
    response = dashboard.client.post(f"/dashboard/calls/{new}/retry", follow_redirects=False)
    assert response.status_code == 409 and "Cannot retry" in response.text
    assert dashboard.get(failed).state == DONE
