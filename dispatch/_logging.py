"""Log lines: JSON objects for machines, plain text for people at a terminal.

:func:`configure` gives the ``dispatch`` logger a handler writing to a
stream: one JSON object per line when the stream is not a terminal (a file,
a pipe, a log collector), the usual plain lines when it is;
``DISPATCH_LOG_FORMAT=json`` or ``text`` decides instead. Every line names
the call it was logged for: :data:`dispatch_id` is set while an endpoint
runs a function for a request and while the orchestrator handles an
attempt, and the handler's filter copies it onto each record (None outside
any call), whichever logger the record comes from.

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, ``dispatch_id``, ``exc`` (the traceback, if any), ``stack``
(if asked for), and the fields given in ``extra=`` whose values are JSON.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
from typing import Any, TextIO

dispatch_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dispatch_id", default=None
)
"""The id of the call being run or handled here, if any."""

FORMATS = ("json", "text")
DEFAULT_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# What every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = {*logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__}
_STANDARD |= {"message", "asctime", "taskName", "dispatch_id"}


class DispatchIdFilter(logging.Filter):
    """Sets ``record.dispatch_id`` to the call this record was logged for (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "dispatch_id"):
            record.dispatch_id = dispatch_id.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {}
        for name, value in record.__dict__.items():
            if name in _STANDARD or name.startswith("_"):
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue  # not JSON: left out rather than turned into a string
            document[name] = value
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document.update(
            time=created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
            dispatch_id=getattr(record, "dispatch_id", None) or dispatch_id.get(),
        )
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False)


def log_format(stream: TextIO) -> str:
    """The format of lines written to ``stream``: "json" or "text"."""
    chosen = os.environ.get("DISPATCH_LOG_FORMAT", "").strip().lower()
    if chosen in FORMATS:
        return chosen
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    return "text" if terminal else "json"


def configure(
    stream: TextIO,
    *,
    text_format: str = DEFAULT_TEXT_FORMAT,
    level: int = logging.INFO,
    handler: logging.Handler | None = None,
    logger: str = "dispatch",
) -> logging.Handler:
    """Log ``logger`` (and the loggers below it) at ``level`` to ``stream``,
    in JSON or in ``text_format`` (see :func:`log_format`); returns the
    handler. ``handler`` replaces the stream handler made by default (it
    gets the formatter and the filter)."""
    if handler is None:
        handler = logging.StreamHandler(stream)
    if log_format(stream) == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(text_format))
    # On the handler, not the logger: records from other loggers that
    # propagate to it pass only the handler's filters.
    handler.addFilter(DispatchIdFilter())
    target = logging.getLogger(logger)
    target.addHandler(handler)
    target.setLevel(level)
    return handler
