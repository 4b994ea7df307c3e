from collections.abc import Iterator

import pytest
from django.core.management import call_command

from notifications import sender, services
from notifications.models import WebhookEndpoint
from tests.support.receiver import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def register(url: str, events: list[str] | None = None) -> WebhookEndpoint:
    return services.endpoint_create(url=url, events=events, created_by=None)


def run_worker() -> None:
    """The real worker (`db_worker`), in this process: every task that is due, then until its
    sending threads (if any) are done."""
    call_command("db_worker", "--batch", "--no-startup-delay", "--interval", "0", verbosity=0)
    sender.lanes.wait_idle()
