from django.apps import AppConfig


class FlightsConfig(AppConfig):
    name = "flights"
    verbose_name = "Flights inventory"

    def ready(self) -> None:
        # Connects the lock-wait bound to every new database connection.
        import bookings_project.db  # noqa: F401
