"""201 answers carry `Location`, the created resource's URL, and so does a payment's 202
(docs/api.md#created-resources)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response


def location_header(*statuses: int) -> OpenApiParameter:
    """The `Location` response header of these statuses, for the schema."""
    return OpenApiParameter(
        "Location",
        OpenApiTypes.URI,
        OpenApiParameter.HEADER,
        response=list(statuses),
        description="The created resource's URL.",
    )


LOCATION_HEADER = location_header(201)


def location_of(request: Request, view_name: str, pk: int) -> str:
    """The absolute URL of the resource `view_name` (a router's `<basename>-detail`) with this id."""
    return request.build_absolute_uri(reverse(view_name, args=[pk]))


def created(request: Request, body: Any, *, view_name: str, pk: int) -> Response:
    return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location_of(request, view_name, pk)})
