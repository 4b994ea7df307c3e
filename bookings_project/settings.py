"""Settings, read from the environment (django-environ). `.env.example` names every key.

`DJANGO_ENV=production` switches on the production guards: the process refuses to start
with DEBUG on or without a real SECRET_KEY, and the HTTPS hardening is on by default, so
that `manage.py check --deploy` is clean.
"""

import datetime as dt
import logging
import os
import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
PRODUCTION = DJANGO_ENV == "production"

INSECURE_DEFAULT_SECRET_KEY = "django-insecure-development-only-never-use-in-production"
# Empty counts as unset, so that a copied .env.example starts.
SECRET_KEY = env.str("SECRET_KEY", default="") or INSECURE_DEFAULT_SECRET_KEY
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off when DJANGO_ENV=production.")
    if SECRET_KEY == INSECURE_DEFAULT_SECRET_KEY or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured(
            "Set SECRET_KEY to a random value of at least 50 characters when DJANGO_ENV=production."
        )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles, so that `runserver` also serves static files through WhiteNoise.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "axes",
    "corsheaders",
    "flights",
    "bookings",
    "payments",
    # Before django_tasks_db: its `db_worker` command is ours, with a heartbeat.
    "notifications",
    "django_tasks",
    "django_tasks_db",
    "workflows",
]

MIDDLEWARE = [
    # First, as it never answers by itself: every answer, a preflight's too, is logged and
    # carries the request id.
    "bookings_project.request_id.RequestIdMiddleware",
    # As high as django-cors-headers asks, above everything that may answer by itself: a
    # preflight is answered here (with no token, as browsers send it), and the guard's,
    # CommonMiddleware's and WhiteNoise's answers carry the CORS headers too.
    "corsheaders.middleware.CorsMiddleware",
    "bookings_project.request_guard.RequestGuardMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out admin login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "bookings_project.urls"
WSGI_APPLICATION = "bookings_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# Database -----------------------------------------------------------------------------
# The default is a SQLite file (zero set-up); production is PostgreSQL via DATABASE_URL.
# An empty DATABASE_URL counts as unset (django-environ would fail on it).
SQLITE_OPTIONS = {
    # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock on a
    # lock upgrade; the timeout bounds how long a writer waits for it.
    "transaction_mode": "IMMEDIATE",
    "timeout": env.int("SQLITE_BUSY_TIMEOUT_SECONDS", default=20),
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
DATABASE_URL = env.str("DATABASE_URL", default="").strip()
if DATABASE_URL:
    default_db = env.db_url_config(DATABASE_URL)
else:
    default_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE_DIR / "db.sqlite3")}
if default_db["ENGINE"] == "django.db.backends.sqlite3":
    default_db["OPTIONS"] = {**SQLITE_OPTIONS, **default_db.get("OPTIONS", {})}
else:
    default_db.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    # No health check (a SELECT 1 round trip per request; docs/performance.md#per-request-
    # overhead): a connection that died between requests is found by the first statement of
    # the next one; the token look-up then reconnects (bookings_project/authentication.py),
    # anything else answers 503 with Retry-After once and the connection is replaced after it.
    default_db["CONN_HEALTH_CHECKS"] = False
    # Server-side binding: parameters travel apart from the SQL, so psycopg does not quote
    # them into its text in Python; and a statement sent five times on a connection is
    # prepared (Django's default is never): PostgreSQL parses it once and plans it once
    # where a generic plan is as good. Together a third of PostgreSQL's CPU per flow. Behind
    # PgBouncer in transaction mode that needs PgBouncer 1.21+ with max_prepared_statements.
    default_db.setdefault("OPTIONS", {}).setdefault("server_side_binding", True)
    default_db["OPTIONS"].setdefault("prepare_threshold", 5)
# Never ATOMIC_REQUESTS: it would wrap outbound calls in the request's transaction.
default_db["ATOMIC_REQUESTS"] = False
DATABASES = {"default": default_db}

