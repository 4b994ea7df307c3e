"""Query filters for the payments list: `?bookingId=&status=`."""

import django_filters

from bookings_project.openapi import MAX_ID
from bookings_project.query import IntegerFilter, StrictFilterSet
from payments.models import Payment


class PaymentFilter(StrictFilterSet):
    bookingId = IntegerFilter(
        field_name="booking_id", min_value=1, max_value=MAX_ID, help_text="Only this booking's payments."
    )
    status = django_filters.ChoiceFilter(choices=Payment.Status.choices, help_text="Only payments in this status.")

    class Meta:
        model = Payment
        fields = ["bookingId", "status"]
