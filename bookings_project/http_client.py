"""What every client of another service shares: one pooled `requests.Session` with bounded
retries for idempotent reads, (connect, read) timeouts, `X-Request-ID`, and the reading of
failures (did the request arrive at all?)."""

from __future__ import annotations

import uuid
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bookings_project import request_id

# Gateway errors that say "try again": retried for GETs only.
RETRY_STATUSES = (502, 503, 504)
MAX_CONNECT_SECONDS = 3.05


def timeouts(read_seconds: float) -> tuple[float, float]:
    """(connect, read): a connection is made quickly or not at all."""
    return (min(read_seconds, MAX_CONNECT_SECONDS), read_seconds)


def json_session(*, token: str = "", retries: int = 2) -> requests.Session:
    """A Session that retries, with backoff and `retries` times at most, a GET that failed or
    answered 502/503/504, and any request whose connection could not be made (it was never
    sent). A request that was sent is never resent here unless it is a GET."""
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.2,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
        respect_retry_after_header=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": "application/json"})
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def trace_headers() -> dict[str, str]:
    """Pass the request's id on, so that one request can be followed across both logs."""
    return {"X-Request-ID": request_id.get() or uuid.uuid4().hex}


def never_arrived(error: requests.ConnectionError) -> bool:
    """Refused, unreachable or a connect timeout: the request was never received. (A
    connection dropped mid-answer is a ConnectionError too, hence the look at the text.)"""
    if isinstance(error, requests.ConnectTimeout):
        return True
    text = str(error).lower()
    return any(
        marker in text
        for marker in ("connection refused", "failed to establish a new connection", "name or service not known")
    )


def json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