# How long a transaction waits for a row lock before giving up (PostgreSQL lock_timeout).
LOCK_TIMEOUT_MS = env.int("LOCK_TIMEOUT_MS", default=3000)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# Auth ---------------------------------------------------------------------------------
# Admin login lockout (django-axes): after ADMIN_LOGIN_FAILURE_LIMIT wrong passwords for one
# username from one client address, that pair is refused (429, before any password is
# checked) until ADMIN_LOGIN_COOLOFF_MINUTES after its last failure. Never for good: a lockout
# ends by itself, and only that address is locked, so nobody can lock a staff member out of
# their own. The API's token endpoint has its own limit (THROTTLE_RATE_TOKEN), not this one.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_ONLY_ADMIN_SITE = True
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.int("ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The client's address as the rate limits read it (NUM_PROXIES), not the proxy's.
AXES_CLIENT_IP_CALLABLE = "bookings_project.throttling.client_ip"
if AXES_FAILURE_LIMIT < 1 or dt.timedelta(0) >= AXES_COOLOFF_TIME:
    raise ImproperlyConfigured("ADMIN_LOGIN_FAILURE_LIMIT and ADMIN_LOGIN_COOLOFF_MINUTES must be at least 1.")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True


# Static files (WhiteNoise serves them; `collectstatic` fills STATIC_ROOT) -------------------
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}


# Serving (gunicorn.conf.py, `make serve`) ------------------------------------------------
# Per host: GUNICORN_WORKERS processes of GUNICORN_THREADS threads each; every thread keeps
# its own database connection (CONN_MAX_AGE), so a host holds up to workers x threads of them.
_CORES = os.cpu_count() or 1
GUNICORN_WORKERS = env.int("GUNICORN_WORKERS", default=2 * _CORES + 1)
GUNICORN_THREADS = env.int("GUNICORN_THREADS", default=4)
GUNICORN_TIMEOUT = env.int("GUNICORN_TIMEOUT", default=60)
# Idle keep-alive connections a worker keeps beyond its threads. 0 behind nginx, which opens a
# connection per request: a worker then takes only what its threads can serve, and the rest
# wait in the listen backlog for whichever worker frees up first. Raise it where one pooled
# client calls gunicorn directly (our Flights service behind the HTTP adapter), so that its
# connections are reused instead of made for every request.
GUNICORN_KEEPALIVE_CONNECTIONS = env.int("GUNICORN_KEEPALIVE_CONNECTIONS", default=0)
if GUNICORN_WORKERS < 1 or GUNICORN_THREADS < 1 or GUNICORN_TIMEOUT < 1:
    raise ImproperlyConfigured("GUNICORN_WORKERS, GUNICORN_THREADS and GUNICORN_TIMEOUT must be at least 1.")
if GUNICORN_KEEPALIVE_CONNECTIONS < 0:
    raise ImproperlyConfigured("GUNICORN_KEEPALIVE_CONNECTIONS cannot be negative.")


# Cache: where the rate limits are counted. The default counts per process, so with several
# processes (or hosts) each allows the full rate; production must share one: Redis, or a
# `dbcache://` table made by `manage.py createcachetable` (refused otherwise, below).
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
SHARED_CACHE_BACKENDS = ("django.core.cache.backends.redis.RedisCache", "django.core.cache.backends.db.DatabaseCache")
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # A cache that is down or unreachable answers within this bound (rate limits then let
    # requests through: bookings_project/throttling.py), never hangs a request.
    CACHES["default"].setdefault("OPTIONS", {})
    CACHES["default"]["OPTIONS"].setdefault("socket_connect_timeout", 0.25)
    CACHES["default"]["OPTIONS"].setdefault("socket_timeout", 0.25)

# Rate limits (DRF throttles, `bookings_project/throttling.py`): "N/s|min|hour|day", empty =
# no limit. Past one, a request gets 429 `throttled` with Retry-After.
THROTTLE_RATES = {
    # POST /auth/token, per client IP.
    "token": env.str("THROTTLE_RATE_TOKEN", default="10/min"),
    # Every bookings endpoint, per user.
    "bookings": env.str("THROTTLE_RATE_BOOKINGS", default="120/min"),
    # Every payments endpoint, per user.
    "payments": env.str("THROTTLE_RATE_PAYMENTS", default="30/min"),
}
for _scope, _rate in THROTTLE_RATES.items():
    if _rate and not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", _rate):
        raise ImproperlyConfigured(
            f"THROTTLE_RATE_{_scope.upper()} must look like 10/min (or be empty), not {_rate!r}."
        )
