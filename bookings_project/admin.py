"""Admin pieces shared by the apps: read-only pages, links between them, badges, CSV export."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Sequence

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

# Badges and highlights (bookings/static/bookings/admin.css), on every page that shows them.
OPS_CSS = {"all": ["bookings/admin.css"]}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that change only through the services (money, cleanup runs), never by hand:
    their pages are view-only, with no Save button."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def flight_url(flight_id: int) -> str:
    # Booking.flight_id is a plain id (the Flights context may be another service), so the
    # link is built from it, not from a relation.
    return reverse("admin:flights_flight_change", args=[flight_id])


def flight_link(flight_id: int | None, text: object = None) -> SafeString | str:
    if flight_id is None:
        return "—"
    return format_html('<a href="{}">{}</a>', flight_url(flight_id), flight_id if text is None else text)


def user_link(user) -> SafeString | str:
    if user is None:
        return "—"
    opts = get_user_model()._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[user.pk])
    return format_html('<a href="{}">{}</a>', url, user.get_username())


def change_link(obj, text: object = None) -> SafeString | str:
    """A link to `obj`'s admin page."""
    if obj is None:
        return "—"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, obj if text is None else text)


def badge(text: object, tone: str, *, title: str = "") -> SafeString:
    """A coloured label: tone `alert` (red: act now), `warn` (orange: look) or `ok`."""
    return format_html('<span class="ops-badge ops-badge-{}" title="{}">{}</span>', tone, title, text)


# CSV export ------------------------------------------------------------------------------------

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): such a
# cell gets a leading apostrophe, which it shows as text. Tab and CR start formulas in some too.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file that hands back what is written to it: csv.writer makes one line at a time,
    streamed as it is made, so an export of any size needs no memory for the whole file."""

    def write(self, value: str) -> str:
        return value


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        text = timezone.localtime(value).isoformat() if timezone.is_aware(value) else value.isoformat()
    else:
        text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def csv_export(*, name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> StreamingHttpResponse:
    """`rows` (read lazily, e.g. from a queryset's `.iterator()`) as a CSV attachment named
    `<name>-<today>.csv`, its first line the header."""
    writer = csv.writer(_Echo())
    lines = (writer.writerow([csv_cell(value) for value in row]) for row in _with_header(header, rows))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{timezone.localdate():%Y-%m-%d}.csv"'
    return response


def _with_header(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterable[Sequence[object]]:
    yield header
    yield from rows
