"""Request rate limits (DRF throttles), counted in Django's cache (`CACHE_URL`).

Rates come from the `THROTTLE_RATES` setting (`THROTTLE_RATE_*` in the environment), read
on every request so that a changed setting applies at once; an empty rate means no limit.
A throttled request gets 429 problem+json `throttled` with `Retry-After`.

The cache is shared in production (Redis: every worker and host counts together). When it is
down, a limit lets requests through and logs an error: the service stays up, uncounted, rather
than refusing every request (docs/operations.md#rate-limits).
"""

import logging

from django.conf import settings
from django.http import HttpRequest
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or the one `NUM_PROXIES` trusted proxies put in
    X-Forwarded-For (DRF's rule). The admin login lockout reads it too."""
    return BaseThrottle().get_ident(request)


class _SettingsRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return settings.THROTTLE_RATES.get(self.scope) or None

    def allow_request(self, request: Request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as error:  # Whatever the cache's client raises when it is unreachable.
            logger.error("rate limit %s not counted: its cache failed: %s", self.scope, error)
            return True

    def wait(self) -> float | None:
        """Seconds until a request is allowed again. DRF answers None (so no Retry-After) when
        more requests are counted than the rate now allows, i.e. after the rate was lowered:
        then it is until the newest request beyond the new limit leaves the window."""
        wait = super().wait()
        if wait is None and len(self.history) >= self.num_requests:
            wait = max(0.0, self.history[self.num_requests - 1] + self.duration - self.now)
        return wait


class TokenThrottle(_SettingsRateThrottle):
    """`POST /auth/token` per client IP: guessing passwords is slow. The IP is REMOTE_ADDR,
    or the one `NUM_PROXIES` trusted proxies put in X-Forwarded-For."""

    scope = "token"

    def get_cache_key(self, request: Request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class _PerUserThrottle(_SettingsRateThrottle):
    def get_cache_key(self, request: Request, view) -> str | None:
        if not request.user or not request.user.is_authenticated:
            return None  # Refused before this runs (401); nothing to count.
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class BookingsThrottle(_PerUserThrottle):
    """Every bookings endpoint, per signed-in user."""

    scope = "bookings"


class PaymentsThrottle(_PerUserThrottle):
    """Every payments endpoint, per signed-in user."""

    scope = "payments"
