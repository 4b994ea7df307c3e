"""Logs and request ids (bookings_project/logs.py, bookings_project/request_id.py, LOGGING).

- Every response carries `X-Request-ID`: the client's own when it is sane
  (`[A-Za-z0-9._:-]{1,128}`, whole value), else a fresh 32-hex id; whatever answers the
  request (DRF, Django's 404 and 500 handlers, admin, the probes).
- One `bookings_project.requests` line per request: method, path, status, duration_ms,
  user_id; the line and everything logged while serving carry the request's id.
- `LOG_FORMAT=json` (the default): one JSON object per line on stderr, with time, level,
  logger, message, request_id, the `extra=` fields (as text when JSON cannot hold them) and
  `exc`; `text` puts the id in brackets; anything else refuses to start.
- A cleanup run logs, and writes its audit events, under `cleanup-<hex>`: its CleanupRun's id.

Where the real handler's output matters, a fresh process with the real settings
(`bookings_project.settings`) serves the requests and its stderr is read line by line;
caplog is enough for the fields of a record. The HTTP Flights adapter passing the id on
(create, cancel, and calls outside a request) is covered in tests/bookings/test_http_gateway.py.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from bookings_project.logs import RequestIdFilter
from tests.helpers import assert_problem
from tests.support.processes import ROOT, SETTINGS_KEYS, settings_free_environ

HEX_ID = re.compile(r"[0-9a-f]{32}")
REQUESTS_LOGGER = "bookings_project.requests"

# Newlines, quotes, a backslash, a tab, non-ASCII and a Unicode line separator: still one line.
AWKWARD_MESSAGE = 'first line\nsecond "quoted" line \\ with\ttab, é ✈ 日本 \u2028 and \r\n the end'


def test_every_stderr_line_is_one_json_object_with_the_standard_fields(scenario):
    assert len(scenario.lines) >= 8
    for line in scenario.lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"]), line
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def test_a_request_logs_one_line_with_the_id_it_answered(scenario):
    assert scenario.facts["created"][:2] == [201, "create-1"]

    line = scenario.one(logger=REQUESTS_LOGGER, request_id="create-1")

    assert line["level"] == "INFO"
    assert line["message"] == "POST /api/v1/bookings 201"
    assert (line["method"], line["path"], line["status"], line["user_id"]) == (
        "POST",
        "/api/v1/bookings",
        201,
        scenario.facts["alice"],
    )
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_a_generated_id_is_the_one_logged(scenario):
    status, answered = scenario.facts["listed"]
    assert status == 200
    assert HEX_ID.fullmatch(answered)

    line = scenario.one(logger=REQUESTS_LOGGER, request_id=answered)

    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/bookings", 200)


def test_the_audit_line_of_the_creation_carries_the_requests_id(scenario):
    booking_id = scenario.facts["created"][2]

    line = scenario.one(logger="bookings.audit", request_id="create-1")

    assert line["message"] == f"booking {booking_id}: new -> INITIATED (created) by user"
    assert line["booking_id"] == booking_id
    assert line["level"] == "INFO"


def test_an_unexpected_error_is_logged_with_its_traceback_under_the_requests_id(scenario):
    assert scenario.facts["failed"] == [500, "boom-1", "internal_error"]

    line = scenario.one(logger="bookings_project.errors", request_id="boom-1")

    assert line["level"] == "ERROR"
    assert line["message"] == "unhandled error in BookingViewSet"
    assert line["exc"].startswith("Traceback (most recent call last):\n")
    assert '\n  File "/' in line["exc"]  # The frames are there,
    assert 'File "<string>", line' in line["exc"] and ", in broken\n" in line["exc"]  # down to the one that raised.
    assert line["exc"].endswith("RuntimeError: boom: the selector broke")
    assert scenario.one(logger=REQUESTS_LOGGER, request_id="boom-1")["status"] == 500


def test_an_awkward_message_and_extras_json_cannot_hold_stay_one_line_of_json(scenario):
    (raw,) = [text for text in scenario.raw_lines if '"logger": "scenario"' in text]
    line = json.loads(raw)

    assert line["message"] == AWKWARD_MESSAGE
    assert line["level"] == "WARNING"
    assert line["request_id"] == "-"  # Outside any request.
    assert line["opaque"] == "Opaque<42>"
    assert line["amount"] == "11000.00"
    assert line["nested"] == {"seats": [1, 2], "ok": True}
    assert "exc" not in line
    # Non-ASCII is written as is, not as escapes.
    assert "é ✈ 日本" in raw


def test_a_cleanup_runs_lines_and_events_carry_its_run_id(scenario):
    cleanup = scenario.facts["cleanup"]
    run_id = cleanup["run_id"]
    assert re.fullmatch(r"cleanup-[0-9a-f]{32}", run_id)
    booking_id = scenario.facts["created"][2]
    assert cleanup["status"] == "CANCELLED"
    assert cleanup["events"] == [["created", "user", "create-1"], ["expired", "cleanup", run_id]]

    summary = scenario.one(logger="bookings.cleanup", level="INFO")
    expired = scenario.one(
        logger="bookings.audit", message=f"booking {booking_id}: INITIATED -> CANCELLED (expired) by cleanup"
    )

    assert summary["message"].startswith("cleanup_stale_bookings: ")
    assert summary["request_id"] == run_id
    assert expired["request_id"] == run_id
    # Nothing else was logged under the run's id but the cleanup's own lines.
    assert {line["logger"] for line in scenario.find(request_id=run_id)} == {"bookings.cleanup", "bookings.audit"}


def test_djangos_own_line_for_a_500_carries_the_requests_id_and_its_4xx_lines_are_left_out(scenario):
    # Django logs a failed request after the middleware has finished with it.
    assert scenario.facts["missing"] == [404, "missing-1"]
    assert scenario.find(request_id="missing-1") == [scenario.one(logger=REQUESTS_LOGGER, status=404)]

    line = scenario.one(logger="django.request")

    assert (line["level"], line["message"], line["request_id"]) == (
        "ERROR",
        "Internal Server Error: /api/v1/bookings",
        "boom-1",
    )
    assert line["status_code"] == 500
    # Its `request` extra is no JSON value: it is logged as its text.
    assert line["request"] == "<WSGIRequest: GET '/api/v1/bookings'>"


TEXT_FORMAT = r"""
import logging
import django

