"""`manage.py db_worker` in processes of their own, on the test database, for tests that
need a real worker: one that can be killed, or two that race."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

from tests.support.gunicorn import ROOT, clean_env


def test_database_url() -> str:
    """The URL of the database this test runs on (the test database, not the configured one)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    user = settings["USER"] or "postgres"
    return f"postgres://{user}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


def worker_env(**env: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=test_database_url(),
        WEBHOOK_ALLOW_INSECURE="true",
        LOG_FORMAT="json",
        **env,
    )


@contextlib.contextmanager
def running_worker(log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A worker polling every 50 ms until the block ends (then SIGTERM, or SIGKILL if it hangs)."""
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
