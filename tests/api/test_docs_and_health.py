"""Swagger UI works with no internet, the schema is valid, and the probes answer."""

import re
from urllib.parse import urljoin, urlparse

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db

URL_IN_TEXT = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


def _urls(html: str) -> list[str]:
    return [a or b for a, b in URL_IN_TEXT.findall(html)]


def test_swagger_ui_and_its_assets_are_served_locally(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()

    urls = _urls(html) + re.findall(r"""url:\s*["']([^"']+)["']""", html)
    assert any("swagger-ui" in url for url in urls), urls
    for url in urls:
        absolute = urljoin("http://testserver/api/docs/", url)
        assert urlparse(absolute).netloc == "testserver", f"the docs page loads {url} from outside the service"
        asset = client.get(urlparse(absolute).path)
        assert asset.status_code == 200, (url, asset.status_code)
        if url.endswith(".js"):
            body = b"".join(asset.streaming_content) if asset.streaming else asset.content
            assert len(body) > 1000, url

    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html


def test_the_seeds_docs_address_redirects(client):
    for path in ["/api-docs", "/api-docs/"]:
        response = client.get(path)
        assert response.status_code == 301
        assert response["Location"] == "/api/docs/"


def test_schema_is_openapi_3_and_lists_the_api(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/flights", "/api/v1/flights/{id}", "/api/v1/flights/{id}/seats", "/api/v1/auth/token"} <= set(
        schema["paths"]
    )
    seats_409 = schema["paths"]["/api/v1/flights/{id}/seats"]["patch"]["responses"]["409"]
    assert "application/problem+json" in seats_409["content"]


def test_schema_documents_bookings_with_the_demo_example_and_every_error(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paths = schema["paths"]
    create = paths["/api/v1/bookings"]["post"]
    examples = create["requestBody"]["content"]["application/json"]["examples"]
    assert {"flightId": 1, "numberOfSeats": 2} in [e["value"] for e in examples.values()]
    created = create["responses"]["201"]["content"]["application/json"]["examples"]
    assert [e["value"]["totalCost"] for e in created.values()] == ["11000.00"]
    assert {"400", "401", "403", "404", "409", "415", "503"} <= set(create["responses"])
    for status in ("400", "401", "403", "404", "409", "415", "503"):
        assert "application/problem+json" in create["responses"][status]["content"], status
    assert "flight_service_unavailable" in create["responses"]["503"]["description"]
    assert {"patch", "post"} <= set(paths["/api/v1/bookings/{id}/cancel"])
    assert "payment_in_progress" in paths["/api/v1/bookings/{id}/cancel"]["patch"]["responses"]["409"]["description"]
    list_params = {p["name"] for p in paths["/api/v1/bookings"]["get"]["parameters"]}
    assert {"status", "flightId", "userId", "reference", "page", "pageSize"} <= list_params


def test_schema_validates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "openapi:" in (tmp_path / "schema.yaml").read_text()


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_the_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "clock": "ok"}}


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("cache_url", "limits", "checks", "status"),
    [
        # The limits count in a Redis nobody listens on: the host is not ready.
        (f"redis://127.0.0.1:{closed_port()}/0", True, {"database": "ok", "clock": "ok", "cache": "failing"}, 503),
        # Redis answers (CI has one on this machine).
        ("redis://127.0.0.1:6379/0", True, {"database": "ok", "clock": "ok", "cache": "ok"}, 200),
        # No limit set: the cache counts nothing, and is not asked.
        (f"redis://127.0.0.1:{closed_port()}/0", False, {"database": "ok", "clock": "ok"}, 200),
    ],
)
def test_readyz_asks_the_cache_the_rate_limits_count_in(client, settings, cache_url, limits, checks, status):
    import environ

    settings.CACHES = {"default": environ.Env.cache_url_config(cache_url)}
    settings.THROTTLE_RATES = {"token": "10/min" if limits else "", "bookings": "", "payments": ""}
    response = client.get("/readyz")

    assert (response.status_code, response.json()["checks"]) == (status, checks)


def test_readyz_is_503_when_the_database_does_not_answer(client, monkeypatch):
    from django.db import OperationalError

    def refuse(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(connection, "cursor", refuse)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "failing"
