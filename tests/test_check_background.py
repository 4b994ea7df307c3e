"""`manage.py check_background`: cleanup ran on this host within two intervals and a worker on
it beat within three heartbeats, or exit status 1 saying which did not (2: no database)."""

from __future__ import annotations

import datetime as dt
import socket
from io import StringIO

from django.core.management import CommandError, call_command
from django.db import OperationalError

from bookings.models import CleanupRun
from notifications.services import worker_heartbeat_beat

HOST = socket.gethostname()
# The settings' defaults: cron every 10 minutes, a beat every 15 s.
TWO_INTERVALS = dt.timedelta(minutes=20)
THREE_BEATS = dt.timedelta(seconds=45)
SECOND = dt.timedelta(seconds=1)


def ran(at: dt.datetime, host: str = HOST, failed: int = 0) -> None:
    CleanupRun.objects.create(started_at=at - SECOND, finished_at=at, host=host, counts={}, failed=failed)


def beat(at: dt.datetime, clock, host: str = HOST, worker_id: str = "w1") -> None:
    now = clock.now
    clock.now = at
    worker_heartbeat_beat(worker_id=worker_id, host=host, pid=1, started_at=at)
    clock.now = now


def check(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("check_background", *args, stdout=out)
    except CommandError as error:
        return error.returncode, str(error)
    return 0, out.getvalue()


def test_both_alive_just_within_their_bounds(db, clock):
    ran(clock.now - TWO_INTERVALS, failed=2)  # A run with failed steps still ran.
    beat(clock.now - THREE_BEATS, clock)

    status, said = check()
    assert status == 0, said
    assert said.startswith("ok: cleanup last finished")


def test_cleanup_overdue(db, clock):
    ran(clock.now - TWO_INTERVALS - SECOND)
    beat(clock.now, clock)

    status, said = check()
    assert status == 1
    assert f"cleanup has not run on {HOST} for 20 minutes" in said
    assert "worker" not in said


def test_worker_missing(db, clock):
    ran(clock.now)
    beat(clock.now - THREE_BEATS - SECOND, clock)

    status, said = check()
    assert status == 1
    assert f"no worker on {HOST} has written a heartbeat for 45 s" in said
    assert "cleanup" not in said


def test_neither_ever(db, clock):
    status, said = check()
    assert status == 1
    assert "(last finished: never)" in said and "(last: never)" in said


def test_another_hosts_count_only_with_any_host(db, clock):
    ran(clock.now, host="app-2")
    beat(clock.now, clock, host="app-2")

    assert check()[0] == 1
    assert check("--any-host")[0] == 0


def test_a_worker_that_stopped_is_not_alive(db, clock):
    from notifications.services import worker_heartbeat_end

    ran(clock.now)
    beat(clock.now, clock)
    worker_heartbeat_end(worker_id="w1")

    assert check()[0] == 1


def test_no_database_is_status_2(db, monkeypatch):
    from workflows.management.commands import check_background

    def down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(check_background, "background_status", down)
    status, said = check()
    assert status == 2
    assert "the database does not answer" in said


def test_a_new_worker_clears_the_rows_its_hosts_killed_workers_left(db, clock):
    from notifications.models import WorkerHeartbeat

    beat(clock.now - THREE_BEATS - SECOND, clock, worker_id="killed")
    beat(clock.now - THREE_BEATS - SECOND, clock, host="app-2", worker_id="elsewhere")
    beat(clock.now - SECOND, clock, worker_id="alive")
    beat(clock.now, clock, worker_id="new")

    assert set(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == {"elsewhere", "alive", "new"}
