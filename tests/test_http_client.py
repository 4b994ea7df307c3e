"""The transport both HTTP gateways share (`bookings_project.http_client.Transport`), and
its reading of failures: may the request have reached the service?

Every fault that can be made for real is made on 127.0.0.1 (a closed port, a full listen
backlog, a server that hangs up, says nothing, resets, stops mid-answer or speaks no TLS,
a host name that cannot resolve): these pin the exceptions requests and urllib3 really
raise. The rest (TLS to a proxy, decoding, the headers sent, what is retried) goes through
`responses`, with exceptions built the way requests builds them (`tests.support.http_faults`,
whose fakes are checked here against the real faults).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests
import responses
import urllib3.exceptions
from responses import matchers

from bookings_project import request_id
from bookings_project.http_client import Failure, Transport, TransportError, classify
from tests.helpers import closed_port
from tests.support import http_faults

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

NEVER_ARRIVED = (Failure.NOT_CONNECTED, False)
METHODS = pytest.mark.parametrize("method", ["GET", "POST"])
# urllib3 retries a GET twice after a failed read (and any request whose connection could
# not be made); a POST that was sent is never resent.
ATTEMPTS = {"GET": 3, "POST": 1}


# 1. Real sockets ------------------------------------------------------------------------


@METHODS
def test_a_closed_port_is_never_arrived(method):
    error = failure_of(Transport(service="test", base_url=f"http://127.0.0.1:{closed_port()}", timeout=0.5), method)

    assert (error.failure, error.may_have_arrived) == NEVER_ARRIVED
    assert shape(error.__cause__) == shape(http_faults.refused())


@METHODS
def test_an_unresolvable_host_is_never_arrived(method):
    error = failure_of(Transport(service="test", base_url="http://nonexistent.invalid", timeout=0.5), method)

    assert (error.failure, error.may_have_arrived) == NEVER_ARRIVED
    assert isinstance(error.__cause__.args[0].reason, urllib3.exceptions.NameResolutionError)


def test_a_connect_timeout_is_never_arrived():
    with full_backlog() as port:
        transport = Transport(service="test", base_url=f"http://127.0.0.1:{port}", timeout=0.2, retries=0)
        error = failure_of(transport, "POST")

    assert (error.failure, error.may_have_arrived) == NEVER_ARRIVED
    assert isinstance(error.__cause__, requests.ConnectTimeout)


@METHODS
def test_a_server_that_hangs_up_without_answering_may_have_been_reached(method):
    with RawServer(hang_up) as server:
        error = failure_of(server.transport(), method)

    assert (error.failure, error.may_have_arrived) == (Failure.CONNECTION_LOST, True)
    assert server.requests_received() == ATTEMPTS[method]
    if method == "POST":
        assert shape(error.__cause__) == shape(http_faults.closed_without_answer())


@METHODS
def test_a_server_that_never_answers_is_a_read_timeout_that_may_have_been_reached(method):
    with RawServer(say_nothing) as server:
        error = failure_of(server.transport(timeout=0.2), method)

    assert (error.failure, error.may_have_arrived) == (Failure.TIMED_OUT, True)
    assert error.timed_out
    assert server.requests_received() == ATTEMPTS[method]
    if method == "POST":
        assert shape(error.__cause__) == shape(http_faults.read_timeout())
    else:  # Retried, then requests calls it a ConnectionError; urllib3 knew it was a read timeout.
        assert isinstance(error.__cause__.args[0].reason, urllib3.exceptions.ReadTimeoutError)


def test_a_reset_connection_may_have_been_reached():
    with RawServer(reset) as server:
        error = failure_of(server.transport(), "POST")

    assert (error.failure, error.may_have_arrived) == (Failure.CONNECTION_LOST, True)
    assert server.requests_received() == 1


def test_an_answer_cut_short_may_have_been_applied():
    with RawServer(answer_half) as server:
        error = failure_of(server.transport(), "POST")

    assert (error.failure, error.may_have_arrived) == (Failure.OTHER, True)
    assert isinstance(error.__cause__, requests.exceptions.ChunkedEncodingError)


def test_a_tls_failure_after_connecting_may_have_been_reached():
    with RawServer(speak_plain_http) as server:
        error = failure_of(server.transport(scheme="https"), "POST")

    assert (error.failure, error.may_have_arrived) == (Failure.CONNECTION_LOST, True)
    assert isinstance(error.__cause__, requests.exceptions.SSLError)


def test_a_get_answered_once_then_refused_may_have_been_reached():
    # urllib3 keeps only the last attempt's error (refused); the first one was answered 503.
    with RawServer(answer_503_then_stop_listening) as server:
        error = failure_of(server.transport(), "GET")

    assert server.requests_received() == 1
    assert isinstance(error.__cause__.args[0].reason, urllib3.exceptions.NewConnectionError)
    assert (error.failure, error.may_have_arrived) == (Failure.CONNECTION_LOST, True)


def test_a_post_redirected_to_a_closed_port_was_reached():
    # The first hop answered 307; following it was refused. That hop had the POST.
    target = f"http://127.0.0.1:{closed_port()}/charges"
    with RawServer(redirect_to(target)) as server:
        error = failure_of(server.transport(), "POST")

    assert server.requests_received() == 1
    assert shape(error.__cause__) == shape(http_faults.refused())
    assert (error.failure, error.may_have_arrived) == (Failure.CONNECTION_LOST, True)


def test_any_answer_is_returned_whatever_its_status():
    with RawServer(answer(500, b'{"detail": "boom"}')) as server:
        response = server.transport().send("POST", "/charges", json={})

    assert (response.status_code, response.json()) == (500, {"detail": "boom"})


# 2. Faults made with `responses` --------------------------------------------------------

URL = "http://service.test/v1"

# Exceptions as requests builds them, for the paths no loopback socket can take.
REFUSED_BY_PROXY = requests.exceptions.ProxyError(
    urllib3.exceptions.MaxRetryError(
        None,
        URL,
        urllib3.exceptions.ProxyError(
            "Unable to connect to proxy",
            urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: refused"),
        ),
    )
)
PROXY_DROPPED = requests.exceptions.ProxyError(
    urllib3.exceptions.MaxRetryError(
        None, URL, urllib3.exceptions.ProxyError("Unable to connect to proxy", ConnectionResetError(104, "reset"))
    )
)


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        pytest.param(http_faults.refused(URL), Failure.NOT_CONNECTED, id="refused"),
        pytest.param(REFUSED_BY_PROXY, Failure.NOT_CONNECTED, id="proxy-refused"),
        pytest.param(
            requests.exceptions.ConnectTimeout("connect timed out"), Failure.NOT_CONNECTED, id="connect-timeout"
        ),
        pytest.param(http_faults.read_timeout(URL), Failure.TIMED_OUT, id="read-timeout"),
        pytest.param(
            requests.exceptions.ConnectionError(urllib3.exceptions.ReadTimeoutError(None, URL, "Read timed out.")),
            Failure.TIMED_OUT,
            id="read-timeout-mid-body",
        ),
        pytest.param(http_faults.closed_without_answer(), Failure.CONNECTION_LOST, id="closed-without-answer"),
        pytest.param(PROXY_DROPPED, Failure.CONNECTION_LOST, id="proxy-dropped"),
        pytest.param(
            requests.exceptions.SSLError(
                urllib3.exceptions.MaxRetryError(None, URL, urllib3.exceptions.SSLError("certificate verify failed"))
            ),
            Failure.CONNECTION_LOST,
            id="tls",
        ),
        # Text is never read: a refusal is known by its type.
        pytest.param(requests.exceptions.ConnectionError("Connection refused"), Failure.CONNECTION_LOST, id="text"),
        pytest.param(
            urllib3.exceptions.ProtocolError("Connection aborted."), Failure.CONNECTION_LOST, id="bare-urllib3"
        ),
        pytest.param(http.client.RemoteDisconnected("closed"), Failure.CONNECTION_LOST, id="bare-http-client"),
        pytest.param(
            requests.exceptions.ContentDecodingError(urllib3.exceptions.DecodeError("bad gzip")),
            Failure.OTHER,
            id="decoding",
        ),
        pytest.param(requests.exceptions.TooManyRedirects("Exceeded 30 redirects."), Failure.OTHER, id="redirects"),
    ],
)
def test_every_failure_becomes_a_transport_error_read_from_its_type(error, failure):
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, URL + "/charges", body=error)
        raised = failure_of(Transport(service="test", base_url=URL, timeout=1.0), "POST")

    assert raised.failure is failure
    assert raised.may_have_arrived is (failure is not Failure.NOT_CONNECTED)
    assert raised.__cause__ is error
    assert (raised.method, raised.url) == ("POST", URL + "/charges")


def test_the_chain_is_walked_by_links_not_by_what_was_being_handled():
    # A lost connection raised while a refusal was being handled is still a lost connection.
    try:
        try:
            raise http_faults.refused(URL)
        except requests.ConnectionError:
            raise http_faults.closed_without_answer() from None
    except requests.ConnectionError as error:
        assert isinstance(error.__context__, requests.ConnectionError)
        assert classify(error) is Failure.CONNECTION_LOST


def test_every_request_carries_the_trace_the_token_and_the_idempotency_key_when_given():
    transport = Transport(service="test", base_url=URL + "/", token="secret", timeout=1.0)
    with responses.RequestsMock() as rsps:
        charge = rsps.add(
            responses.POST,
            URL + "/charges",
            json={},
            match=[
                matchers.header_matcher(
                    {
                        "Authorization": "Bearer secret",
                        "Accept": "application/json",
                        "X-Request-ID": "trace-1",
                        "Idempotency-Key": "key-1",
                    }
                )
            ],
        )
        look_up = rsps.add(responses.GET, URL + "/charges", json={})
        with request_id.bound("trace-1"):
            transport.send("POST", "/charges", idempotency_key="key-1", json={})
        transport.send("GET", "/charges")

    assert charge.call_count == 1
    (call,) = look_up.calls
    assert "Idempotency-Key" not in call.request.headers
    assert len(call.request.headers["X-Request-ID"]) == 32  # A fresh id outside a request.


@pytest.mark.parametrize(("method", "calls"), [("GET", 3), ("POST", 1)])
def test_only_gets_are_retried_on_502_503_504(method, calls):
    with responses.RequestsMock() as rsps:
        endpoint = rsps.add(method, URL + "/charges", status=503, json={})
        response = Transport(service="test", base_url=URL, timeout=1.0).send(method, "/charges")

    assert (response.status_code, endpoint.call_count) == (503, calls)


# Harness ----------------------------------------------------------------------------------


def failure_of(transport: Transport, method: str) -> TransportError:
    try:
        with pytest.raises(TransportError) as raised:
            transport.send(method, "/charges", json={"amount": "1.00"} if method == "POST" else None)
    finally:
        transport.close()
    return raised.value


def shape(error: BaseException) -> list[type]:
    """The types along requests' wrapping: the exception, what it wraps, a MaxRetryError's reason."""
    types = [type(error)]
    inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else None
    while inner is not None:
        types.append(type(inner))
        inner = inner.reason if isinstance(inner, urllib3.exceptions.MaxRetryError) else None
    return types


Behaviour = Callable[["RawServer", socket.socket], None]


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1 that plays `behaviour` on each connection, one at a time."""

    behaviour: Behaviour
    received: list[bytes] = field(default_factory=list)
    held: list[socket.socket] = field(default_factory=list)

    def __enter__(self) -> RawServer:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.stop_listening()
        for conn in self.held:
            conn.close()

    def transport(self, *, timeout: float = 0.5, scheme: str = "http") -> Transport:
        return Transport(service="test", base_url=f"{scheme}://127.0.0.1:{self.port}/v1", timeout=timeout)

    def requests_received(self) -> int:
        return sum(1 for data in self.received if data.split(b" ", 1)[0] in (b"GET", b"POST"))

    def stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()

    def read_request(self, conn: socket.socket) -> bytes:
        conn.settimeout(2)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.received.append(data)
        return data

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.behaviour(self, conn)


