"""How API requests authenticate: `Authorization: Token <key>` (DRF's scheme), cheaper."""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError, connections, router
from django.db.models.query import get_related_populators
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from bookings_project.statements import converted


class _TokenLookup:
    """`Token.objects.select_related("user").get(key=…)`, compiled once: the same SQL (every
    column of both rows, so nothing is deferred), converters and model building as the ORM's,
    without building the query again on every request (that was a quarter of the instructions
    of a cheap authenticated GET). One per connection (so per thread), like the ORM's compilers."""

    _PLACEHOLDER = "token-key"

    def __init__(self, connection) -> None:
        self.connection = connection
        self.alias = alias = connection.alias
        query = Token.objects.select_related("user").filter(pk=self._PLACEHOLDER).query
        compiler = query.get_compiler(connection=connection)
        self.sql, params = compiler.as_sql()
        if list(params) != [self._PLACEHOLDER]:
            raise AssertionError(f"unexpected parameters for the token look-up: {params!r}")
        select, klass_info = compiler.select, compiler.klass_info
        self.converters = list(compiler.get_converters([column for column, _, _ in select]).items())
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [column.target.attname for column, _, _ in select[self.start : self.end]]
        self.populators = get_related_populators(klass_info, select, alias)

    def get(self, key: str) -> Token | None:
        connection = self.connection
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [key])
            row = cursor.fetchone()
        if row is None:
            return None
        row = converted(row, self.converters, connection)
        token = Token.from_db(self.alias, self.init_list, row[self.start : self.end])
        for populator in self.populators:
            populator.populate(row, token)
        return token


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's `Authorization: Token <key>` (the same answers), cheaper, and surviving a dropped
    connection.

    The look-up is `_TokenLookup`: one statement, as before. It is the first statement of an
    API request, sent outside any transaction, so it is also where a persistent connection
    that died since the last request (a database restart, an idle connection cut) is found:
    with `CONN_HEALTH_CHECKS` off there is no `SELECT 1` per request to find it earlier. Then
    the connection is closed and the look-up sent once more on a new one; a database still
    down answers 503 `service_unavailable` with Retry-After (`bookings_project.errors`).
    Nothing is cached: a deleted token or a deactivated user is refused on the next request.
    """

    def authenticate_credentials(self, key: str):
        connection = connections[router.db_for_read(Token)]
        lookup = getattr(connection, "bookings_token_lookup", None)
        if lookup is None:
            lookup = connection.bookings_token_lookup = _TokenLookup(connection)
        reused = connection.connection is not None  # Kept open since an earlier request.
        try:
            token = lookup.get(key)
        except (DatabaseError, InterfaceError):
            if not reused or connection.in_atomic_block or connection.is_usable():
                raise  # A new connection failing, or a live one; or one we may not replace.
            connection.close()
            token = lookup.get(key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token
