"""/api/v1/auth/token: POST trades a username and password for an API token, DELETE revokes
the caller's token."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bookings_project.authentication import TokenAuthentication
from bookings_project.exceptions import InvalidCredentials
from bookings_project.fields import StrictCharField
from bookings_project.openapi import problem_responses
from bookings_project.throttling import TokenThrottle


class TokenRequestSerializer(serializers.Serializer):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class TokenView(APIView):
    """POST needs no credentials (a stale token in the header must not stop a login); DELETE
    needs the token it revokes, or a session. Token first: a 401 then asks for `Token`. Both
    count towards the per-address token limit."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenThrottle]
    revoke_authentication_classes = [TokenAuthentication, SessionAuthentication]

    def _revoking(self) -> bool:
        # DRF asks for the authenticators before it wraps the request: self.request is then
        # Django's (set by as_view), or the schema generator's mock of the method it
        # documents, or None while the generator builds that mock.
        return getattr(self.request, "method", None) == "DELETE"

    def get_authenticators(self) -> list[BaseAuthentication]:
        if self._revoking():
            return [auth() for auth in self.revoke_authentication_classes]
        return super().get_authenticators()

    def get_permissions(self) -> list[BasePermission]:
        return [IsAuthenticated()] if self._revoking() else super().get_permissions()

    @extend_schema(
        operation_id="createToken",
        summary="Get an API token",
        description="Send it back as `Authorization: Token <token>` on every other call.",
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, **problem_responses(400, 401, 415)},
        examples=[
            OpenApiExample("Demo user", value={"username": "demo", "password": "demo-password"}, request_only=True)
        ],
        auth=[],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None or not user.is_active:
            raise InvalidCredentials()
        # get_or_create survives two logins racing for the same user's first token.
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

    @extend_schema(
        operation_id="revokeToken",
        summary="Revoke your API token",
        description=(
            "The token stops working at once (401 from then on); the next `POST` issues a new "
            "one. With session authentication it revokes the signed-in user's token."
        ),
        request=None,
        responses={204: None, **problem_responses(401)},
    )
    def delete(self, request: Request) -> Response:
        # A user has one token (DRF's model), whichever way they authenticated here; deleting
        # none (a session user who never had one) is the same answer.
        Token.objects.filter(user=request.user).delete()
        return Response(status=204)