def hang_up(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    conn.close()


def say_nothing(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.held.append(conn)


def reset(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # Close with RST.
    conn.close()


def answer_half(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id":')
    conn.close()


def speak_plain_http(server: RawServer, conn: socket.socket) -> None:
    # The client's TLS hello is answered in plain HTTP: the handshake fails after connecting.
    conn.settimeout(2)
    server.received.append(conn.recv(65536))
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    conn.close()


def answer(status: int, body: bytes, headers: str = "") -> Behaviour:
    def respond(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}"
        conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        conn.close()

    return respond


def answer_503_then_stop_listening(server: RawServer, conn: socket.socket) -> None:
    server.stop_listening()  # The retries find the port closed.
    answer(503, b"{}")(server, conn)


def redirect_to(location: str) -> Behaviour:
    return answer(307, b"", headers=f"Location: {location}\r\n")


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: a new connection is neither accepted nor refused."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            started = time.monotonic()
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            assert time.monotonic() - started < 0.2
        else:
            pytest.skip("this kernel never lets a loopback connect time out")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# The environment, read once ----------------------------------------------------------------


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """A real HTTP server on 127.0.0.1 that answers `{}` to anything and records each request
    line and its headers."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.requestline, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_proxy_named_in_the_environment_is_used(monkeypatch):
    with recording_server() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        transport = Transport(service="test", base_url="http://flights.internal:3000", timeout=2.0)
        monkeypatch.delenv("HTTP_PROXY")  # Read when the transport was made, not on each request.

        assert transport.send("GET", "/api/v1/flights/1").status_code == 200

    ((line, _),) = seen
    assert line == "GET http://flights.internal:3000/api/v1/flights/1 HTTP/1.1"


def test_a_host_in_no_proxy_is_reached_directly(monkeypatch):
    with recording_server() as (proxy, seen), recording_server() as (service, direct):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert Transport(service="test", base_url=service, timeout=2.0).send("GET", "/x").status_code == 200

    assert seen == []
    assert [line for line, _ in direct] == ["GET /x HTTP/1.1"]


def test_a_netrc_entry_never_replaces_the_token(monkeypatch, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with recording_server() as (service, seen):
        Transport(service="test", base_url=service, token="secret", timeout=2.0).send("GET", "/x")

    ((_, headers),) = seen
    assert headers["Authorization"] == "Bearer secret"


def test_the_ca_bundle_named_in_the_environment_verifies_tls(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ours.pem")
    transport = Transport(service="test", base_url="https://pay.internal", timeout=1.0)
    assert transport.session.verify == "/etc/ssl/certs/ours.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert Transport(service="test", base_url="https://pay.internal", timeout=1.0).session.verify is True
