"""How API requests authenticate: `Authorization: Token <key>` (DRF's scheme), cheaper."""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError, connections, router
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from bookings_project import statements


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's `Authorization: Token <key>` (the same answers), cheaper, and surviving a dropped
    connection.

    The look-up is DRF's `select_related("user").get(key=…)`, its SQL compiled once per
    connection (`bookings_project.statements.get`; rebuilding it was a quarter of the
    instructions of a cheap authenticated GET): one statement, as before. It is the first
    statement of an API request, sent outside any transaction, so it is also where a persistent connection
    that died since the last request (a database restart, an idle connection cut) is found:
    with `CONN_HEALTH_CHECKS` off there is no `SELECT 1` per request to find it earlier. Then
    the connection is closed and the look-up sent once more on a new one; a database still
    down answers 503 `service_unavailable` with Retry-After (`bookings_project.errors`).
    Nothing is cached: a deleted token or a deactivated user is refused on the next request.
    """

    def authenticate_credentials(self, key: str):
        connection = connections[router.db_for_read(Token)]
        reused = connection.connection is not None  # Kept open since an earlier request.
        try:
            token = statements.get(Token, key, related=("user",))
        except (DatabaseError, InterfaceError):
            if not reused or connection.in_atomic_block or connection.is_usable():
                raise  # A new connection failing, or a live one; or one we may not replace.
            connection.close()
            token = statements.get(Token, key, related=("user",))
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token