if PRODUCTION and any(THROTTLE_RATES.values()) and CACHES["default"]["BACKEND"] not in SHARED_CACHE_BACKENDS:
    raise ImproperlyConfigured(
        "Set CACHE_URL to a shared cache (redis://host:6379/0) when DJANGO_ENV=production: rate limits "
        "count in it, and a per-process cache lets every worker and host count apart."
    )
# How many proxies in front of us append to X-Forwarded-For: the client IP for the token
# limit is taken that far from its end. 0 (the default) uses the socket's address, so that a
# client cannot pick its own IP with a forged header.
NUM_PROXIES = env.int("NUM_PROXIES", default=0)


# Security -----------------------------------------------------------------------------
# The largest body taken (Django's default, 2.5 MiB); a larger one is 413 payload_too_large.
# deploy/nginx.conf's client_max_body_size is the same number.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=PRODUCTION) else None
)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
# Load balancers probe over plain HTTP. The API is not redirected but refused over plain HTTP
# (bookings_project/request_guard.py).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^api/v\d+/"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "bookings_project.errors.csrf_failure"


# CORS (django-cors-headers, docs/api.md#cors) -------------------------------------------------
# Origins (scheme://host[:port]) whose browser pages may call the API. Empty, the default: none.
CORS_ALLOWED_ORIGINS = [origin.strip() for origin in env.list("CORS_ALLOWED_ORIGINS", default=[]) if origin.strip()]
for _origin in CORS_ALLOWED_ORIGINS:
    if not re.fullmatch(r"https?://[^/\s?#*]+", _origin):
        raise ImproperlyConfigured(
            f"CORS_ALLOWED_ORIGINS lists origins like https://app.example.com (no path, no *), not {_origin!r}."
        )
# The API only: the admin and its session cookie are never for other origins.
CORS_URLS_REGEX = r"^/api/"
# No cookies: clients authenticate with `Authorization: Token`, so a page from an allowed
# origin cannot act with a signed-in staff member's session.
CORS_ALLOW_CREDENTIALS = False
# What our clients send (request ids: bookings_project/request_id.py; keys: payments/apis.py).
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "x-idempotency-key",
    "x-request-id",
]
# What clients read beyond the always-readable ones. Rate limits send only Retry-After
# (bookings_project/throttling.py); tests/api/test_cors.py keeps this list in step.
CORS_EXPOSE_HEADERS = ["Location", "Idempotent-Replayed", "Retry-After", "WWW-Authenticate", "X-Request-ID"]
# A browser asks once an hour per URL and method, not before every call.
CORS_PREFLIGHT_MAX_AGE = 3600


# REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "bookings_project.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: the API documents JSON bodies, so form and multipart bodies are refused
    # (415) instead of being half-understood.
    "DEFAULT_PARSER_CLASSES": ["bookings_project.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "bookings_project.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "bookings_project.errors.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "bookings_project.openapi.AutoSchema",
    "NUM_PROXIES": NUM_PROXIES,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Flight Bookings API",
    "DESCRIPTION": (
        "Reserve seats, pay exactly once, cancel, and clean up unpaid bookings. "
        "Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "bookings_project.openapi.allow_empty_query_values",
    ],
    # Several fields share a choice set (a booking's status, and an event's from and to).
    "ENUM_NAME_OVERRIDES": {
        "BookingStatusEnum": "bookings.models.Booking.Status",
        "PaymentStatusEnum": "payments.models.Payment.Status",
        "EventTypeEnum": "bookings.models.OutboxEvent.Type",
        "DeliveryStateEnum": "notifications.models.Delivery.State",
    },
    # Swagger UI and ReDoc from the sidecar package: the docs work with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No validator badge: Swagger UI would fetch it from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "validatorUrl": None},
}


# Flights service (docs/design.md#the-flights-service-boundary) ------------------------------
# Empty URL: the in-process adapter. The token is the shared secret a remote Bookings
# service presents (`Authorization: Bearer <token>`) to change seats on this one.
FLIGHT_SERVICE_URL = env.str("FLIGHT_SERVICE_URL", default="")
FLIGHT_SERVICE_TOKEN = env.str("FLIGHT_SERVICE_TOKEN", default="")
FLIGHT_SERVICE_TIMEOUT = env.float("FLIGHT_SERVICE_TIMEOUT", default=5.0)
# How long the HTTP adapter may book on a flight as the service last answered it instead of
# reading it first; the booking's price is then set from the seat change's own answer.
FLIGHT_SERVICE_REMEMBER_SECONDS = env.float("FLIGHT_SERVICE_REMEMBER_SECONDS", default=10.0)


