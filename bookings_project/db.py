"""Database helpers shared by every app's services."""

import contextlib
import datetime as dt
from collections.abc import Iterator

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.backends.signals import connection_created
from django.utils import timezone

# The database server's clock, in UTC. SQLite runs in this process, but reads the OS clock
# itself, not Python's.
_NOW_SQL = {
    "postgresql": "SELECT statement_timestamp()",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now() -> dt.datetime:
    """The database's clock: the one clock every host shares. Cleanup decides what is stale
    with it, so a host whose own clock runs ahead never expires a hold early."""
    with connection.cursor() as cursor:
        cursor.execute(_NOW_SQL[connection.vendor])
        (value,) = cursor.fetchone()
    if isinstance(value, str):  # SQLite's text, always UTC.
        value = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    return value


def host_clock_skew() -> dt.timedelta:
    """How far this host's clock is ahead of the database's (negative: behind), to within the
    round trip of one statement."""
    before = timezone.now()
    database = database_now()
    after = timezone.now()
    return before + (after - before) / 2 - database


@contextlib.contextmanager
def may_conflict() -> Iterator[None]:
    """Around one statement that may break a unique constraint (an INSERT that claims a key).

    Outside a transaction the statement commits on its own, and a conflict leaves nothing to
    undo: no BEGIN, no COMMIT, one statement. Inside one, a savepoint, so that the conflict
    leaves the transaction usable (PostgreSQL aborts it otherwise).
    """
    if connection.in_atomic_block:
        with transaction.atomic():
            yield
    else:
        yield


def bound_lock_wait() -> None:
    """Bound how long this connection waits for row locks: at most `LOCK_TIMEOUT_MS`.

    Call it first thing inside `transaction.atomic()`, before taking a lock. On PostgreSQL a
    wait past it raises `lock_not_available`, which the exception handler answers with 409
    `resource_busy` and `Retry-After`, never a hung request. The bound is the connection's
    own (set when it opens, see `_bound_new_connections`), so this sends a statement only when
    the setting has changed since (a test's override); SQLite serialises writers with BEGIN
    IMMEDIATE and its busy timeout instead.
    """
    if connection.vendor == "postgresql" and getattr(connection, "lock_timeout_ms", None) != settings.LOCK_TIMEOUT_MS:
        _set_lock_timeout(connection)


def _set_lock_timeout(wrapper) -> None:
    # Session-wide when it commits on its own: one statement per connection, not one per
    # transaction. Inside a transaction, for that transaction only: a rollback would undo a
    # session-wide setting too, and the connection would be remembered wrongly.
    in_transaction = wrapper.in_atomic_block
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, %s)", [f"{settings.LOCK_TIMEOUT_MS}ms", in_transaction])
    if not in_transaction:
        wrapper.lock_timeout_ms = settings.LOCK_TIMEOUT_MS


def _bound_new_connections(sender, connection, **kwargs) -> None:
    """Every PostgreSQL connection we open waits at most LOCK_TIMEOUT_MS for any lock."""
    if connection.vendor == "postgresql":
        _set_lock_timeout(connection)


connection_created.connect(_bound_new_connections, dispatch_uid="bookings_project.db.lock_timeout")


def is_lock_contention(error: OperationalError) -> bool:
    """A lock wait that ran out (PostgreSQL's lock_timeout or a deadlock, SQLite's busy
    timeout): a definite refusal, worth a retry, unlike a database that is down."""
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    # 55P03 lock_not_available (lock_timeout), 40P01 deadlock_detected.
    if sqlstate in ("55P03", "40P01"):
        return True
    return "database is locked" in str(error)
