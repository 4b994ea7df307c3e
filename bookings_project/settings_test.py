"""Settings for the test suite: the production settings with test-only conveniences."""

import os

from bookings_project.settings import *  # noqa: F403
from bookings_project.settings import DATABASES

# Lets several test runs share one checkout without sharing a test database.
_suffix = os.environ.get("TEST_DB_SUFFIX", "")
# A file, not :memory:, so that threaded tests share one SQLite database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db{_suffix}.sqlite3")}  # noqa: F405
elif _suffix:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_suffix}"}

# Serve static files from the apps' folders, with no collectstatic step.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# Hashing passwords slowly protects nothing in a test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No rate limits, except in the tests of them: the suite sends many requests as one user.
THROTTLE_RATES = {"token": "", "bookings": "", "payments": ""}

# Webhook receivers in the tests listen on 127.0.0.1 over http; the URL-safety tests turn
# this off. Attempts run in the caller, one at a time, unless a test asks for threads.
WEBHOOK_ALLOW_INSECURE = True
NOTIFICATION_SEND_THREADS = 0
# Each commit's events queued at once, on its own thread: the statements the tests count.
NOTIFICATION_ENQUEUE_BATCH_SECONDS = 0
# No worker runs in most tests, so cleanup would find every event "forgotten" and count its
# re-queue: the notification tests set a window of their own (tests/notifications).
NOTIFICATION_REQUEUE_AFTER_SECONDS = 10 * 365 * 24 * 3600
