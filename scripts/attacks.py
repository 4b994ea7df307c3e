"""What an attacker sends, against the live service: bodies nested past the decoder's
recursion limit, bodies over the size limit, NUL characters in URLs, and a body sent a byte a
second. Every answer must be below 500 and, under /api/, problem+json (docs/api.md#errors).

Run by scripts/fuzz_api.py after schemathesis, straight at gunicorn and through nginx in
front (deploy/nginx.conf), which answers some of these itself."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

# A little over the app's DATA_UPLOAD_MAX_MEMORY_SIZE (2,621,440 bytes).
OVERSIZED = 3_000_000
SLOW_BODY_SECONDS = 4


@dataclass(frozen=True)
class Attack:
    name: str
    method: str
    path: str
    body: bytes | None = None
    token: str = ""
    key: bool = False  # Send an Idempotency-Key, so that a payment reads its body.
    big_header: bool = False


def attacks(token: str) -> Iterator[Attack]:
    nested = b"[" * 1000 + b"]" * 1000
    nested_object = b'{"flightId": ' + b"[" * 990 + b"]" * 990 + b', "numberOfSeats": 1}'
    big = b'{"flightId": 1, "numberOfSeats": 1, "padding": "' + b"x" * OVERSIZED + b'"}'
    bodies = {"nested past the limit": nested, "nested just under it": nested_object, "oversized": big}
    endpoints = [
        ("POST", "/api/v1/auth/token", ""),  # Anonymous.
        ("POST", "/api/v1/bookings", token),
        ("POST", "/api/v1/payments", token),
        ("PATCH", "/api/v1/bookings/1/cancel", token),
        ("POST", "/api/v1/flights", token),
        ("PATCH", "/api/v1/flights/1/seats", token),
    ]
    for what, body in bodies.items():
        for method, path, as_token in endpoints:
            yield Attack(f"{what}: {method} {path}", method, path, body, as_token, key=True)
    for path in [
        "/api/v1/bookings?status=%00",
        "/api/v1/flights?departureAirport=%00DEL",
        "/api/v1/bookings/1%00",
        "/api/v1/payments?x=%00",
        "/admin/bookings/booking/?status__exact=%00",
        "/admin/login/?next=%00",
    ]:
        yield Attack(f"NUL: GET {path}", "GET", path, token=token)


def edge_attacks(token: str) -> Iterator[Attack]:
    """What the server at the edge refuses before the app sees it: nginx in production answers
    these as problem+json; gunicorn alone answers its own HTML pages (docs/operations.md)."""
    yield Attack("a 20 KB URI: GET /api/v1/…", "GET", "/api/v1/bookings/" + "a" * 20_000, token=token)
    yield Attack("a 20 KB header: GET /api/v1/bookings", "GET", "/api/v1/bookings", token=token, big_header=True)


def send(base_url: str, attack: Attack) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if attack.big_header:
        headers["X-Padding"] = "x" * 20_000
    if attack.token:
        headers["Authorization"] = f"Token {attack.token}"
    if attack.key:
        headers["Idempotency-Key"] = "attack-1"
    return requests.request(
        attack.method, base_url + attack.path, data=attack.body, headers=headers, timeout=30, allow_redirects=False
    )


def slow_body(base_url: str, token: str) -> tuple[int, str]:
    """A booking whose body arrives a byte a second for a few seconds, then the rest: the status
    and the content type of the answer."""
    body = b'{"flightId": 1, "numberOfSeats": 1}'
    split = urlsplit(base_url)
    head = (
        f"POST /api/v1/bookings HTTP/1.1\r\nHost: {split.hostname}\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((split.hostname, split.port), timeout=30) as connection:
        connection.sendall(head)
        for byte in body[:SLOW_BODY_SECONDS]:
            connection.sendall(bytes([byte]))
            time.sleep(1)
        connection.sendall(body[SLOW_BODY_SECONDS:])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers = rest.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    types = [line.split(":", 1)[1].strip() for line in headers.splitlines() if line.startswith("content-type:")]
    content_type = types[0] if types else ""
    return int(status_line.split()[1]), content_type


def wrong_admin_password(browser: requests.Session, base_url: str, username: str, password: str) -> int:
    """One wrong password posted as a browser does, its CSRF token fetched first with the form:
    the status of the post (or of the form, when that was refused)."""
    form = browser.get(f"{base_url}/admin/login/", timeout=30)
    token = browser.cookies.get("csrftoken", "")
    if form.status_code != 200 or not token:
        return form.status_code
    data = {"username": username, "password": password, "csrfmiddlewaretoken": token}
    return browser.post(f"{base_url}/admin/login/", data=data, timeout=30).status_code


def admin_login_flood(base_url: str, attempts: int = 20) -> list[int]:
    """Wrong staff passwords as fast as one browser can send them: the statuses answered."""
    browser = requests.Session()
    return [wrong_admin_password(browser, base_url, "staff", f"guess-{n}") for n in range(attempts)]


def run(base_url: str, token: str, where: str, *, edge: bool) -> list[str]:
    """Every attack against `base_url` (`edge`: it is the server facing clients, nginx); the
    failures, as lines to print."""
    failures = []
    sent = [*attacks(token), *(edge_attacks(token) if edge else [])]
    results = [(attack, send(base_url, attack)) for attack in sent]
    slow_status, slow_type = slow_body(base_url, token)
    for attack, response in results:
        problem = response.headers.get("Content-Type", "") == "application/problem+json"
        refused = response.status_code >= 400
        if response.status_code >= 500 or (refused and attack.path.startswith("/api/") and not problem):
            failures.append(f"{where}: {attack.name}: {response.status_code} {response.text[:200]!r}")
    if slow_status >= 500 or slow_type not in ("application/json", "application/problem+json"):
        failures.append(f"{where}: a body a byte a second: {slow_status} {slow_type}")
    flood = admin_login_flood(base_url)
    # The form again (200) for the first wrong passwords, then 429: axes' lockout, and through
    # nginx its per-address limit too; never a 5xx.
    if any(status >= 500 for status in flood) or 429 not in flood:
        failures.append(f"{where}: an admin login flood: {sorted(set(flood))}")
    answered = sorted({(attack.name.split(":")[0], response.status_code) for attack, response in results})
    print(f"attacks {where}: {len(results) + 1} sent, {len(failures)} failed; answers {answered}")
    print(f"attacks {where}: a body a byte a second answered {slow_status}")
    print(f"attacks {where}: an admin login flood of {len(flood)} answered {dict(sorted(Counter(flood).items()))}")
    return failures
