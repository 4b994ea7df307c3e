from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from bookings.outbox import events_committed
        from notifications import tasks

        # The outbox's committed events are turned into deliveries by the worker.
        events_committed.connect(tasks.enqueue_dispatch, dispatch_uid="notifications.enqueue_dispatch")
