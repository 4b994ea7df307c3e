"""Log records as JSON lines, each carrying the id of the request it belongs to."""

from __future__ import annotations

import datetime as dt
import json
import logging

from bookings_project import request_id

# What every LogRecord has; anything else on a record came from `extra=` and is logged too.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
# json.dumps(entry, default=str, ensure_ascii=False) without building an encoder per line.
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (`-` outside a request). Django logs a
    failed request after the middleware is done with it, so its record's request is asked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get() or getattr(getattr(record, "request", None), "request_id", "-")
        return True


class SkipAnswered503(logging.Filter):
    """On `django.request`: drop its line for a 503. Every 503 of ours is an answer the
    exception handler chose and has logged once already, with its cause (a database or a
    dependency down); Django's line would log it a second time, at ERROR, without one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "status_code", None) != 503


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id", ...extra, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get() or "-",
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra we cannot encode is logged as its text, never dropped.
        return _encode(entry)
