"""The project's WSGI application with the notifications' receiver of committed outbox events
disconnected, for `bench/load.py --no-enqueue` only: every change still writes its outbox
event in its transaction, and no task is queued after the commit. So the bench can tell the
outbox INSERT's cost from the task INSERT's. Never for serving."""

from bookings_project.wsgi import application  # Sets Django up, so it comes first.


def _disconnect_enqueue() -> None:
    from bookings.outbox import events_committed

    if not events_committed.disconnect(dispatch_uid="notifications.enqueue_dispatch"):
        raise RuntimeError("the notifications' enqueue receiver was not connected: nothing to measure")


_disconnect_enqueue()

__all__ = ["application"]
