"""Database helpers shared by every app's services."""

from django.conf import settings
from django.db import OperationalError, connection


def bound_lock_wait() -> None:
    """Bound how long the current transaction waits for row locks.

    Call it first thing inside `transaction.atomic()`, before `select_for_update()`. On
    PostgreSQL a wait past `LOCK_TIMEOUT_MS` raises `lock_not_available`, which the
    exception handler answers with 409 `resource_busy` and `Retry-After`, never a hung
    request. SQLite serialises writers with BEGIN IMMEDIATE and its busy timeout instead.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # SET LOCAL ends with the transaction, so pooled connections are unaffected.
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{settings.LOCK_TIMEOUT_MS}ms"])


def is_lock_contention(error: OperationalError) -> bool:
    """A lock wait that ran out (PostgreSQL's lock_timeout or a deadlock, SQLite's busy
    timeout): a definite refusal, worth a retry, unlike a database that is down."""
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    # 55P03 lock_not_available (lock_timeout), 40P01 deadlock_detected.
    if sqlstate in ("55P03", "40P01"):
        return True
    return "database is locked" in str(error)
