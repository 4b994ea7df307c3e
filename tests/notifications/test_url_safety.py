"""The SSRF guard at each delivery (docs/design.md#notifications, URL safety): the address the
worker connects to is checked when it connects, so a host whose DNS changed after it was
registered, or a registration made while insecure URLs were allowed, reaches nothing private."""

import socket

import pytest

from bookings.services import booking_create
from notifications.models import Delivery, DeliveryAttempt
from notifications.urlsafety import UnsafeURL, check_url
from tests.notifications.conftest import register, run_worker

pytestmark = pytest.mark.django_db(transaction=True)

real_getaddrinfo = socket.getaddrinfo


def resolving(answers: dict[str, str]):
    """getaddrinfo as a DNS server would answer for these names (others as usual)."""

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return real_getaddrinfo(answers[host], port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    return getaddrinfo


def test_a_host_that_resolves_to_loopback_at_delivery_is_not_called(user, flight, receiver, settings, monkeypatch):
    """Registered when its name resolved to a public address; by delivery it points at us."""
    settings.WEBHOOK_ALLOW_INSECURE = False
    port = receiver.url.split(":")[2].split("/")[0]
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"hooks.example.test": "93.184.215.14"}))
    url = f"https://hooks.example.test:{port}/hook"
    check_url(url)  # Public at registration.
    register(url)
    monkeypatch.setattr(socket, "getaddrinfo", resolving({"hooks.example.test": "127.0.0.1"}))

    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    assert receiver.received == []
    attempt = DeliveryAttempt.objects.get()
    assert not attempt.succeeded
    assert "resolves to 127.0.0.1, which is not a public address" in attempt.error
    assert Delivery.objects.get().state == Delivery.State.PENDING  # Retried: DNS may be fixed.


def test_an_endpoint_registered_while_insecure_urls_were_allowed_is_refused_once_they_are_not(
    user, flight, receiver, settings
):
    register(receiver.url)  # http://127.0.0.1:port, allowed in development.
    settings.WEBHOOK_ALLOW_INSECURE = False

    booking_create(user=user, flight_id=flight.pk, seats=1)
    run_worker()

    assert receiver.received == []
    assert "127.0.0.1, which is not a public address" in DeliveryAttempt.objects.get().error


def test_a_name_with_one_private_address_among_public_ones_is_refused(monkeypatch, settings):
    settings.WEBHOOK_ALLOW_INSECURE = False

    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(UnsafeURL, match=r"10\.0\.0\.7"):
        check_url("https://mixed.example.test/hook")


def test_a_name_that_does_not_resolve_is_refused(settings):
    settings.WEBHOOK_ALLOW_INSECURE = False
    with pytest.raises(UnsafeURL, match="does not resolve"):
        check_url("https://no-such-host.invalid/hook")
