"""POST /api/v1/auth/token: trade a username and password for an API token."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

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
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenThrottle]

    @extend_schema(
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
