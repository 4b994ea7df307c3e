"""Load demo flights and two demo users. Safe to run again: nothing is duplicated."""

import datetime as dt
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from flights import services
from flights.models import Flight

DEMO_FLIGHTS = [
    # flight number, from, to, days ahead, departure hour, minutes aloft, price, capacity
    ("UK808", "BOM", "DEL", 30, 10, 130, "5500.00", 120),
    ("AI101", "DEL", "BOM", 31, 7, 125, "6200.00", 150),
    ("6E202", "BLR", "HYD", 32, 18, 75, "3100.00", 180),
    ("UK955", "DEL", "CCU", 33, 9, 140, "4800.00", 8),
]

DEMO_USERS = [
    # username, password, staff
    ("demo", "demo-password", False),
    ("staff", "staff-password", True),
]


class Command(BaseCommand):
    help = "Create demo flights and the users `demo` and `staff` (idempotent); print their tokens."

    def handle(self, *args, **options) -> None:
        with transaction.atomic():
            self._flights()
            users = self._users()
        for user, password, token in users:
            role = "staff (admin)" if user.is_staff else "customer"
            self.stdout.write(f"{role:14} username={user.username} password={password} token={token}")

    def _flights(self) -> None:
        today = timezone.now().replace(minute=0, second=0, microsecond=0)
        for number, origin, destination, days, hour, minutes, price, capacity in DEMO_FLIGHTS:
            if Flight.objects.filter(flight_number=number).exists():
                continue
            departure = (today + dt.timedelta(days=days)).replace(hour=hour)
            services.flight_create(
                flight_number=number,
                departure_airport=origin,
                arrival_airport=destination,
                departure_time=departure,
                arrival_time=departure + dt.timedelta(minutes=minutes),
                price=Decimal(price),
                capacity=capacity,
            )
        self.stdout.write(f"flights: {Flight.objects.count()} in the inventory")

    def _users(self) -> list:
        created = []
        for username, password, staff in DEMO_USERS:
            user, _ = get_user_model().objects.get_or_create(username=username)
            # Reset every run so that the printed password is always the true one.
            user.set_password(password)
            user.is_staff = user.is_superuser = staff
            # Confirmations and cancellations are e-mailed to it (the console, in development).
            user.email = user.email or f"{username}@example.com"
            user.save()
            token, _ = Token.objects.get_or_create(user=user)
            created.append((user, password, token.key))
        return created
