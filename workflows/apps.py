from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """The use cases that need both bookings and payments (no models of its own)."""

    name = "workflows"
