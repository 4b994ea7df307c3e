import datetime as dt

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from bookings import audit
from bookings.models import Booking, BookingEvent, CleanupRun
from bookings.references import booking_id_of, reference_of
from bookings_project.admin import OPS_CSS, ReadOnlyAdmin, badge, csv_export, flight_link, user_link
from bookings_project.exceptions import DomainError
from payments.models import Payment
from workflows.cleanup import WORK_SETS, Cutoffs, cleanup_backlog
from workflows.monitoring import cleanup_overdue_after
from workflows.services import booking_cancel
from workflows.staff_selectors import booking_history, cancel_previews

Status = Booking.Status


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    fields = ["id", "status", "amount", "currency", "gateway_reference", "attempts", "created_at", "refunded_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class NeedsAttentionFilter(admin.SimpleListFilter):
    """What cleanup will act on, and outcomes only a person can settle (the cleanup page
    links here)."""

    title = "needs attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [work.attention for work in WORK_SETS if work.attention]

    def queryset(self, request, queryset):
        work = next((work for work in WORK_SETS if work.attention and work.attention[0] == self.value()), None)
        if work is None:
            return queryset
        return queryset.filter(pk__in=work.rows(Cutoffs.at(timezone.now())).values("pk"))


class CancelForm(forms.Form):
    reason = forms.CharField(
        max_length=audit.NOTE_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept on the booking's history with the cancel.",
    )


def is_overdue(booking: Booking, now: dt.datetime) -> bool:
    """Unpaid past its hold: cleanup should have expired it (or reconciled its payment)."""
    return booking.status in (Status.INITIATED, Status.PENDING) and booking.expires_at < now


@admin.register(Booking)
class BookingAdmin(ReadOnlyAdmin):
    """View-only (no Save): money, state and the saga's record change only through the
    services. Staff who may change bookings cancel them, from the list or the page, after a
    confirmation page that says what the cancel will give back."""

    list_display = [
        "id",
        "reference",
        "status_shown",
        "flight_shown",
        "user_shown",
        "seats",
        "cost_shown",
        "seats_state_shown",
        "created_at",
        "expires_at",
    ]
    list_filter = ["status", NeedsAttentionFilter, "seats_state", "flight_id", "cancel_reason"]
    search_fields = ["=id", "user__username"]
    search_help_text = "A booking id, reference (e.g. VPTX4Z) or username."
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    actions = ["cancel_selected", "export_csv"]
    inlines = [PaymentInline]
    # Several fields a line, so that the page shows its payments and history without scrolling far.
    fieldsets = [
        (
            None,
            {
                "fields": [
                    ("reference", "status_shown"),
                    ("user_shown", "flight_shown"),
                    ("seats", "total_cost", "currency"),
                    ("seats_state_shown", "flight_keeps_holds"),
                ]
            },
        ),
        (
            "Cancel and seats",
            {
                "fields": [
                    ("cancel_reason", "cancel_requested_at", "cancelled_at"),
                    ("seats_released_at", "flight_service_error"),
                ]
            },
        ),
        ("When", {"fields": [("created_at", "updated_at", "expires_at")]}),
    ]
    readonly_fields = [name for _, options in fieldsets for line in options["fields"] for name in line]

    class Media:
        css = OPS_CSS

    # Columns and fields ------------------------------------------------------------------------

    @admin.display(description="reference")
    def reference(self, booking: Booking) -> str:
        return booking.reference

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Booking], search_term: str):
        # A reference is no column (bookings.references): the one it stands for is found by id.
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        booking_id = booking_id_of(search_term.strip())
        if booking_id is not None:
            results |= queryset.filter(pk=booking_id)
        return results, may_have_duplicates

    @admin.display(description="status", ordering="status")
    def status_shown(self, booking: Booking):
        if is_overdue(booking, timezone.now()):
            return format_html(
                "{} {}",
                booking.get_status_display(),
                badge("overdue", "alert", title=f"Unpaid past its hold ({booking.expires_at:%Y-%m-%d %H:%M %Z})"),
            )
        return booking.get_status_display()

    @admin.display(description="flight id", ordering="flight_id")
    def flight_shown(self, booking: Booking):
        return flight_link(booking.flight_id)

    @admin.display(description="user", ordering="user__username")
    def user_shown(self, booking: Booking):
        return user_link(booking.user)

    @admin.display(description="total cost", ordering="total_cost")
    def cost_shown(self, booking: Booking) -> str:
        return f"{booking.total_cost} {booking.currency}"

    @admin.display(description="seats state", ordering="seats_state")
    def seats_state_shown(self, booking: Booking):
        if booking.seats_state == Booking.SeatsState.RECONCILE:
            return badge("reconcile", "alert", title="The seats' outcome is unknown: a person must look")
        if booking.release_owed:
            return badge("release owed", "warn", title="Cancelled, its seats not given back yet: cleanup retries")
        return booking.get_seats_state_display()

    # Permissions -------------------------------------------------------------------------------

    def has_cancel_permission(self, request: HttpRequest, obj=None) -> bool:
        """Cancelling is the one change staff make here: it needs the change permission, though
        the page itself offers nothing to save."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    # Pages -------------------------------------------------------------------------------------

    def get_urls(self):
        site = self.admin_site
        return [
            path("cleanup/", site.admin_view(self.cleanup_view), name="bookings_booking_cleanup"),
            path("<path:object_id>/cancel/", site.admin_view(self.cancel_view), name="bookings_booking_cancel"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        booking = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if booking is not None:
            extra_context["history"] = booking_history(booking_id=booking.pk)
            extra_context["can_cancel"] = booking.status != Status.CANCELLED and self.has_cancel_permission(request)
        return super().change_view(request, object_id, form_url, extra_context)

    def cleanup_view(self, request: HttpRequest) -> TemplateResponse:
        """What `cleanup_stale_bookings` would do now, and when it last ran: work waiting
        longer than two cron intervals, or no recent run, means cron has stopped."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        overdue_after = cleanup_overdue_after()  # /metrics and check_background's rule too.
        backlog = cleanup_backlog(now=now)
        runs = list(CleanupRun.objects.all()[:10])
        warnings = []
        if not runs:
            warnings.append(
                "cleanup_stale_bookings has never run: install its cron line (docs/operations.md#cleanup-from-cron)."
            )
        elif now - runs[0].finished_at > overdue_after:
            warnings.append(f"No cleanup run since {runs[0].started_at:%Y-%m-%d %H:%M:%S %Z}: is cron running it?")
        for item in backlog:
            if item.count and item.oldest and now - item.oldest > overdue_after:
                warnings.append(f"{item.label}: waiting since {item.oldest:%Y-%m-%d %H:%M:%S %Z}.")
        context = {
            **self.admin_site.each_context(request),
            "title": "Cleanup of stale bookings",
            "opts": self.model._meta,
            "backlog": backlog,
            "runs": runs,
            "last_run": runs[0] if runs else None,
            "warnings": warnings,
            "interval_minutes": settings.CLEANUP_INTERVAL_MINUTES,
        }
        return TemplateResponse(request, "admin/bookings/booking/cleanup.html", context)

    # Cancel --------------------------------------------------------------------------------

    @admin.action(description="Cancel selected bookings (refunding paid ones)…", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Booking]) -> HttpResponse | None:
        """The confirmation page first (as delete_selected's); its Confirm posts the action
        again, with the reason, and only then is anything cancelled."""
        return self._cancel(request, list(queryset.values_list("pk", flat=True)), single=False)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The booking page's Cancel button: the same confirmation, for that booking."""
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        booking = self.get_object(request, object_id)
        if booking is None:
            raise Http404(f"No booking {object_id}.")
        change_page = reverse("admin:bookings_booking_change", args=[booking.pk])
        return self._cancel(request, [booking.pk], single=True) or HttpResponseRedirect(change_page)

    def _cancel(self, request: HttpRequest, booking_ids: list[int], *, single: bool) -> TemplateResponse | None:
        form = CancelForm(request.POST if request.POST.get("confirm") == "yes" else None)
        if form.is_valid():
            self._cancel_confirmed(request, booking_ids, note=form.cleaned_data["reason"])
            return None
        previews = cancel_previews(booking_ids=booking_ids)
        back = (
            reverse("admin:bookings_booking_change", args=[booking_ids[0]])
            if single
            else reverse("admin:bookings_booking_changelist")
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Cancel booking" if single else "Cancel bookings",
            "opts": self.opts,
            "media": self.media + form.media,
            "previews": previews,
            "to_cancel": [p for p in previews if not p.nothing_to_do and not p.refusal],
            "form": form,
            "single": single,
            "back_url": back,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/bookings/booking/cancel_confirmation.html", context)

    def _cancel_confirmed(self, request: HttpRequest, booking_ids: list[int], *, note: str) -> None:
        cancelled = seats = already = 0
        refunded: list[str] = []
        refused: list[str] = []
        for booking_id in sorted(booking_ids):
            try:
                with audit.noting(note):
                    result = booking_cancel(booking_id=booking_id, reason=Booking.CancelReason.STAFF)
            except DomainError as error:
                refused.append(f"{booking_id}: {error.detail}")
                continue
            cancelled += result.cancelled_now
            already += not result.cancelled_now
            seats += result.seats_released
            refunded += [
                f"refunded {payment.amount} {payment.currency} for booking {booking_id} (payment {payment.pk})"
                for payment in result.refunds
            ]
        parts = [f"Cancelled {cancelled} booking(s)", f"released {seats} seat(s)", *refunded]
        if already:
            parts.append(f"{already} already cancelled")
        self.message_user(request, "; ".join(parts) + ".", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not cancelled: " + "; ".join(refused), messages.WARNING)

    # Export --------------------------------------------------------------------------------

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Booking]) -> HttpResponse:
        # Header: field. The reference, derived from the id, goes after it.
        columns = {
            "id": "id",
            "user": "user__username",
            "flight id": "flight_id",
            "seats": "seats",
            "total cost": "total_cost",
            "currency": "currency",
            "status": "status",
            "cancel reason": "cancel_reason",
            "created": "created_at",
            "expires": "expires_at",
            "cancelled": "cancelled_at",
        }
        header = ["id", "reference", *list(columns)[1:]]
        rows = (
            (pk, reference_of(pk), *rest)
            for pk, *rest in queryset.order_by("pk").values_list(*columns.values()).iterator(chunk_size=2000)
        )
        return csv_export(name="bookings", header=header, rows=rows)


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    """Written by `cleanup_stale_bookings` only."""

    list_display = ["started_at", "finished_at", "host", "failed_shown", "counts"]
    list_filter = ["host"]
    search_fields = ["=run_id"]
    date_hierarchy = "started_at"
    fields = ["started_at", "finished_at", "host", "run_id", "counts", "failed_shown", "failures_shown"]
    readonly_fields = fields

    class Media:
        css = OPS_CSS

    @admin.display(description="failed", ordering="failed")
    def failed_shown(self, run: CleanupRun):
        return badge(f"{run.failed} failed", "alert") if run.failed else "0"

    @admin.display(description="what failed")
    def failures_shown(self, run: CleanupRun):
        if not run.failures:
            return "—"
        lines = format_html_join("", "<li>{}</li>", ((line,) for line in run.failures))
        more = f" (the first {len(run.failures)} of {run.failed})" if run.failed > len(run.failures) else ""
        return format_html('<ul class="ops-failures">{}</ul>{}', lines, more)


@admin.register(BookingEvent)
class BookingEventAdmin(ReadOnlyAdmin):
    """The audit trail across bookings: find what one request (or cleanup run) changed."""

    list_display = [
        "created_at",
        "booking",
        "from_status",
        "to_status",
        "reason",
        "actor",
        "actor_user",
        "request_id",
        "note",
    ]
    list_filter = ["actor", "reason", "to_status"]
    search_fields = ["=booking__id", "=request_id", "actor_user__username"]
    list_select_related = ["booking", "actor_user"]
    date_hierarchy = "created_at"
