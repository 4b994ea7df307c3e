"""schemathesis against the running service's own OpenAPI schema (docs/api.md#errors: never a 500).

Serves the service under gunicorn on a fresh database (SQLite by default; PostgreSQL when
DATABASE_URL is set), loads the demo data, then runs every operation of /api/schema/ through
schemathesis, once as a customer and once as staff, with every check (no 5xx, status codes,
content types, headers and bodies conform to the schema, problem+json errors included,
invalid input refused) except `positive_data_acceptance`: a valid-looking body for an id
that does not exist is rightly a 404, not a 2xx. `revokeToken` is left out: it would log the
fuzzer out mid-run, and the attacks after it (tests/api/test_auth.py covers it). Then the
attacks of `attacks.py` (nested, oversized and NUL-laden requests, a body a byte a second),
straight at gunicorn and through nginx. Exits non-zero on any failure, or on a 500 in the service's log.

    .venv/bin/python scripts/fuzz_api.py [--max-examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import attacks
from serving import ROOT, Gunicorn, Nginx, recreate_database, service_env

BIN = Path(sys.executable).parent
TOKEN_LINE = re.compile(r"^(customer|staff).*token=(\w+)$", re.MULTILINE)


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [BIN / "python", "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def fuzz(base_url: str, token: str, role: str, args: argparse.Namespace) -> int:
    print(f"\n=== schemathesis as {role}", flush=True)
    command = [
        BIN / "st",
        "run",
        f"{base_url}/api/schema/",
        *("--header", f"Authorization: Token {token}"),
        *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
        *("--exclude-operation-id", "revokeToken"),
        *("--max-examples", str(args.max_examples), "--seed", str(args.seed)),
        # One worker: Hypothesis on Python 3.11 can trip over its own threads.
        *("--workers", "1", "--request-timeout", "15", "--no-color"),
    ]
    return subprocess.run(command, cwd=ROOT).returncode


def fresh_database_url(workdir: str) -> str:
    """A database of its own: a SQLite file, or one next to the PostgreSQL database that
    DATABASE_URL names, made anew."""
    url = os.environ.get("DATABASE_URL") or ""
    if not url.startswith("postgres"):
        return f"sqlite:///{workdir}/fuzz.sqlite3"
    server_url, _, name = url.rpartition("/")
    fuzz_name = f"{name.split('?')[0]}_fuzz"
    recreate_database(server_url, fuzz_name)
    return f"{server_url}/{fuzz_name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=25, help="cases per operation and phase (default 25)")
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz-") as workdir:
        # Static files collected, as `make serve` does: the admin's pages (attacked below) use them.
        env = service_env(fresh_database_url(workdir), STATIC_ROOT=f"{workdir}/static")
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(env, "collectstatic", "--noinput", "-v", "0")
        tokens = dict(TOKEN_LINE.findall(manage(env, "load_demo_data")))
        server = Gunicorn("bookings", env, workers=2, log_dir=Path(workdir))
        proxy = Nginx("bookings", server, max_conns=8, log_dir=Path(workdir))
        server.start()
        proxy.start()
        try:
            server.wait_ready("/readyz")
            proxy.wait_ready("/readyz")
            results = {role: fuzz(server.url, tokens[role], role, args) for role in ("customer", "staff")}
            print("\n=== attacks", flush=True)
            failed_attacks = [
                *attacks.run(server.url, tokens["staff"], "gunicorn", edge=False),
                *attacks.run(proxy.url, tokens["staff"], "nginx", edge=True),
            ]
        finally:
            proxy.stop()
            server.stop()
        errors = server.logged_server_errors() + proxy.logged_server_errors()
    verdicts = ", ".join(f"{role} {'passed' if code == 0 else 'FAILED'}" for role, code in results.items())
    print(f"\nschemathesis: {verdicts}")
    print(f"attacks: {'passed' if not failed_attacks else 'FAILED'}")
    for line in failed_attacks:
        print("  " + line)
    print(f"500s in the service's log: {len(errors)}")
    for line in errors[:20]:
        print("  " + line)
    return 0 if not any(results.values()) and not failed_attacks and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
