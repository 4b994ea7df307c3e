"""Production serving (`make serve`): gunicorn with gunicorn.conf.py, whose size comes from the
settings; WhiteNoise serving the collected static files; DEBUG off; gunicorn's own log lines
in the app's JSON format.

Each case runs gunicorn in a fresh process, since the settings are read once at start-up.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.gunicorn import CONFIG, GUNICORN, ROOT, clean_env, running_gunicorn, scratch_env

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).


def resolved_config(tmp_path: Path, **env: str) -> dict[str, str]:
    """gunicorn's settings as it resolves them from the config file, started from elsewhere."""
    result = subprocess.run(
        [GUNICORN, "--config", CONFIG, "--print-config"],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = {}
    for line in result.stdout.splitlines():
        name, separator, value = line.partition(" = ")
        if separator:
            config[name.strip()] = value.strip()
    return config


def test_the_size_defaults_to_the_machine_cores(tmp_path):
    config = resolved_config(tmp_path)

    assert config["workers"] == str(2 * os.cpu_count() + 1)
    assert config["threads"] == "4"
    assert config["worker_class"] == "gthread"
    assert config["wsgi_app"] == "bookings_project.wsgi:application"
    assert config["chdir"] == str(ROOT)
    assert config["preload_app"] == "True"
    assert config["timeout"] == "60"
    assert config["bind"] == "['127.0.0.1:8000']"
    assert config["control_socket_disable"] == "True"


def test_workers_threads_timeout_and_address_come_from_the_environment(tmp_path):
    config = resolved_config(
        tmp_path, GUNICORN_WORKERS="3", GUNICORN_THREADS="8", GUNICORN_TIMEOUT="90", GUNICORN_BIND="0.0.0.0:9000"
    )

    assert (config["workers"], config["threads"], config["timeout"]) == ("3", "8", "90")
    assert config["bind"] == "['0.0.0.0:9000']"


def test_a_worker_takes_as_many_connections_as_threads_plus_those_kept_alive(tmp_path):
    assert resolved_config(tmp_path, GUNICORN_THREADS="8")["worker_connections"] == "8"
    config = resolved_config(tmp_path, GUNICORN_THREADS="8", GUNICORN_KEEPALIVE_CONNECTIONS="3")
    assert config["worker_connections"] == "11"


def test_negative_keepalive_connections_refuse_to_start(tmp_path):
    result = subprocess.run(
        [GUNICORN, "--config", CONFIG, "--check-config"],
        cwd=tmp_path,
        env=clean_env(GUNICORN_KEEPALIVE_CONNECTIONS="-1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "GUNICORN_KEEPALIVE_CONNECTIONS cannot be negative" in result.stderr


@pytest.mark.parametrize("key", ["GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"])
def test_a_size_below_one_refuses_to_start(tmp_path, key):
    result = subprocess.run(
        [GUNICORN, "--config", CONFIG, "--check-config"],
        cwd=tmp_path,
        env=clean_env(**{key: "0"}),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "GUNICORN_WORKERS, GUNICORN_THREADS and GUNICORN_TIMEOUT must be at least 1" in result.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """gunicorn as `make serve` starts it (after collectstatic), one small worker, on a free
    port; yields its URL, the static root and its log."""
    tmp_path = tmp_path_factory.mktemp("served")
    static_root = tmp_path / "static"
    env = scratch_env(tmp_path, STATIC_ROOT=str(static_root))
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collect.returncode == 0, collect.stderr
    with running_gunicorn(tmp_path, env) as (url, log_path):
        yield url, static_root, log_path


def _two_requests_on_one_connection(url: str) -> tuple[bool, bool]:
    """Whether the first answer kept the connection open, and whether a second request on it was answered."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        kept, sock = not first.will_close, connection.sock
        if not kept:
            return False, False
        connection.request("GET", "/healthz")
        second = connection.getresponse()
        second.read()
        return True, second.status == 200 and connection.sock is sock
    finally:
        connection.close()


def test_behind_nginx_a_connection_serves_one_request(served):
    # Each connection waits in the listen backlog for a worker with a thread free (worker model, docs/performance.md).
    assert _two_requests_on_one_connection(served[0]) == (False, False)


def test_keepalive_connections_let_a_direct_client_reuse_its_connection(tmp_path):
    with running_gunicorn(tmp_path, scratch_env(tmp_path, GUNICORN_KEEPALIVE_CONNECTIONS="2")) as (url, _):
        assert _two_requests_on_one_connection(url) == (True, True)


def test_gunicorn_serves_static_files_through_whitenoise_with_debug_off(served):
    url, static_root, _ = served
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    hashed = manifest["admin/css/base.css"]

    css = requests.get(f"{url}/static/{hashed}", headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    # A hashed name never changes content, so browsers and CDNs may keep it for good.
    assert "immutable" in css.headers["Cache-Control"]
    assert css.headers["Content-Encoding"] == "gzip"

    # DEBUG off: a missing page is the plain 404, not Django's debug page with the URL list.
    missing = requests.get(f"{url}/no-such-page", timeout=5)
    assert missing.status_code == 404
    assert "DEBUG = True" not in missing.text
    assert "api/v1/" not in missing.text


def test_gunicorns_own_log_lines_are_json_like_the_apps(served):
    url, _, log_path = served
    requests.get(f"{url}/healthz", timeout=5)

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]

    loggers = {record["logger"] for record in records}
    assert "gunicorn.error" in loggers  # "Booting worker with pid ..."
    assert "bookings_project.requests" in loggers
    assert all({"time", "level", "message", "request_id"} <= set(record) for record in records)