# Bookings and payments ---------------------------------------------------------------------
BOOKING_HOLD_MINUTES = env.int("BOOKING_HOLD_MINUTES", default=10)
# How far a host's clock may be off the database's before /readyz fails: hosts stamp hold
# expiries and payment times with their own clocks (cleanup decides with the database's).
MAX_CLOCK_SKEW_SECONDS = env.float("MAX_CLOCK_SKEW_SECONDS", default=5.0)
MAX_SEATS_PER_BOOKING = env.int("MAX_SEATS_PER_BOOKING", default=10)
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
CURRENCY = env.str("CURRENCY", default="INR")
# How often cron runs `cleanup_stale_bookings`; admin's cleanup page warns when no run has
# been seen for twice that, or when work has been waiting that long.
CLEANUP_INTERVAL_MINUTES = env.int("CLEANUP_INTERVAL_MINUTES", default=10)

# Payment gateway (docs/design.md#payments-exactly-once): `simulated` (default), `http` (a generic JSON gateway,
# contract in docs/design.md#payments-exactly-once) or `stripe` (docs/design.md#stripe).
PAYMENT_GATEWAY = env.str("PAYMENT_GATEWAY", default="simulated")
PAYMENT_GATEWAY_URL = env.str("PAYMENT_GATEWAY_URL", default="")
PAYMENT_GATEWAY_TOKEN = env.str("PAYMENT_GATEWAY_TOKEN", default="")
# Seconds to wait for the gateway's answer (the connect wait is at most 3.05 s more).
PAYMENT_GATEWAY_TIMEOUT = env.float("PAYMENT_GATEWAY_TIMEOUT", default=10.0)
# A payment attempt (and the request holding its Idempotency-Key) older than the gateway's
# timeouts plus this margin is over: only then may cleanup reconcile it, or a retry take over
# the key of a request that died.
PAYMENT_ATTEMPT_MARGIN_SECONDS = env.int("PAYMENT_ATTEMPT_MARGIN_SECONDS", default=30)
# The simulated gateway, for demos and tests: approve | decline | fail (down, nothing
# charged) | lose_answer (charges, then the answer is lost); and a delay per charge.
PAYMENT_SIMULATED_OUTCOME = env.str("PAYMENT_SIMULATED_OUTCOME", default="approve")
PAYMENT_SIMULATED_DELAY_MS = env.int("PAYMENT_SIMULATED_DELAY_MS", default=0)
# Stripe (docs/operations.md#stripe): the secret key (sk_test_... in test mode), the signing
# secret of the webhook endpoint registered in Stripe's dashboard (whsec_...), and where its
# API is (only tests and the chaos run point it elsewhere, at a fake Stripe).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")

if PAYMENT_GATEWAY not in ("simulated", "http", "stripe"):
    raise ImproperlyConfigured("PAYMENT_GATEWAY must be `simulated`, `http` or `stripe`.")
if PAYMENT_GATEWAY == "stripe" and not (STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET):
    raise ImproperlyConfigured("PAYMENT_GATEWAY=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET.")
if PAYMENT_GATEWAY == "http" and not PAYMENT_GATEWAY_URL:
    raise ImproperlyConfigured("PAYMENT_GATEWAY=http needs PAYMENT_GATEWAY_URL.")
if PAYMENT_SIMULATED_OUTCOME not in ("approve", "decline", "fail", "lose_answer"):
    raise ImproperlyConfigured("PAYMENT_SIMULATED_OUTCOME must be approve, decline, fail or lose_answer.")


