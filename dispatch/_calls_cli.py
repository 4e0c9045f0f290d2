"""``dispatch calls``: inspect and steer an orchestrator's calls from the terminal.

    dispatch calls list [--state S] [--status NAME|failed] [--function F] [--root ID]
                        [--since T] [--until T] [--limit N] [--all] [--before CURSOR]
    dispatch calls show ID
    dispatch calls cancel ID
    dispatch calls retry ID

Each talks to the orchestrator's JSON API (``Accept: application/json``) at
``--url`` (default ``$DISPATCH_API_URL``, else where ``dispatch server``
listens by default) with ``--api-key`` (default ``$DISPATCH_API_KEY``, else
the key in ``.dispatch/keys.json`` when that file exists; never printed).
``--json`` prints the API's answer as JSON, alone on stdout. A failure
(orchestrator unreachable, key refused, no such call, a conflict) is one line
on stderr and exit code 1; a usage error is argparse's exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import math
import os
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TextIO

import httpx
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.pretty import pretty_repr
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from . import _local
from ._status import Status

"""Where ``dispatch server`` listens with its default ``--host`` and ``--port``."""

STATES = ("pending", "running", "waiting", "done")
STATUSES = (*(status.name.lower() for status in Status), "cancelled", "failed")
MAX_LIMIT = 500
"""The most calls the API returns in one page."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_PIPE_WIDTH = 200
"""The width of output that goes to a pipe or a file: wide enough that
tables keep their lines whole, for ``grep`` and ``less``."""


class Failure(Exception):
    """What went wrong, in one line for stderr: the command exits with 1."""


# -- arguments ---------------------------------------------------------------------------------


class Moment(NamedTuple):
    """A ``--since``/``--until`` argument: as given, and as Unix seconds."""

    text: str
    timestamp: float
    relative: bool


