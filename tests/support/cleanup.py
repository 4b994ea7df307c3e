"""Running cleanup as cron does, and what a run is expected to count (spelled out here, not
computed with `workflows.cleanup`: the tests check its summary line against these)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

COUNTS = (
    "expired",
    "released_seats",
    "retried_releases",
    "reconciled_booked",
    "refunded",
    "purged_keys",
    "requeued_notifications",
    "purged_notifications",
    "failed",
)


def counts(**nonzero: int) -> dict:
    """The full counts of a run: the ones named, every other one 0."""
    assert set(nonzero) <= set(COUNTS), set(nonzero) - set(COUNTS)
    return {name: nonzero.get(name, 0) for name in COUNTS}


def summary(**nonzero: int) -> str:
    """The summary line with these counts, every other count 0."""
    return " ".join(f"{name}={count}" for name, count in counts(**nonzero).items())


def command(*args: str) -> str:
    out = StringIO()
    call_command("cleanup_stale_bookings", *args, stdout=out)
    return out.getvalue()


def command_failing(*args: str, failed: int = 1) -> str:
    out = StringIO()
    with pytest.raises(CommandError, match=rf"^{failed} step\(s\) failed"):
        call_command("cleanup_stale_bookings", *args, stdout=out)
    return out.getvalue()
