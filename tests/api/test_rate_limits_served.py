"""Rate limits as served: gunicorn hosts with several workers each count together in the
shared cache (Redis), and a cache that is down lets requests through instead of failing them.

Real processes: two gunicorn "hosts" of two workers each on one scratch database, the token
endpoint's limit keyed by a client address of this test's own (`X-Forwarded-For`, one proxy
trusted), so that runs sharing the Redis server never count together.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.gunicorn import ROOT, running_gunicorn, scratch_env

REDIS = ("127.0.0.1", 6379)
LIMIT = 5


def redis_reachable() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(REDIS) == 0


# CI has Redis on this machine: there a missing one is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not redis_reachable() and not os.environ.get("CI"), reason="needs Redis on 127.0.0.1:6379"
)


def host_env(tmp_path: Path, cache_url: str) -> dict[str, str]:
    return scratch_env(
        tmp_path, CACHE_URL=cache_url, NUM_PROXIES="1", THROTTLE_RATE_TOKEN=f"{LIMIT}/min", GUNICORN_WORKERS="2"
    )


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)


def wrong_passwords(urls: list[str], count: int) -> list[int]:
    """`count` wrong passwords from one client, spread over the hosts in turn, each on a
    connection of its own (so over their workers too): the answers' statuses."""
    client = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    statuses = []
    for index in range(count):
        response = requests.post(
            f"{urls[index % len(urls)]}/api/v1/auth/token",
            json={"username": "nobody", "password": f"guess-{index}"},
            headers={"X-Forwarded-For": client, "Connection": "close"},
            timeout=10,
        )
        statuses.append(response.status_code)
    return statuses


@pytest.fixture
def two_hosts(tmp_path, request):
    cache_url = request.param
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env_a, env_b = host_env(tmp_path, cache_url), host_env(tmp_path, cache_url)
    migrate(env_a)
    with running_gunicorn(tmp_path / "a", env_a) as (url_a, _), running_gunicorn(tmp_path / "b", env_b) as (url_b, _):
        yield [url_a, url_b]


@pytest.mark.parametrize("two_hosts", ["redis://127.0.0.1:6379/0"], indirect=True)
def test_two_hosts_of_two_workers_count_one_limit_in_redis(two_hosts):
    statuses = wrong_passwords(two_hosts, 3 * LIMIT)

    assert statuses == [401] * LIMIT + [429] * (2 * LIMIT)


@pytest.mark.parametrize("two_hosts", ["locmemcache://"], indirect=True)
def test_a_per_process_cache_lets_each_host_count_apart(two_hosts):
    """What production refuses to start with (tests/test_settings.py): the guard's reason."""
    statuses = wrong_passwords(two_hosts, 3 * LIMIT)

    assert statuses.count(401) >= 2 * LIMIT


def test_a_cache_that_is_down_lets_requests_through_and_says_so(tmp_path):
    with socket.socket() as probe:  # A port nobody listens on: connections refused at once.
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = host_env(tmp_path, f"redis://127.0.0.1:{closed}/0")
    migrate(env)
    with running_gunicorn(tmp_path, env) as (url, log_path):
        statuses = wrong_passwords([url], LIMIT + 2)
        log = log_path.read_text()

    assert statuses == [401] * (LIMIT + 2)  # Uncounted, never a 500.
    assert log.count("rate limit token not counted: its cache failed") == LIMIT + 2
