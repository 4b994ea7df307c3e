"""schemathesis against the running service's own OpenAPI schema (DESIGN §3.5: never a 500).

Serves the service under gunicorn on a fresh database (SQLite by default; PostgreSQL when
DATABASE_URL is set), loads the demo data, then runs every operation of /api/schema/ through
schemathesis, once as a customer and once as staff, with every check (no 5xx, status codes,
content types, headers and bodies conform to the schema, problem+json errors included,
invalid input refused) except `positive_data_acceptance`: a valid-looking body for an id
that does not exist is rightly a 404, not a 2xx. Exits non-zero on any failure.

    .venv/bin/python scripts/fuzz_api.py [--max-examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN_LINE = re.compile(r"^(customer|staff).*token=(\w+)$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        # The fuzzer sends thousands of requests as one user: no rate limits here (429 is
        # documented and checked by the test suite).
        "THROTTLE_RATE_TOKEN": "",
        "THROTTLE_RATE_BOOKINGS": "",
        "THROTTLE_RATE_PAYMENTS": "",
    }


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [BIN / "python", "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def wait_until_up(base_url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {server.returncode}")
        try:
            if requests.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # Not listening yet, or a worker still booting.
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not come up within 30 s")


def fuzz(base_url: str, token: str, role: str, args: argparse.Namespace) -> int:
    print(f"\n=== schemathesis as {role}", flush=True)
    command = [
        BIN / "st",
        "run",
        f"{base_url}/api/schema/",
        "--header",
        f"Authorization: Token {token}",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        # One worker: Hypothesis on Python 3.11 can trip over its own threads.
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--no-color",
    ]
    return subprocess.run(command, cwd=ROOT).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=25, help="cases per operation and phase (default 25)")
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz-") as workdir:
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{workdir}/fuzz.sqlite3"
        if database_url.startswith("postgres"):
            database_url = fresh_postgres_database(database_url)
        env = service_env(database_url)
        manage(env, "migrate", "--noinput", "-v", "0")
        tokens = dict(TOKEN_LINE.findall(manage(env, "load_demo_data")))
        server_log = open(Path(workdir) / "server.log", "w")  # noqa: SIM115 - closed with the directory
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                BIN / "gunicorn",
                "bookings_project.wsgi:application",
                *("--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4", "--worker-class", "gthread"),
                # The longest request line gunicorn allows (nginx's default buffer is as long).
                *("--limit-request-line", "8190", "--log-level", "warning"),
                # gunicorn 27's control socket is one path per user: two servers would share it.
                "--no-control-socket",
            ],
            cwd=ROOT,
            env=env,
            stderr=server_log,
            start_new_session=True,
        )
        try:
            wait_until_up(base_url, server)
            results = {role: fuzz(base_url, tokens[role], role, args) for role in ("customer", "staff")}
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            server_log.close()
            errors = server_errors(Path(workdir) / "server.log")
    print(
        "\nschemathesis: "
        + ", ".join(f"{role} {'passed' if code == 0 else 'FAILED'}" for role, code in results.items())
    )
    print(f"server errors logged: {len(errors)}")
    for line in errors[:20]:
        print("  " + line)
    return 0 if not any(results.values()) and not errors else 1


def server_errors(log: Path) -> list[str]:
    """The service's ERROR lines (an unhandled exception is one, whatever status it answered)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # gunicorn's own lines
        if entry.get("level") in ("ERROR", "CRITICAL"):
            found.append(f"{entry.get('logger')}: {entry.get('message')}"[:300])
    return found


def fresh_postgres_database(url: str) -> str:
    """A database of its own next to the one DATABASE_URL names, made anew."""
    import psycopg

    base, _, name = url.rpartition("/")
    fuzz_name = f"{name.split('?')[0]}_fuzz"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{fuzz_name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{fuzz_name}"')
    return f"{base}/{fuzz_name}"


if __name__ == "__main__":
    sys.exit(main())
