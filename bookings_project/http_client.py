"""What every client of another service shares: `Transport`, one pooled `requests.Session`
with bounded retries for idempotent reads, (connect, read) timeouts and `X-Request-ID`, whose
`send` turns every failure into a `TransportError` that says whether the request may have
arrived, read from the types of the exceptions `requests` and `urllib3` raise."""

from __future__ import annotations

import http.client
import os
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bookings_project import metrics, request_id

# Gateway errors that say "try again": retried for GETs only.
RETRY_STATUSES = (502, 503, 504)
MAX_CONNECT_SECONDS = 3.05


def timeouts(read_seconds: float) -> tuple[float, float]:
    """(connect, read): a connection is made quickly or not at all."""
    return (min(read_seconds, MAX_CONNECT_SECONDS), read_seconds)


def json_session(*, service: str, token: str = "", retries: int = 2) -> requests.Session:
    """A Session to `service` (its name in the metrics) that retries, with backoff and
    `retries` times at most, a GET that failed or answered 502/503/504, and any request whose
    connection could not be made (it was never sent). A request that was sent is never resent
    here unless it is a GET."""
    session = requests.Session()
    retry = _Retry(
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
    mount_measured(session, service=service, max_retries=retry)
    session.headers.update({"Accept": "application/json"})
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def mount_measured(session: requests.Session, *, service: str, max_retries: Retry | int) -> None:
    """Every request the session sends is counted by outcome and timed (bookings_project.metrics)."""
    adapter = _MeasuredAdapter(service=service, max_retries=max_retries)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


class _MeasuredAdapter(HTTPAdapter):
    def __init__(self, *, service: str, **kwargs: Any) -> None:
        self.service = service
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        started = time.perf_counter()
        outcome = Failure.OTHER.name.lower()
        try:
            response = super().send(request, **kwargs)
            outcome = f"{response.status_code // 100}xx"
            return response
        except TRANSPORT_EXCEPTIONS as error:
            outcome = classify(error).name.lower()
            raise
        finally:
            metrics.OUTBOUND_REQUESTS.labels(self.service, outcome).inc()
            metrics.OUTBOUND_REQUEST_SECONDS.labels(self.service).observe(time.perf_counter() - started)


def trace_headers() -> dict[str, str]:
    """Pass the request's id on, so that one request can be followed across both logs."""
    return {"X-Request-ID": request_id.get() or uuid.uuid4().hex}


def json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# The transport ------------------------------------------------------------------------------


class Failure(StrEnum):
    """How a request failed to get its answer."""

    # The connection was never made (refused, unreachable, unresolvable host, connect
    # timeout): nothing was sent.
    NOT_CONNECTED = "not connected"
    # Connected, and no answer (or not all of it) came in time. (urllib3 reports a TLS
    # handshake that timed out as a read timeout too.)
    TIMED_OUT = "timed out"
    # Connected, then lost before a whole answer: reset, closed without an answer, TLS
    # failed; or an earlier attempt (a retried GET, a redirect) was answered and a later one
    # could not connect.
    CONNECTION_LOST = "connection lost"
    # Anything else: an answer that could not be read (chunking, encoding), too many redirects...
    OTHER = "other"


class TransportError(Exception):
    """A request that got no usable answer. `may_have_arrived` is false only when the service
    cannot have received it (`Failure.NOT_CONNECTED` on every attempt); the `requests` or
    `urllib3` exception is the `__cause__`."""

    def __init__(self, failure: Failure, *, method: str, url: str) -> None:
        super().__init__(f"{method} {url}: {failure}")
        self.failure = failure
        self.method = method
        self.url = url

    @property
    def may_have_arrived(self) -> bool:
        return self.failure is not Failure.NOT_CONNECTED

    @property
    def timed_out(self) -> bool:
        return self.failure is Failure.TIMED_OUT


class Transport:
    """One remote JSON service: its base URL, a shared `json_session`, (connect, read)
    timeouts, `X-Request-ID` (and `Idempotency-Key` when given) on every request.

    `send` answers the response, whatever its status, or raises `TransportError`: statuses
    are the caller's to read. GETs are retried (see `json_session`); nothing else is resent.
    """

    def __init__(self, *, service: str, base_url: str, token: str = "", timeout: float, retries: int = 2) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeouts(timeout)
        self.session = json_session(service=service, token=token, retries=retries)
        # What requests would read from the environment on every request (proxies, by walking
        # os.environ twice, and ~/.netrc, whose login would replace our token), read once:
        # the proxy for this one service (NO_PROXY honoured) and the CA bundle it names.
        self.session.proxies = requests.utils.get_environ_proxies(self.base_url)
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False

    def send(
        self,
        method: str,
        path: str,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        url = self.base_url + path
        sent_headers = {**trace_headers(), **(headers or {})}
        if idempotency_key is not None:
            sent_headers["Idempotency-Key"] = idempotency_key
        # A response hook runs for every answer, redirects included: once one came back, a
        # later failure of the same call cannot mean "never arrived".
        answered: list[bool] = []
        try:
            return self.session.request(
                method,
                url,
                timeout=self.timeout,
                headers=sent_headers,
                hooks={"response": lambda response, **_: answered.append(True)},
                **kwargs,
            )
        except TRANSPORT_EXCEPTIONS as error:
            failure = classify(error)
            if answered and failure is Failure.NOT_CONNECTED:
                failure = Failure.CONNECTION_LOST
            raise TransportError(failure, method=method, url=url) from error

    def close(self) -> None:
        """Close the keep-alive connections. (`Session.close()` alone is not enough with
        urllib3 2.x: `PoolManager.clear()` forgets its pools without closing them.)"""
        for adapter in set(self.session.adapters.values()):
            pools = adapter.poolmanager.pools
            for key in pools.keys():  # noqa: SIM118 (the container refuses iteration)
                pools[key].close()
        self.session.close()


# What `requests` lets through: its own exceptions (which wrap urllib3's and the socket's),
# and, on a few paths, a bare urllib3 or http.client one.
TRANSPORT_EXCEPTIONS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def classify(error: BaseException) -> Failure:
    """How the request failed, from exception types only.

    `requests` wraps what urllib3 raised as the first argument of its own exception
    (`ConnectionError(MaxRetryError(...))`), a `MaxRetryError` holds the last attempt's error
    as `.reason`, and urllib3's `ProxyError` the error met on the way to the proxy as
    `.original_error`. Follow those links, and `__cause__` (an explicit `raise ... from`),
    but not `__context__`: that one only says what was being handled at the time (for each
    wrapping above it is the same object as the link followed anyway).

    Not connected: urllib3's `ConnectTimeoutError`, which `NewConnectionError` (refused,
    unreachable) and `NameResolutionError` subclass; it is what urllib3's Retry counts as a
    connection error, "fairly sure that the server did not receive the request", and the
    only error after which it resends a POST. When an earlier attempt of a `MaxRetryError` met
    anything else (a GET answered 503 or dropped, then refused), it is a lost connection.
    Timed out: urllib3's `ReadTimeoutError` (however requests wrapped it), `requests.Timeout`.
    Lost: any other `requests.ConnectionError` (ProtocolError: closed without an answer,
    reset, RemoteDisconnected; SSLError; ProxyError; a closed pool), an http.client or
    socket error. Anything else: `OTHER`, which may have arrived too.
    """
    if isinstance(error, requests.ConnectTimeout):  # requests' own word: never connected.
        return Failure.NOT_CONNECTED
    arrived_before = False
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, urllib3.exceptions.ConnectTimeoutError):
            return Failure.CONNECTION_LOST if arrived_before else Failure.NOT_CONNECTED
        if isinstance(link, urllib3.exceptions.ReadTimeoutError):
            return Failure.TIMED_OUT
        if isinstance(link, urllib3.exceptions.MaxRetryError):
            attempts = getattr(link, "earlier_attempts", ())
            arrived_before = arrived_before or not all(_not_connected(attempt.error) for attempt in attempts)
            link = link.reason
        elif isinstance(link, urllib3.exceptions.ProxyError):
            link = link.original_error
        elif isinstance(link, requests.RequestException) and link.args and isinstance(link.args[0], BaseException):
            link = link.args[0]
        elif isinstance(link, requests.RequestException | urllib3.exceptions.HTTPError):
            link = link.__cause__
        else:
            break
    if isinstance(error, requests.Timeout):
        return Failure.TIMED_OUT
    if isinstance(error, requests.ConnectionError | http.client.HTTPException | urllib3.exceptions.ProtocolError):
        return Failure.CONNECTION_LOST
    if isinstance(error, OSError) and not isinstance(error, requests.RequestException):
        return Failure.CONNECTION_LOST
    return Failure.OTHER


def _not_connected(error: BaseException | None) -> bool:
    """An earlier attempt's error (None: it was answered, with a status worth a retry)."""
    return error is not None and classify(error) is Failure.NOT_CONNECTED


class _Retry(Retry):
    """urllib3's Retry, whose MaxRetryError also tells what the attempts before the last met
    (`earlier_attempts`: urllib3 keeps only the last one as `.reason`)."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        try:
            return super().increment(*args, **kwargs)
        except urllib3.exceptions.MaxRetryError as exhausted:
            exhausted.earlier_attempts = self.history
            raise