django.setup()
from django.test import Client

response = Client(HTTP_HOST="localhost").get("/healthz", HTTP_X_REQUEST_ID="text-1")
logging.getLogger("scenario").warning("outside a request")
print(response.status_code, response["X-Request-ID"])
"""


def test_log_format_text_puts_the_request_id_in_brackets(tmp_path):
    result = run_django(TEXT_FORMAT, tmp_path, LOG_FORMAT="text")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "200 text-1\n"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(stamp + r" INFO bookings_project\.requests \[text-1\] GET /healthz 200", lines[0]), lines
    assert re.fullmatch(stamp + r" WARNING scenario \[-\] outside a request", lines[1]), lines


def test_an_unknown_log_format_refuses_to_start(tmp_path):
    result = run_django("import django; django.setup(); print('started')", tmp_path, LOG_FORMAT="bogus")

    assert result.returncode != 0
    assert result.stdout == ""
    assert "LOG_FORMAT must be json or text." in result.stderr


# In process: the request line's fields -------------------------------------------------------


@pytest.fixture
def request_log(caplog):
    """The request log's records, stamped with the request id by the real filter."""
    stamp = RequestIdFilter()
    caplog.handler.addFilter(stamp)
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        yield lambda: [record for record in caplog.records if record.name == REQUESTS_LOGGER]
    caplog.handler.removeFilter(stamp)


@pytest.mark.django_db
def test_the_request_line_names_the_user_the_status_and_the_path(user, user_client, flight, request_log):
    created = user_client.post(
        "/api/v1/bookings?x=1", {"flightId": flight.pk, "numberOfSeats": 1}, format="json", HTTP_X_REQUEST_ID="r-1"
    )
    refused = APIClient().get("/api/v1/bookings", HTTP_X_REQUEST_ID="r-2")

    assert (created.status_code, refused.status_code) == (201, 401)
    first, second = request_log()
    assert (first.method, first.path, first.status, first.user_id, first.request_id) == (
        "POST",
        "/api/v1/bookings",
        201,
        user.pk,
        "r-1",
    )
    assert first.getMessage() == "POST /api/v1/bookings 201"
    assert first.levelname == "INFO"
    assert isinstance(first.duration_ms, float) and first.duration_ms >= 0
    assert (second.method, second.path, second.status, second.user_id, second.request_id) == (
        "GET",
        "/api/v1/bookings",
        401,
        None,
        "r-2",
    )