def parse_moment(text: str, now: float | None = None) -> Moment:
    """An ISO-8601 datetime (local time unless it says otherwise), or a
    duration ago: ``30s``, ``10m``, ``2h``, ``3d``, ``1w``."""
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        now = time.time() if now is None else now
        return Moment(text, now - float(match[1]) * _UNITS[match[2]], relative=True)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (an ISO-8601 datetime such as 2024-05-01T12:00, "
            "or how long ago such as 10m, 2h, 3d)"
        ) from None
    # A naive datetime is local time, as .timestamp() takes it.
    return Moment(text, moment.timestamp(), relative=False)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_LIMIT}: {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``calls`` command group, on the ``dispatch`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=None,
        help="the orchestrator's API (default: $DISPATCH_API_URL, else the orchestrator that "
        "dispatch run or dispatch server of this directory runs, else "
        f"http://127.0.0.1:{_local.DEFAULT_PORT})",
    )
    common.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="the orchestrator's API key (default: $DISPATCH_API_KEY, "
        "else the one in .dispatch/keys.json)",
    )
    common.add_argument(
        "--json", action="store_true", help="print the answer as JSON, alone on stdout"
    )
    calls = commands.add_parser(
        "calls",
        help="list, inspect, cancel and retry an orchestrator's calls",
        description="Inspect and steer the calls of an orchestrator (any URL).",
    )
    actions = calls.add_subparsers(dest="calls_command", required=True, metavar="COMMAND")

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list calls, newest first",
        description="List calls, newest first. Times are ISO-8601 datetimes (local time "
        "unless they say otherwise) or how long ago: 30s, 10m, 2h, 3d, 1w.",
    )
    listing.add_argument("--state", type=str.lower, choices=STATES)
    listing.add_argument(
        "--status",
        type=str.lower,
        choices=STATUSES,
        metavar="NAME|failed",
        help="a status name (ok, permanent_error, cancelled, ...), or failed: done and not ok",
    )
    listing.add_argument("--function", help="calls of this function")
    listing.add_argument("--root", metavar="ID", help="calls of the tree of this root call")
    listing.add_argument("--since", type=parse_moment, metavar="T", help="created at or after T")
    listing.add_argument("--until", type=parse_moment, metavar="T", help="created before T")
    listing.add_argument(
        "--limit",
        type=_limit,
        default=None,
        metavar="N",
        help=f"calls per page (default: 50; at most {MAX_LIMIT})",
    )
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.add_argument(
        "--before", metavar="CURSOR", help="the page after the one that printed this cursor"
    )

    show = actions.add_parser(
        "show",
        parents=[common],
        help="a call: fields, descendants, attempts, input, output, error, where it waits",
        description="Everything about a call. With --json: the API's document of the call, "
        'with its descendants (summaries, oldest first) under "descendants".',
    )
    show.add_argument("id")
    cancel = actions.add_parser(
        "cancel", parents=[common], help="cancel a call and its descendants"
    )
    cancel.add_argument("id")
    retry = actions.add_parser(
        "retry",
        parents=[common],
        help="run a failed call again, as a new call (same function and input)",
    )
    retry.add_argument("id")


# -- the API -----------------------------------------------------------------------------------


def api_key(given: str | None) -> str | None:
    """``--api-key``, else ``$DISPATCH_API_KEY``, else the local key file's,
    if there is one (it is read, never made)."""
    if given:
        return given
    key = os.environ.get("DISPATCH_API_KEY")
    if key:
        return key
    path = _local.directory() / "keys.json"
    if path.exists():
        try:
            return _local.keys(path).api_key
        except (OSError, ValueError, KeyError):
            return None
    return None


class Api:
    """The orchestrator's JSON API; every failure is a :class:`Failure`."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(30.0, connect=5.0))

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, params: dict[str, Any] | None = None, call_id: str = "") -> Any:
        return self.request("GET", path, params, call_id)

    def post(self, path: str, call_id: str = "") -> Any:
        return self.request("POST", path, None, call_id)

    def request(self, method: str, path: str, params: dict[str, Any] | None, call_id: str) -> Any:
        where = f"the orchestrator at {self.url}"
        try:
            response = self.http.request(method, self.url + path, params=params)
        except httpx.InvalidURL as error:
            raise Failure(f"not a URL: {self.url!r} ({error})") from None
        except httpx.UnsupportedProtocol:
            raise Failure(f"not an http(s) URL: {self.url!r} (--url or DISPATCH_API_URL)") from None
        except httpx.TimeoutException:
            raise Failure(f"{where} did not answer in time") from None
        except httpx.HTTPError as error:
            reason = str(error) or type(error).__name__
            raise Failure(
                f"cannot reach {where} ({reason}): is it running? (--url or DISPATCH_API_URL)"
            ) from None
        status = response.status_code
        if status == 401:
            raise Failure(f"{where} refused the API key: check DISPATCH_API_KEY / --api-key")
        if status == 404 and call_id:
            raise Failure(f"no such call: {call_id}")
        if status >= 400:
            text = _first_line(response.text)
            if status == 409:
                raise Failure(text or f"conflict: {method} {path}")
            raise Failure(f"{where} answered {method} {path} with {status}: {text}")
        try:
            return response.json()
        except ValueError:
            raise Failure(
                f"{where} did not answer {path} with JSON: is it a dispatch orchestrator "
                "(one recent enough to have the JSON API)?"
            ) from None


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def main(args: argparse.Namespace) -> int:
    """Run ``dispatch calls ...``; the exit code."""
    out = _console(sys.stdout)
    url = args.url or _local.api_url()
    api = Api(url, api_key(args.api_key))
    try:
        command: Callable[[Api, argparse.Namespace, Console], None] = _COMMANDS[args.calls_command]
        command(api, args, out)
    except Failure as failure:
        print(f"dispatch: {failure}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # A reader that stopped (`| head`): nothing more to say, to anyone.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        api.close()
    return 0


def _console(stream: TextIO) -> Console:
    console = Console(file=stream, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(file=stream, highlight=False, width=_PIPE_WIDTH)
    return console


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


# -- list --------------------------------------------------------------------------------------


def _list(api: Api, args: argparse.Namespace, out: Console) -> None:
    page_size = args.limit or (MAX_LIMIT if args.all else 50)
    params: dict[str, Any] = {
        "state": args.state,
        "status": args.status,
        "function": args.function,
        "root": args.root,
        "since": args.since.timestamp if args.since else None,
        "until": args.until.timestamp if args.until else None,
        "before": args.before,
        "limit": page_size,
    }
    params = {name: value for name, value in params.items() if value is not None}
    calls: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = api.get("/v1/calls", params)
        calls.extend(page["calls"])
        cursor = page.get("next")
        if not (args.all and cursor):
            break
        params["before"] = cursor
    if args.json:
        _print_json({"calls": calls, "next": cursor})
        return
    if not calls:
        out.print("No calls.")
    else:
        _print_table(out, _calls_table(calls))
    if cursor:
        more = shlex.join(["dispatch", "calls", "list", *_filters(args), "--before", cursor])
        err = _console(sys.stderr)
        err.print(
            Text(f"{len(calls)} calls shown; more: {more}  (or --all)", style="dim"),
            soft_wrap=True,
        )


def _print_table(console: Console, table: Table) -> None:
    """``table`` as wide as it needs to be to show every cell whole (ids above
    all): on a narrow terminal its lines wrap, but nothing is cut."""
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, needed)  # print's own width is capped at the console's
    try:
        console.print(table)
    finally:
        console.width = width


def _filters(args: argparse.Namespace) -> Iterator[str]:
    """The options of ``args`` again, for the command that shows the next page
    (relative times made absolute, so the next page lines up with this one)."""
    if args.url:
        yield from ("--url", args.url)
    for name in ("state", "status", "function", "root"):
        value = getattr(args, name)
        if value is not None:
            yield from (f"--{name}", value)
    for name in ("since", "until"):
        moment: Moment | None = getattr(args, name)
        if moment is not None:
            if moment.relative:
                rounded = math.floor if name == "since" else math.ceil
                text = _local_datetime(rounded(moment.timestamp)).isoformat()
            else:
                text = moment.text
            yield from (f"--{name}", text)
    if args.limit is not None:
        yield from ("--limit", str(args.limit))


def _calls_table(calls: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=8)
    table.add_column("function", overflow="fold", max_width=48)
    table.add_column("state", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    now = time.time()
    for call in calls:
        table.add_row(
            call["id"],
            call["function"],
            Text(call["state"], style=_state_style(call["state"])),
            _status_text(_call_status(call)),
            str(call.get("attempt", "")),
            _when(call.get("created_at")),
            _elapsed(call.get("created_at"), call.get("finished_at"), now),
        )
    return table


# -- show --------------------------------------------------------------------------------------


def _show(api: Api, args: argparse.Namespace, out: Console) -> None:
    call_id: str = args.id
    call = api.get(f"/v1/calls/{_quote(call_id)}", call_id=call_id)
    tree = api.get(f"/v1/calls/{_quote(call_id)}/tree", call_id=call_id)["calls"]
    descendants = [summary for summary in tree if summary["id"] != call["id"]]
    if args.json:
        _print_json({**call, "descendants": descendants})
        return
    for renderable in _call_sections(call, descendants, out.width):
        if isinstance(renderable, Table):
            _print_table(out, renderable)
        else:
            out.print(renderable, soft_wrap=isinstance(renderable, Text))


def _quote(call_id: str) -> str:
    """``call_id`` as one segment of a URL's path, whatever it holds."""
    return urllib.parse.quote(call_id, safe="")


def _call_sections(
    call: dict[str, Any], descendants: list[dict[str, Any]], width: int
) -> Iterator[RenderableType]:
    now = time.time()
    yield Text.assemble(("call ", "bold"), (call["id"], "bold cyan"))
    fields: list[tuple[str, str | Text]] = [
        ("function", Text(call["function"], style="bold")),
        ("state", _state_and_status(call)),
        ("attempt", str(call.get("attempt", ""))),
    ]
    if call.get("root_id") and call["root_id"] != call["id"]:
        fields.append(("root", call["root_id"]))
    if call.get("parent_id"):
        fields.append(("parent", call["parent_id"]))
    if call.get("endpoint"):
        fields.append(("endpoint", call["endpoint"]))
    fields.append(("created", _when(call.get("created_at"))))
    if call.get("finished_at") is not None:
        fields.append(("finished", _when(call["finished_at"])))
    if call.get("cancelled_at") is not None:
        fields.append(("cancelled", _when(call["cancelled_at"])))
    fields.append(("duration", _elapsed(call.get("created_at"), call.get("finished_at"), now)))
    children = call.get("children") or []
    if children:
        fields.append(("children", str(len(children))))
    yield Text("\n").join(Text.assemble((f"{name:<11}", "dim"), value) for name, value in fields)

    yield _heading("Input")
    yield _indent(_input_text(call["function"], call.get("input"), width))
    if call.get("state") == "done" and call.get("output") is not None:
        yield _heading("Output")
        yield _indent(Text(_readable(call["output"], width)))

    error = call.get("error")
    attempts: list[dict[str, Any]] = call.get("attempts") or []
    if error:
        yield _heading("Error")
        yield _indent(_error_text(error, attempts))

    if descendants:
        yield _heading(f"Descendants ({len(descendants)})")
        yield _tree(call, descendants)

    if attempts:
        yield _heading(f"Attempts ({len(attempts)})")
        yield _attempts_table(attempts)
        sizes = [a["snapshot_size"] for a in attempts if a.get("snapshot_size") is not None]
        if sizes:
            yield Text.assemble(
                ("  snapshot sizes: ", "dim"),
                " → ".join(_size(size) for size in sizes),
                (f"  (largest {_size(max(sizes))})" if len(sizes) > 1 else "", "dim"),
            )

    frames = call.get("frames")
    if frames:
        yield _heading("Where is it waiting?")
        yield _frames(frames)


def _heading(text: str) -> Text:
    return Text("\n" + text, style="bold underline")


def _indent(renderable: Text) -> Text:
    indented = Text()
    for index, line in enumerate(renderable.split("\n", allow_blank=True)):
        if index:
            indented.append("\n")
        indented.append("  ")
        indented.append_text(line)
    return indented


def _call_status(call: dict[str, Any]) -> Any:
    """The status worth showing: a finished call's, or the error a call that
    is not finished is being retried after (not the ``ok`` of a suspension)."""
    status = call.get("status")
    if call.get("state") != "done" and _status_name(status) == "ok":
        return None
    return status


def _state_and_status(call: dict[str, Any]) -> Text:
    state = call.get("state") or "?"
    text = Text(state, style=_state_style(state))
    status = _call_status(call)
    if status is not None:
        text.append("  ")
        text.append_text(_status_text(status))
    return text


def _error_text(error: dict[str, Any], attempts: list[dict[str, Any]]) -> Text:
    text = Text()
    text.append(_type_name(error.get("type")), style="bold red")
    if error.get("message"):
        text.append(f": {error['message']}")
    if error.get("status") is not None:
        text.append("  (")
        text.append_text(_status_text(error["status"]))
        text.append(")")
    traceback = error.get("traceback")
    if not traceback:  # the last attempt that failed with one says where
        traceback = next((a["traceback"] for a in reversed(attempts) if a.get("traceback")), None)
    if traceback:
        text.append("\n")
        text.append(traceback.rstrip("\n"), style="red")
    return text


def _tree(call: dict[str, Any], descendants: list[dict[str, Any]]) -> Tree:
    root = Tree(_tree_label(call, short=False), guide_style="dim")
    nodes = {call["id"]: root}
    for summary in descendants:  # oldest first: a parent comes before its children
        parent = nodes.get(summary.get("parent_id") or "", root)
        nodes[summary["id"]] = parent.add(_tree_label(summary, short=True))
    return root


def _tree_label(call: dict[str, Any], short: bool) -> Text:
    call_id: str = call["id"]
    return Text.assemble(
        (call["function"], "bold"),
        "  ",
        (call_id[:8] if short else call_id, "dim"),
        "  ",
        _state_and_status(call),
    )


def _attempts_table(attempts: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=80)
    table.add_column("snapshot", justify="right", no_wrap=True)
    now = time.time()
    for attempt in attempts:
        duration = attempt.get("duration")
        if duration is not None:
            took = Text(_duration(duration))
        else:
            took = _elapsed(attempt.get("started_at"), attempt.get("finished_at"), now)
        error = Text()
        if attempt.get("error_type"):
            error.append(_type_name(attempt["error_type"]), style="red")
            if attempt.get("error_message"):
                error.append(f": {attempt['error_message']}")
        elif attempt.get("error_message"):
            error.append(attempt["error_message"])
        size = attempt.get("snapshot_size")
        table.add_row(
            str(attempt.get("number", "")),
            str(attempt.get("attempt", "")),
            _when(attempt.get("started_at"), milliseconds=True),
            took,
            _status_text(attempt.get("status"))
            if attempt.get("finished_at")
            else Text("running", style="yellow"),
            error,
            _size(size) if size is not None else "",
        )
    return table


def _frames(tasks: list[dict[str, Any]]) -> Group:
    trees: list[RenderableType] = []
    for task in tasks:
        tree = Tree(Text(f"task {task.get('task', '?')}", style="bold"), guide_style="dim")
        for frame in task.get("frames") or []:  # outermost first, down the await chain
            label = Text.assemble(
                (str(frame.get("function", "?")), "bold cyan"),
                "  ",
                (f"{frame.get('file', '?')}:{frame.get('line', '?')}", "dim"),
            )
            node = tree.add(label)
            for name, value in (frame.get("locals") or {}).items():
                node.add(Text.assemble((str(name), "green"), " = ", str(value)))
        trees.append(tree)
    return Group(*trees)


# -- cancel, retry -----------------------------------------------------------------------------


def _cancel(api: Api, args: argparse.Namespace, out: Console) -> None:
    answer = api.post(f"/v1/calls/{_quote(args.id)}/cancel", call_id=args.id)
    if args.json:
        _print_json(answer)
        return
    count = int(answer.get("cancelled", 0))
    if count:
        plural = "s" if count != 1 else ""
        out.print(f"cancelled {count} call{plural} ({args.id} and its descendants)")
    else:
        out.print(f"cancelled nothing: {args.id} and its descendants are done")


def _retry(api: Api, args: argparse.Namespace, out: Console) -> None:
    answer = api.post(f"/v1/calls/{_quote(args.id)}/retry", call_id=args.id)
    if args.json:
        _print_json(answer)
        return
    out.print(f"retried {args.id} as a new call: {answer['id']}", soft_wrap=True)


_COMMANDS: dict[str, Callable[[Api, argparse.Namespace, Console], None]] = {
    "list": _list,
    "show": _show,
    "cancel": _cancel,
    "retry": _retry,
}


# -- formatting --------------------------------------------------------------------------------

_STATE_STYLE = {"pending": "cyan", "running": "yellow", "waiting": "blue", "done": "green"}


def _state_style(state: str) -> str:
    return _STATE_STYLE.get(state, "")


def _status_name(status: Any) -> str | None:
    """A status as a lower-case name, whether the API gave a name or a wire value."""
    if status is None:
        return None
    if isinstance(status, int) and not isinstance(status, bool):
        if status == -1:
            return "cancelled"
        try:
            return Status(status).name.lower()
        except ValueError:
            return str(status)
    return str(status).lower()


def _status_text(status: Any) -> Text:
    name = _status_name(status)
    if name is None:
        return Text("")
    style = "green" if name == "ok" else "dim" if name == "cancelled" else "red"
    return Text(name, style=style)


def _type_name(name: Any) -> str:
    """An exception's ``module.qualname``, without ``builtins.``."""
    return str(name or "error").removeprefix("builtins.")


def _local_datetime(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp).astimezone()


def _when(timestamp: float | None, milliseconds: bool = False) -> str:
    if timestamp is None:
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if milliseconds:
        text += f".{moment.microsecond // 1000:03d}"
    return text


def _elapsed(start: float | None, end: float | None, now: float) -> Text:
    """How long from ``start`` to ``end``; still going (dim, with an ellipsis) without an end."""
    if start is None:
        return Text("")
    if end is None:
        return Text(_duration(max(0.0, now - start)) + "…", style="dim")
    return Text(_duration(max(0.0, end - start)))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


class _Shown:
    """A value shown as a fixed text (a sealed pickle, bytes) by ``pretty_repr``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def shown(value: Any) -> Any:
    """A decoded value from the API as Python objects whose repr reads well:
    ``{"sealed": N}`` is a sealed pickle, ``{"bytes": base64}`` bytes."""
    if isinstance(value, dict):
        if len(value) == 1:
            [(key, item)] = value.items()
            if key == "sealed" and isinstance(item, int) and not isinstance(item, bool):
                return _Shown(f"<sealed pickle ({item} bytes)>")
            if key == "bytes" and isinstance(item, str):
                try:
                    data = base64.b64decode(item, validate=True)
                except ValueError:
                    pass
                else:
                    if len(data) <= 64:
                        return _Shown(repr(data))
                    return _Shown(f"{data[:48]!r}… ({len(data)} bytes)")
        return {key: shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shown(item) for item in value]
    return value


def _readable(value: Any, width: int) -> str:
    return pretty_repr(shown(value), max_width=max(40, width - 4), max_length=100, max_string=2000)


def _input_text(function: str, value: Any, width: int) -> Text:
    """A call's input as the call it is: ``function(1, 'a', key=2)`` when it is
    the usual ``[args, kwargs]``; else the value as it is."""
    if value is None:
        return Text("none", style="dim")
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], list)
        and isinstance(value[1], dict)
    ):
        args, kwargs = value
        parts = [_readable(arg, width) for arg in args]
        parts += [f"{name}={_readable(item, width)}" for name, item in kwargs.items()]
        one_line = f"{function}({', '.join(parts)})"
        if len(one_line) <= width - 4 and "\n" not in one_line:
            return Text(one_line)
        body = ",\n".join("    " + part.replace("\n", "\n    ") for part in parts)
        return Text(f"{function}(\n{body}\n)")
    return Text(_readable(value, width))
