"""Liveness and readiness probes for load balancers and orchestrators."""

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """The database (and a remote Flights service, when configured) answer.

    503 tells the balancer to send traffic elsewhere.
    """
    checks = {"database": _database_ok()}
    if settings.FLIGHT_SERVICE_URL:
        from bookings.flights_gateway import get_flight_gateway

        checks["flights"] = get_flight_gateway().is_ready()
    ready = all(checks.values())
    return JsonResponse(
        {
            "status": "ok" if ready else "unavailable",
            "checks": {k: "ok" if v else "failing" for k, v in checks.items()},
        },
        status=200 if ready else 503,
    )


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # Any failure means "not ready"; the reason goes to the log.
        logger.exception("readiness: database check failed")
        return False