@pytest.mark.django_db
def test_a_session_user_in_admin_is_named_too(staff_user, request_log):
    client = APIClient()
    client.force_login(staff_user)

    response = client.get("/admin/", HTTP_X_REQUEST_ID="admin-1")

    assert (response.status_code, response["X-Request-ID"]) == (200, "admin-1")
    (line,) = request_log()
    assert (line.path, line.status, line.user_id, line.request_id) == (
        "/admin/",
        200,
        staff_user.pk,
        "admin-1",
    )


# In process: which ids are kept ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    ["abc", "A.b_c:d-9", "0", "x" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e"],
    ids=["word", "punctuation", "one-char", "128-chars", "uuid"],
)
def test_a_sane_incoming_id_is_kept_and_logged(client, request_log, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)

    assert response["X-Request-ID"] == sent
    (line,) = request_log()
    assert line.request_id == sent


@pytest.mark.parametrize(
    "sent",
    ["has spaces", "x" * 129, "abc\n", "ñandú", "", "a/b", "a,b", "tab\there", "<script>"],
    ids=["spaces", "129-chars", "trailing-newline", "non-ascii", "empty", "slash", "comma", "tab", "markup"],
)
def test_an_unusable_incoming_id_is_replaced_by_a_fresh_one(client, request_log, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)

    given = response["X-Request-ID"]
    assert HEX_ID.fullmatch(given)
    (line,) = request_log()
    assert line.request_id == given


def test_without_an_id_each_request_gets_its_own(client, request_log):
    first, second = client.get("/healthz"), client.get("/healthz")

    ids = [first["X-Request-ID"], second["X-Request-ID"]]
    assert all(HEX_ID.fullmatch(value) for value in ids)
    assert ids[0] != ids[1]
    assert [line.request_id for line in request_log()] == ids


# In process: every kind of answer echoes the id ---------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "method", "path", "kwargs", "status", "code"),
    [
        ("anonymous", "get", "/api/v1/bookings", {}, 401, "not_authenticated"),
        ("user", "get", "/api/v1/no-such-thing", {}, 404, "not_found"),
        ("user", "post", "/api/v2/bookings", {"data": {}, "format": "json"}, 404, "not_found"),
        ("user", "get", "/api/v1/bookings/999999", {}, 404, "not_found"),
        ("user", "delete", "/api/v1/bookings", {}, 405, "method_not_allowed"),
        ("user", "post", "/api/v1/bookings", {"data": {"flightId": "1"}, "format": "multipart"}, 415, None),
        ("user", "post", "/api/v1/bookings", {"data": {"flightId": "x"}, "format": "json"}, 400, "validation_error"),
        ("user", "get", "/api/v1/flights", {"HTTP_ACCEPT": "application/xml"}, 406, "not_acceptable"),
        ("user", "get", "/api/v1/bookings", {}, 200, None),
        ("anonymous", "get", "/healthz", {}, 200, None),
        ("anonymous", "get", "/readyz", {}, 200, None),
        ("anonymous", "get", "/api/schema/", {}, 200, None),
        ("anonymous", "get", "/api-docs", {}, 301, None),
        ("anonymous", "get", "/admin/", {}, 302, None),
        ("anonymous", "get", "/admin/login/", {}, 200, None),
        ("anonymous", "get", "/no-such-page", {}, 404, None),
    ],
)
def test_every_answer_echoes_the_request_id(user_client, request_log, who, method, path, kwargs, status, code):
    client = user_client if who == "user" else APIClient()

    response = getattr(client, method)(path, HTTP_X_REQUEST_ID="echo-1", **kwargs)

    assert response.status_code == status, response.content[:300]
    if code or status == 415:
        assert_problem(response, status, code or "unsupported_media_type")
    assert response["X-Request-ID"] == "echo-1"
    (line,) = request_log()
    assert (line.status, line.request_id) == (status, "echo-1")


@pytest.mark.django_db
def test_a_throttled_answer_echoes_the_request_id(user_client, settings, request_log):
    settings.THROTTLE_RATES = {"token": "", "bookings": "1/min", "payments": ""}
    cache.clear()
    try:
        assert user_client.get("/api/v1/bookings").status_code == 200
        throttled = user_client.get("/api/v1/bookings", HTTP_X_REQUEST_ID="slow-down")
    finally:
        cache.clear()

    assert_problem(throttled, 429, "throttled")
    assert throttled["X-Request-ID"] == "slow-down"
    assert [(line.status, line.request_id) for line in request_log()][-1] == (429, "slow-down")


