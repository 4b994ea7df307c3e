"""Liveness and readiness probes for load balancers and orchestrators."""

import datetime as dt
import logging

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse

from bookings_project import db

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and answering."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """The database answers, this host's clock agrees with it (within `MAX_CLOCK_SKEW_SECONDS`),
    the cache the rate limits count in answers (when any limit is set), and a remote Flights
    service, when configured, answers.

    503 tells the balancer to send traffic elsewhere: a host with a wrong clock stamps wrong
    hold expiries and payment times.
    """
    skew = _clock_skew()
    checks = {"database": skew is not None}
    if skew is not None:
        checks["clock"] = abs(skew.total_seconds()) <= settings.MAX_CLOCK_SKEW_SECONDS
        if not checks["clock"]:
            logger.error("readiness: this host's clock is %.1f s off the database's", skew.total_seconds())
    if any(settings.THROTTLE_RATES.values()):
        checks["cache"] = _cache_answers()
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


def _clock_skew() -> dt.timedelta | None:
    """This host's clock against the database's; None if the database does not answer."""
    try:
        return db.host_clock_skew()
    except Exception:  # Any failure means "not ready"; the reason goes to the log.
        logger.exception("readiness: database check failed")
        return None


def _cache_answers() -> bool:
    """The rate limits' cache answers a read. Down, the limits let every request through
    uncounted (bookings_project/throttling.py): the host serves, but unguarded."""
    try:
        cache.get("readyz")
    except Exception:  # Whatever the cache's client raises when it is unreachable.
        logger.exception("readiness: the cache does not answer")
        return False
    return True
