"""What a flood of the admin login form does to the API, through nginx (deploy/nginx.conf).

Serves the service on PostgreSQL (gunicorn with the production config, nginx in front), then
measures API reads per second (`GET /api/v1/flights/{id}` as the demo customer) for
`--seconds`, first quiet and then while `--flooders` anonymous clients post wrong passwords
to /admin/login/ as fast as they are answered, each for a username of its own every time (so
no lockout of django-axes spares the password hash: the worst case). Both with nginx's
per-address limit on the login form and with it taken out, which is how the service was
before it.

    .venv/bin/python bench/admin_flood.py [--seconds 15] [--flooders 16] [--readers 4]

DATABASE_URL names the PostgreSQL server (default postgres://postgres@127.0.0.1:5432/flight_bookings);
the script makes a database `<name>_flood` of its own. The figures are requests per second on
a shared machine: compare the two phases of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import multiprocessing.synchronize
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from attacks import wrong_admin_password
from load import CpuMeter
from serving import NGINX_TEMPLATE, ROOT, Gunicorn, Nginx, drop_database, recreate_database, service_env

TOKEN_LINE = re.compile(r"^customer.*token=(\w+)$", re.MULTILINE)
LIMIT_LINES = re.compile(r"^\s*limit_req.*$\n", re.MULTILINE)


def reads_per_second(url: str, token: str, *, readers: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * readers

    def read(slot: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        while time.monotonic() < stop:
            if session.get(f"{url}/api/v1/flights/1", timeout=30).status_code == 200:
                counts[slot] += 1

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def flood(url: str, clients: int, stop: multiprocessing.synchronize.Event, answers: multiprocessing.Queue) -> None:
    """`clients` anonymous browsers posting wrong passwords, a new username each time, in a
    process of their own (so that they do not take the readers' interpreter lock); puts
    the statuses answered on `answers` when `stop` is set."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def browse() -> None:
        browser = requests.Session()
        for n in itertools.count():
            if stop.is_set():
                return
            try:
                status = wrong_admin_password(browser, url, f"guess-{threading.get_ident()}-{n}", "x")
            except requests.RequestException:
                status = 0
            with lock:
                statuses[status] += 1

    browsers = [threading.Thread(target=browse) for _ in range(clients)]
    for thread in browsers:
        thread.start()
    for thread in browsers:
        thread.join()
    answers.put(dict(statuses))


def phase(meter: CpuMeter, name: str, url: str, token: str, args: argparse.Namespace) -> tuple[float, float]:
    """API reads per second, and the app's CPU in % of one core, over `--seconds`."""
    before = meter.snapshot()
    reads = reads_per_second(url, token, readers=args.readers, seconds=args.seconds)
    return reads, meter.figures(before, meter.snapshot()).servers[name]


def measure(env: dict[str, str], token: str, workdir: Path, *, limited: bool, args: argparse.Namespace) -> None:
    template = NGINX_TEMPLATE
    if not limited:
        template = workdir / "nginx-unlimited.conf"
        template.write_text(LIMIT_LINES.sub("", NGINX_TEMPLATE.read_text()))
    name = "limited" if limited else "unlimited"
    server = Gunicorn(name, env, workers=args.workers, threads=4, log_dir=workdir)
    proxy = Nginx(name, server, max_conns=args.workers * 4, log_dir=workdir, template=template)
    server.start()
    proxy.start()
    try:
        server.wait_ready("/readyz")
        proxy.wait_ready("/readyz")
        meter = CpuMeter({name: server.process.pid}, databases=[])
        reads_per_second(proxy.url, token, readers=args.readers, seconds=2)  # Warm up.
        quiet, quiet_cpu = phase(meter, name, proxy.url, token, args)
        stop, answers = multiprocessing.Event(), multiprocessing.Queue()
        flooder = multiprocessing.Process(target=flood, args=(proxy.url, args.flooders, stop, answers))
        flooder.start()
        time.sleep(1)
        flooded, flooded_cpu = phase(meter, name, proxy.url, token, args)
        stop.set()
        statuses = answers.get(timeout=60)
        flooder.join()
    finally:
        proxy.stop()
        server.stop()
    print(
        f"nginx login limit {'on ' if limited else 'off'}: API reads/s quiet {quiet:.0f} (app CPU {quiet_cpu:.0f} %), "
        f"with {args.flooders} clients flooding /admin/login/ {flooded:.0f} ({flooded / quiet:.0%}; "
        f"app CPU {flooded_cpu:.0f} %); login answers {dict(sorted(statuses.items()))}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/flight_bookings"
    server_url, _, name = url.rpartition("/")
    database = f"{name.split('?')[0]}_flood"
    recreate_database(server_url, database)
    manage = [sys.executable, "manage.py"]
    try:
        with tempfile.TemporaryDirectory(prefix="flood-") as workdir:
            # Static files collected, as `make serve` does: the login page uses them.
            env = service_env(f"{server_url}/{database}", STATIC_ROOT=f"{workdir}/static")
            for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
                subprocess.run([*manage, *command, "-v", "0"], cwd=ROOT, env=env, check=True)
            demo = subprocess.run(
                [*manage, "load_demo_data"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
            )
            token = TOKEN_LINE.search(demo.stdout).group(1)
            for limited in (False, True):
                measure(env, token, Path(workdir), limited=limited, args=args)
    finally:
        drop_database(server_url, database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
