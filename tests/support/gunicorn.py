"""gunicorn with the production config (gunicorn.conf.py) in a process of its own, for tests
that need the served service: its workers, its sockets, its environment."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CONFIG = str(ROOT / "gunicorn.conf.py")


def clean_env(**env: str) -> dict[str, str]:
    """The environment a deployment gives: none of the test run's own database or settings."""
    dropped = {"DATABASE_URL", "DEBUG", "DJANGO_ENV", "DJANGO_SETTINGS_MODULE"}
    keep = {key: value for key, value in os.environ.items() if key not in dropped and not key.startswith("GUNICORN_")}
    return keep | env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_gunicorn(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """gunicorn with gunicorn.conf.py and `env` on a free port, until it answers /healthz;
    yields its URL and its log."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [GUNICORN, "--config", CONFIG],
            cwd=tmp_path,
            env=env | {"GUNICORN_BIND": f"127.0.0.1:{port}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"gunicorn not ready: {log_path.read_text()}"
            time.sleep(0.05)
        yield url, log_path
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def scratch_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A small production-like server (one worker of two threads, unless `env` says otherwise)
    on a scratch SQLite file in `tmp_path`."""
    defaults = {
        "DEBUG": "false",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "2",
        "LOG_FORMAT": "json",
    }
    return clean_env(**(defaults | env))