@pytest.mark.django_db
def test_an_unexpected_error_echoes_the_request_id(user_client, monkeypatch, request_log):
    from bookings import selectors

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "booking_list", broken)

    response = user_client.get("/api/v1/bookings", HTTP_X_REQUEST_ID="boom-2")

    assert_problem(response, 500, "internal_error")
    assert response["X-Request-ID"] == "boom-2"
    (line,) = request_log()
    assert (line.status, line.request_id) == (500, "boom-2")


# A fresh process -----------------------------------------------------------------------------


def run_django(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh process on the real settings and its own SQLite file, with none of
    this shell's configuration. WhiteNoise's warning about a missing STATIC_ROOT (a checkout
    without collectstatic) is a Python warning, not a log record, so it is silenced."""
    assert {"DATABASE_URL", "LOG_FORMAT"} <= SETTINGS_KEYS, "the pattern is stale"
    clean = settings_free_environ()
    clean["DATABASE_URL"] = f"sqlite:///{tmp_path / 'logs.sqlite3'}"
    return subprocess.run(
        [sys.executable, "-W", "ignore:No directory at:UserWarning", "-c", code],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=180,
    )


SCENARIO = r"""
import datetime as dt
import io
import json
import logging
from decimal import Decimal

import django

django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings import selectors
from bookings.models import Booking, BookingEvent, CleanupRun
from tests.factories import make_flight

alice = get_user_model().objects.create_user(username="alice", password="alice-password")
flight = make_flight(capacity=20)
client = APIClient(HTTP_HOST="localhost")
client.credentials(HTTP_AUTHORIZATION="Token " + Token.objects.create(user=alice).key)
facts = {"alice": alice.pk}

created = client.post(
    "/api/v1/bookings", {"flightId": flight.pk, "numberOfSeats": 2}, format="json", HTTP_X_REQUEST_ID="create-1"
)
facts["created"] = [created.status_code, created["X-Request-ID"], created.json()["id"]]
listed = client.get("/api/v1/bookings")
facts["listed"] = [listed.status_code, listed["X-Request-ID"]]
missing = client.get("/api/v1/bookings/999999", HTTP_X_REQUEST_ID="missing-1")
facts["missing"] = [missing.status_code, missing["X-Request-ID"]]


def broken(**kwargs):
    raise RuntimeError("boom: the selector broke")


real, selectors.booking_list = selectors.booking_list, broken
failed = client.get("/api/v1/bookings", HTTP_X_REQUEST_ID="boom-1")
selectors.booking_list = real
facts["failed"] = [failed.status_code, failed["X-Request-ID"], failed.json()["code"]]


class Opaque:
    def __str__(self):
        return "Opaque<42>"


extra = {"opaque": Opaque(), "amount": Decimal("11000.00"), "nested": {"seats": [1, 2], "ok": True}}
logging.getLogger("scenario").warning(__MESSAGE__, extra=extra)

booking_id = facts["created"][2]
Booking.objects.filter(pk=booking_id).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
out = io.StringIO()
call_command("cleanup_stale_bookings", stdout=out)
run = CleanupRun.objects.get()
events = BookingEvent.objects.filter(booking_id=booking_id).order_by("id")
facts["cleanup"] = {
    "run_id": run.run_id,
    "events": [[event.reason, event.actor, event.request_id] for event in events],
    "status": Booking.objects.get(pk=booking_id).status,
}
print(json.dumps(facts))
"""


class Scenario:
    def __init__(self, result: subprocess.CompletedProcess) -> None:
        assert result.returncode == 0, result.stderr
        self.facts = json.loads(result.stdout)
        self.raw_lines = result.stderr.split("\n")
        assert self.raw_lines[-1] == "", "stderr must end with a newline"
        self.raw_lines = self.raw_lines[:-1]
        self.lines = [self._parse(line) for line in self.raw_lines]

    @staticmethod
    def _parse(line: str) -> dict:
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a stderr line that is not JSON: {line!r}") from None

    def find(self, **fields) -> list[dict]:
        return [line for line in self.lines if all(line.get(k) == v for k, v in fields.items())]

    def one(self, **fields) -> dict:
        (found,) = self.find(**fields)
        return found


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    """One process serves a booking, a list, a 404 and a 500, logs an awkward record and runs
    cleanup; its facts come on stdout and its logs on stderr."""
    code = SCENARIO.replace("__MESSAGE__", repr(AWKWARD_MESSAGE))
    return Scenario(run_django(code, tmp_path_factory.mktemp("scenario")))
