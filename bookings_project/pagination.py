from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&pageSize=M` (camelCase, like every other name in the API); at most 100 a page."""

    page_size_query_param = "pageSize"
    max_page_size = 100
