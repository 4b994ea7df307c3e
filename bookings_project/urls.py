from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from bookings.apis import BookingViewSet
from bookings_project import errors, health
from bookings_project.auth import TokenView
from flights.apis import FlightViewSet
from notifications.apis import WebhookEndpointViewSet
from payments.apis import PaymentViewSet, StripeWebhookView
from workflows.apis import metrics_view

router = SimpleRouter(trailing_slash=False)
router.register("flights", FlightViewSet, basename="flight")
router.register("bookings", BookingViewSet, basename="booking")
router.register("payments", PaymentViewSet, basename="payment")
router.register("webhooks", WebhookEndpointViewSet, basename="webhook")

api_v1 = [
    path("auth/token", TokenView.as_view(), name="auth-token"),
    path("payments/stripe/webhook", StripeWebhookView.as_view(), name="stripe-webhook"),
    *router.urls,
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # The seed served its docs here; keep old bookmarks working.
    path("api-docs", RedirectView.as_view(pattern_name="swagger-ui", permanent=True)),
    re_path(r"^api-docs/$", RedirectView.as_view(pattern_name="swagger-ui", permanent=True)),
    path("admin/", admin.site.urls),
    # Anything else under /api/ is a problem+json 404, whatever DEBUG says.
    re_path(r"^api/", errors.api_not_found),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500
