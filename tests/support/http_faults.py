"""Network faults as `requests` really raises them, for `responses` bodies and callbacks.

The transport (`bookings_project.http_client`) reads the types of the exceptions and the
urllib3 errors they wrap, never their text: a fake fault must be built the way `requests`
builds the real one (tests/test_http_client.py checks that these match real sockets).
"""

from __future__ import annotations

import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError


def refused(url: str = "http://service.test/", *, request: requests.PreparedRequest | None = None) -> Exception:
    """Connection refused: the request never reached the service."""
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.exceptions.ConnectionError(MaxRetryError(None, url, reason), request=request)


def read_timeout(url: str = "http://service.test/", *, request: requests.PreparedRequest | None = None) -> Exception:
    """Sent, and no answer in time: it may have been applied."""
    error = ReadTimeoutError(None, url, "Read timed out. (read timeout=1.0)")
    return requests.exceptions.ReadTimeout(error, request=request)


def closed_without_answer(*, request: requests.PreparedRequest | None = None) -> Exception:
    """The service took the request and hung up before answering: it may have been applied."""
    error = ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    return requests.exceptions.ConnectionError(error, request=request)
