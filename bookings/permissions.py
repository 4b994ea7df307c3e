from rest_framework import permissions
from rest_framework.request import Request


class IsPerson(permissions.BasePermission):
    """A signed-in user or staff member. The Flights service token is not a customer."""

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and not getattr(user, "is_service", False))
