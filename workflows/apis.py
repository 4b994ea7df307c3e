"""GET /metrics: Prometheus's scrape (docs/operations.md#metrics)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from bookings_project import metrics
from bookings_project.errors import problem_json
from bookings_project.exceptions import InvalidCredentials, NotFound
from workflows.monitoring import StateCollector


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """This host's events (every process's) and the database's state, for a request with
    `Authorization: Bearer <METRICS_TOKEN>`; 401 without it, 404 while no token is set (problem+json)."""
    if not settings.METRICS_TOKEN:
        return problem_json(NotFound("Metrics are off: set METRICS_TOKEN."))
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode()):
        refused = problem_json(InvalidCredentials("Send Authorization: Bearer <METRICS_TOKEN>."))
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    body = generate_latest(metrics.event_registry()) + generate_latest(_STATE)
    # The classic text format, which every Prometheus reads (our names need nothing newer).
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Cache-Control": "no-store"})


_STATE = CollectorRegistry(auto_describe=False)
_STATE.register(StateCollector())
