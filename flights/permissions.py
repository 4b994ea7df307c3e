from rest_framework import permissions
from rest_framework.request import Request


class IsStaffOrServiceForWrites(permissions.BasePermission):
    """Reads: any authenticated caller. Writes: staff, or a service presenting its token."""

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(user.is_staff or getattr(user, "is_service", False))


class IsStaffForWrites(permissions.BasePermission):
    """Reads: any authenticated caller. Writes: staff only."""

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or bool(user.is_staff)
