"""The service token: how a remote Bookings service authenticates to this Flights API."""

from __future__ import annotations

import hmac

from django.conf import settings
from rest_framework import authentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request


class ServicePrincipal:
    """The caller behind a valid service token: a service, not a person."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False
    is_service = True
    pk = id = None
    username = "flights-service-client"

    def __str__(self) -> str:
        return self.username


class ServiceTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <FLIGHT_SERVICE_TOKEN>`; off while the setting is empty."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ServicePrincipal, str] | None:
        expected = settings.FLIGHT_SERVICE_TOKEN
        parts = authentication.get_authorization_header(request).split()
        if not expected or len(parts) != 2 or parts[0].decode("latin-1").lower() != "bearer":
            return None
        token = parts[1].decode("latin-1")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise AuthenticationFailed("Invalid service token.")
        return ServicePrincipal(), token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
