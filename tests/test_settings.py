"""Settings come from the environment, and production refuses unsafe ones.

Each case starts a fresh `manage.py` process, since settings are read once at start-up.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "x" * 20 + "-a-long-random-production-secret-key-" + "y" * 20


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY", "DJANGO_ENV"}}
    clean["DJANGO_SETTINGS_MODULE"] = "bookings_project.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_debug():
    result = manage("check", DJANGO_ENV="production", SECRET_KEY=GOOD_SECRET, DEBUG="true")
    assert result.returncode != 0
    assert "DEBUG must be off" in result.stderr


@pytest.mark.parametrize("secret", [None, "short"])
def test_production_refuses_the_default_or_a_weak_secret(secret):
    env = {"DJANGO_ENV": "production"} | ({"SECRET_KEY": secret} if secret else {})
    result = manage("check", **env)
    assert result.returncode != 0
    assert "Set SECRET_KEY" in result.stderr


SHARED_CACHE = "redis://127.0.0.1:6379/0"  # Not connected to by `check`.


def test_deploy_checks_are_clean_in_production():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_ENV="production",
        SECRET_KEY=GOOD_SECRET,
        CACHE_URL=SHARED_CACHE,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("cache_url", ["", "locmemcache://", "dummycache://"])
def test_production_refuses_a_per_process_cache_for_the_rate_limits(cache_url):
    env = {"DJANGO_ENV": "production", "SECRET_KEY": GOOD_SECRET} | ({"CACHE_URL": cache_url} if cache_url else {})
    result = manage("check", **env)
    assert result.returncode != 0
    assert "Set CACHE_URL to a shared cache" in result.stderr


@pytest.mark.parametrize(
    ("cache_url", "limits"),
    [
        (SHARED_CACHE, {}),
        ("dbcache://rate_limits", {}),
        # No limit to count: any cache will do.
        ("locmemcache://", {"THROTTLE_RATE_TOKEN": "", "THROTTLE_RATE_BOOKINGS": "", "THROTTLE_RATE_PAYMENTS": ""}),
    ],
)
def test_production_starts_with_a_shared_cache_or_no_limits(cache_url, limits):
    result = manage("check", DJANGO_ENV="production", SECRET_KEY=GOOD_SECRET, CACHE_URL=cache_url, **limits)
    assert result.returncode == 0, result.stderr


def test_a_redis_cache_answers_within_a_bound():
    code = "from django.conf import settings; print(sorted(settings.CACHES['default']['OPTIONS'].items()))"
    result = manage("shell", "--no-imports", "-c", code, CACHE_URL=SHARED_CACHE)
    assert result.returncode == 0, result.stderr
    assert "[('socket_connect_timeout', 0.25), ('socket_timeout', 0.25)]" in result.stdout


def test_development_runs_with_the_defaults():
    assert manage("check").returncode == 0


def test_empty_database_url_means_the_sqlite_default():
    code = "from django.conf import settings; d = settings.DATABASES['default']; print(d['ENGINE'], d['OPTIONS'])"
    result = manage("shell", "--no-imports", "-c", code, DATABASE_URL="")
    assert result.returncode == 0, result.stderr
    assert "sqlite3" in result.stdout
    assert "'transaction_mode': 'IMMEDIATE'" in result.stdout
    assert "journal_mode=WAL" in result.stdout


def test_database_url_selects_postgresql():
    code = "from django.conf import settings; d = settings.DATABASES['default']; print(d['ENGINE'], d['NAME'])"
    result = manage("shell", "--no-imports", "-c", code, DATABASE_URL="postgres://u:p@db.internal:5432/bookings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "bookings"]


def test_the_example_environment_starts():
    """`cp .env.example .env` must give a working development set-up."""
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert {"SECRET_KEY", "DATABASE_URL", "FLIGHT_SERVICE_URL", "BOOKING_HOLD_MINUTES", "CURRENCY"} <= set(example)
    result = manage("check", **example)
    assert result.returncode == 0, result.stderr


def test_env_example_names_every_key_the_settings_read():
    import re

    read = set(re.findall(r"""env\.\w+\(\s*["']([A-Z_]+)["']""", (ROOT / "bookings_project/settings.py").read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "no env reads found: the pattern is stale"
    assert read - documented == set()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAYMENT_GATEWAY": "paypal"}, "PAYMENT_GATEWAY must be"),
        ({"PAYMENT_GATEWAY": "stripe", "STRIPE_SECRET_KEY": "sk_test_x"}, "needs STRIPE_SECRET_KEY and"),
        ({"PAYMENT_GATEWAY": "http"}, "needs PAYMENT_GATEWAY_URL"),
        ({"PAYMENT_SIMULATED_OUTCOME": "maybe"}, "PAYMENT_SIMULATED_OUTCOME must be"),
    ],
)
def test_a_wrong_payment_gateway_setting_refuses_to_start(env, message):
    result = manage("check", **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_http_payment_gateway_is_chosen_by_the_setting():
    code = "from payments.gateway import get_payment_gateway as g; print(type(g()).__name__, g().base_url)"
    result = manage(
        "shell", "--no-imports", "-c", code, PAYMENT_GATEWAY="http", PAYMENT_GATEWAY_URL="https://pay.internal/v1/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["HttpPaymentGateway", "https://pay.internal/v1"]


def test_cors_allowed_origins_are_read_from_the_environment():
    code = "from django.conf import settings; print(settings.CORS_ALLOWED_ORIGINS)"
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        code,
        CORS_ALLOWED_ORIGINS="https://app.example.com, http://localhost:3000,",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['https://app.example.com', 'http://localhost:3000']"

    result = manage("shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("origin", ["*", "app.example.com", "https://app.example.com/", "https://app.example.com/path"])
def test_a_cors_origin_that_is_not_an_origin_refuses_to_start(origin):
    result = manage("check", CORS_ALLOWED_ORIGINS=f"https://ok.example.com,{origin}")
    assert result.returncode != 0
    assert "CORS_ALLOWED_ORIGINS lists origins like" in result.stderr


def test_a_short_metrics_token_refuses_to_start():
    result = manage("check", METRICS_TOKEN="short")
    assert result.returncode != 0
    assert "METRICS_TOKEN must be at least 16 characters" in result.stderr


def test_a_metrics_directory_that_is_not_there_refuses_to_start(tmp_path):
    result = manage("check", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "is not a directory this user can write" in result.stderr
    assert manage("check", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).returncode == 0
