from drf_spectacular.utils import OpenApiParameter
from rest_framework import pagination
from rest_framework.exceptions import ValidationError

from bookings_project.query import filter_names, refuse_unknown_parameters, single_value


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&pageSize=M` (camelCase, like every other name in the API); at most 100 a page.

    Unlike DRF's default, a bad `page` or `pageSize` (not a positive integer, empty, or given
    twice) is a 400 rather than silently ignored, and so is a parameter the list does not
    know; a page past the end is a 404.
    """

    page_size_query_param = "pageSize"
    max_page_size = 100

    def paginate_queryset(self, queryset, request, view=None):
        # Every list is paginated, so this is where each refuses what it does not know.
        known = {self.page_query_param, self.page_size_query_param, *filter_names(view)}
        refuse_unknown_parameters(request.query_params, known)
        return super().paginate_queryset(queryset, request, view)

    def get_page_number(self, request, paginator):
        raw = single_value(request.query_params, self.page_query_param)
        if raw is None:
            return 1
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError({self.page_query_param: "A page number from 1."})
        return raw

    def get_page_size(self, request):
        raw = single_value(request.query_params, self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: f"An integer from 1 to {self.max_page_size}."})
        return int(raw)

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.page_query_param,
                "required": False,
                "in": "query",
                "description": "Page number, from 1. A page past the end is 404.",
                "schema": {"type": "integer", "minimum": 1},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Results per page (default {self.page_size}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size},
            },
        ]


def page_parameters() -> list[OpenApiParameter]:
    """`page` and `pageSize`, for a paginated action that drf-spectacular does not see as a list."""
    return [
        OpenApiParameter(item["name"], item["schema"], OpenApiParameter.QUERY, description=item["description"])
        for item in PageNumberPagination().get_schema_operation_parameters(view=None)
    ]
