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