# Notifications (docs/design.md#notifications) --------------------------------------------------
# The task queue: Django's tasks framework with its database backend, so it needs no other
# server; `python manage.py db_worker` runs it (docs/operations.md#the-worker).
TASKS = {"default": {"BACKEND": "bookings_project.tasks_backend.DatabaseBackend"}}
# E-mail to the booking's user: console (printed by the worker) unless set, e.g.
# smtp+tls://user:password@smtp.example.com:587.
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
globals().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Flight Bookings <bookings@localhost>")
# http and non-public addresses allowed as webhook URLs: for development and tests only.
WEBHOOK_ALLOW_INSECURE = env.bool("WEBHOOK_ALLOW_INSECURE", default=False)
# An attempt succeeds with a 2xx within this many seconds.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# A worker holds a delivery it attempts this long (longer than an attempt lasts); one killed
# mid-attempt has its delivery attempted again after it.
NOTIFICATION_LEASE_SECONDS = env.float("NOTIFICATION_LEASE_SECONDS", default=2 * WEBHOOK_TIMEOUT_SECONDS + 10)
# Per worker process: threads sending, and how many of them one endpoint (or e-mail) may use.
NOTIFICATION_SEND_THREADS = env.int("NOTIFICATION_SEND_THREADS", default=8)
NOTIFICATION_LANE_CONNECTIONS = env.int("NOTIFICATION_LANE_CONNECTIONS", default=2)
# The events a web process commits within this many seconds are queued in one task, by a
# thread of its own (0: each commit's at once, on its request).
NOTIFICATION_ENQUEUE_BATCH_SECONDS = env.float("NOTIFICATION_ENQUEUE_BATCH_SECONDS", default=0.25)
# Cleanup re-queues events and deliveries due this long and still not picked up.
NOTIFICATION_REQUEUE_AFTER_SECONDS = env.int("NOTIFICATION_REQUEUE_AFTER_SECONDS", default=60)
# Delivered events older than this are deleted by cleanup.
NOTIFICATION_RETENTION_DAYS = env.int("NOTIFICATION_RETENTION_DAYS", default=30)
if NOTIFICATION_LEASE_SECONDS <= WEBHOOK_TIMEOUT_SECONDS:
    raise ImproperlyConfigured("NOTIFICATION_LEASE_SECONDS must be longer than WEBHOOK_TIMEOUT_SECONDS.")


# Metrics (docs/operations.md#metrics) ---------------------------------------------------------
# GET /metrics answers only a request with `Authorization: Bearer <METRICS_TOKEN>`; unset, it
# is off (404). Prometheus on another host reaches it through nginx, which never sheds it.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# The directory every process on a host (gunicorn's workers, the worker, cleanup) writes its
# counts to, for /metrics to add up (bookings_project/metrics.py); unset, each process counts
# alone, right only with one process (`make run`). The systemd units set it.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR and not (
    os.path.isdir(PROMETHEUS_MULTIPROC_DIR) and os.access(PROMETHEUS_MULTIPROC_DIR, os.W_OK | os.X_OK)
):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR {PROMETHEUS_MULTIPROC_DIR!r} is not a directory this user can write."
    )
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters.")
# The worker writes its heartbeat this often; three missed, /metrics, `check_background` and
# the next worker on its host count it gone.
WORKER_HEARTBEAT_SECONDS = 15
WORKER_MISSING_AFTER_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS


# Logging --------------------------------------------------------------------------------
# One JSON object per line on stderr (`LOG_FORMAT=json`, the default), each with the request
# id of the request (or cleanup run) it belongs to; `text` is easier on the eye in a terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
# Python warnings become log records (logger py.warnings), so stderr stays all JSON.
logging.captureWarnings(True)
# No format here names the caller's file and line, its thread or its process, so a record
# does not look them up (the logging docs' "Optimization" advice): a seventh of the request
# line's cost, one line per request.
logging._srcfile = None
logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured("LOG_FORMAT must be json or text.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "bookings_project.logs.RequestIdFilter"},
        "skip_answered_503": {"()": "bookings_project.logs.SkipAnswered503"},
    },
    "formatters": {
        "json": {"()": "bookings_project.logs.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # Our own request log (bookings_project.requests) has every request with its id, user and
    # duration; Django's would repeat each 4xx, and each 503 our handler logged. Its 500s
    # (with the traceback) stay.
    # django-axes says at INFO that it started and each failed login (our request log has those
    # as 200s of /admin/login/); its lockouts, at WARNING, stay.
    "loggers": {
        "django.server": {"level": "ERROR"},
        "django.request": {"level": "ERROR", "filters": ["skip_answered_503"]},
        "axes": {"level": "WARNING"},
    },
}
