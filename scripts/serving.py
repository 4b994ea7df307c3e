"""Serving the project for the scripts that drive it from outside (chaos, fuzz, the benches):
gunicorn on a free loopback port, nginx in front of it (deploy/nginx.conf), and throw-away
PostgreSQL databases.

`SERVING_PORTS=FIRST-LAST` (e.g. 18100-18199) keeps every port these scripts listen on in
that range, for a host shared with other runs; by default the kernel picks free ones."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
START_TIMEOUT = 30.0
# What Django (an unhandled exception in a view) and gunicorn (one escaping the app) log for
# a 500, whatever the log format.
SERVER_ERROR_LOG = re.compile(r"Internal Server Error|Error handling request")


def recreate_database(server_url: str, name: str) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Backends:
    """CPU seconds of the PostgreSQL backends of one database since the first sample, from
    `/proc` (PostgreSQL on this host). Backends come and go (a connection closed when idle,
    a process restarted): sampled often, one that ended is counted up to its last sample.
    `leave_out`: backends of other clients (a bench's own queries)."""

    def __init__(self, pg_url: str, database: str, *, leave_out: set[int]) -> None:
        self.connection = psycopg.connect(f"{pg_url}/postgres", autocommit=True)
        self.database = database
        self.leave_out = leave_out
        self.tick = os.sysconf("SC_CLK_TCK")
        self.first: dict[int, float] | None = None
        self.last: dict[int, float] = {}

    def sample(self) -> float:
        """Sample, and answer the seconds so far."""
        pids = [
            pid
            for (pid,) in self.connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.database]
            ).fetchall()
        ]
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # It ended meanwhile: counted up to its last sample.
            self.last[pid] = (int(fields[11]) + int(fields[12])) / self.tick
        if self.first is None:
            self.first = dict(self.last)
        return sum(
            seconds - self.first.get(pid, 0.0) for pid, seconds in self.last.items() if pid not in self.leave_out
        )

    def sessions(self) -> int:
        """Connections ever made to the database (PostgreSQL 14+)."""
        return self.connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [self.database]
        ).fetchone()[0]

    def close(self) -> None:
        self.connection.close()


def service_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The environment of the service these scripts start: the production settings module
    with DEBUG off, quiet logs, no rate limits (the scripts send many requests as few users;
    429 is the suite's to test), the in-process Flights adapter and the simulated gateway
    approving at once; `overrides` on top."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bookings_project.settings",
        "DJANGO_ENV": "development",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "FLIGHT_SERVICE_URL": "",
        "PAYMENT_GATEWAY": "simulated",
        "PAYMENT_SIMULATED_OUTCOME": "approve",
        "PAYMENT_SIMULATED_DELAY_MS": "0",
        "THROTTLE_RATE_TOKEN": "",
        "THROTTLE_RATE_BOOKINGS": "",
        "THROTTLE_RATE_PAYMENTS": "",
        **overrides,
    }


def keepalive_connections(*, clients: int, workers: int, threads: int) -> int:
    """GUNICORN_KEEPALIVE_CONNECTIONS for a gunicorn of `workers` x `threads` that `clients`
    pooled connections call directly (the Flights service: one per thread of the Bookings
    gunicorns): enough that all of them fit, and one spare a worker for short-lived callers
    (cleanup from cron, probes). A gthread worker stops accepting once its threads plus its
    idle kept-alive connections are all taken, so one connection too many would wait for an
    idle one to time out."""
    return max(0, -(-clients // workers) - threads) + 1


def set_up_django() -> None:
    """In a script re-invoked as a Django task: the project importable, Django set up on the
    DATABASE_URL of the environment it was started with."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookings_project.settings")
    import django

    django.setup()


def start_django_task(script: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`script` re-invoked with `--django-task` and `args`, in the environment of one service."""
    return subprocess.Popen(
        [sys.executable, script, "--django-task", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=180)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def task_output(process: subprocess.Popen, what: str) -> str:
    """A task's stdout; a task that failed stops the run with what it printed."""
    result = finish(process)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr[-3000:]}")
    return result.stdout


def last_line_json(process: subprocess.Popen, what: str) -> Any:
    """The JSON a task printed last."""
    return json.loads(task_output(process, what).splitlines()[-1])


def free_port() -> int:
    """A port free on loopback now: the kernel's pick, or one of SERVING_PORTS's range."""
    span = os.environ.get("SERVING_PORTS", "")
    if not span:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    first, _, last = span.partition("-")
    candidates = list(range(int(first), int(last or first) + 1))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in SERVING_PORTS={span}")


class ProcessGroup:
    """A process these scripts started in its own session, and so its own process group: it
    and its children are stopped or killed at once, and nothing else is. Subclasses set
    `name`, `log_path`, `process` and the log pattern of `logged_server_errors`."""

    name: str
    log_path: Path
    process: subprocess.Popen | None
    error_log: re.Pattern = re.compile(r"$^")
    # The signal of its graceful stop.
    stop_signal: int = signal.SIGTERM

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        """Graceful shutdown (what is in flight finishes), then SIGKILL whatever is left."""
        if self.running:
            self.process.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.kill()

    def logged_server_errors(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return [f"{self.name} log: {line[:300]}" for line in lines if self.error_log.search(line)]


class Gunicorn(ProcessGroup):
    """One gunicorn serving the project on a loopback port, in its own session and so its own
    process group: the master and its workers can be killed at once, and nothing else is."""

    error_log = SERVER_ERROR_LOG

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        *,
        workers: int,
        log_dir: Path,
        threads: int = 4,
        worker_class: str = "gthread",
        code_dir: Path = ROOT,
        app: list[str] | None = None,
    ) -> None:
        self.name = name
        self.env = env
        # The checkout served (its gunicorn.conf.py puts it first on the path), and gunicorn's
        # arguments naming another WSGI application than the config's, if any.
        self.code_dir = code_dir
        self.app = app or []
        self.workers = workers
        # gunicorn makes a sync worker with threads > 1 a gthread one: sync has one thread.
        self.threads = 1 if worker_class == "sync" else threads
        self.worker_class = worker_class
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # The production configuration (gunicorn.conf.py), on a port of our own, with the
        # size and the patience these scripts want.
        # The size goes through the settings, as in production, so that gunicorn.conf.py
        # derives what depends on it (worker_connections) from the size used.
        env = {**self.env, "GUNICORN_WORKERS": str(self.workers), "GUNICORN_THREADS": str(self.threads)}
        command = [
            GUNICORN,
            "--config",
            str(self.code_dir / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            self.worker_class,
            "--timeout",
            "30",
            "--graceful-timeout",
            "5",
            *self.app,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.code_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, *paths: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for path in paths:
            while True:
                if not self.running:
                    raise RuntimeError(f"{self.name} gunicorn exited; see {self.log_path}")
                try:
                    if requests.get(self.url + path, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} {path} not ready after {START_TIMEOUT:.0f} s; see {self.log_path}")
                time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        if not self.running:
            return []
        pid = self.process.pid
        try:
            return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            return []


NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install -y nginx)")
    return found


def render_nginx_conf(values: dict[str, str], template: Path = NGINX_TEMPLATE) -> str:
    """deploy/nginx.conf (or a variant of it) with its placeholders filled; every one outside
    comments must be."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    left = sorted(set(PLACEHOLDER.findall(code)))
    if left:
        raise RuntimeError(f"deploy/nginx.conf: no value for {', '.join(left)}")
    return text


class Nginx(ProcessGroup):
    """nginx with the production config (deploy/nginx.conf) in front of one gunicorn, on a
    loopback port of its own, in its own session (process group), as Gunicorn is."""

    stop_signal = signal.SIGQUIT  # nginx's graceful stop: answers in flight finish.

    def __init__(
        self, name: str, upstream: Gunicorn, *, max_conns: int, log_dir: Path, template: Path = NGINX_TEMPLATE
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.max_conns = max_conns
        self.template = template
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = log_dir / f"{name}-nginx"
        self.log_path = self.run_dir / "error.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwuid(os.geteuid()).pw_name
        config = self.run_dir / "nginx.conf"
        config.write_text(
            render_nginx_conf(
                {
                    "USER": user,
                    "RUN_DIR": str(self.run_dir),
                    "LISTEN": f"127.0.0.1:{self.port}",
                    "UPSTREAM": f"127.0.0.1:{self.upstream.port}",
                    "MAX_CONNS": str(self.max_conns),
                },
                self.template,
            )
        )
        with (self.run_dir / "stderr.log").open("ab") as log:
            self.process = subprocess.Popen(
                [nginx_binary(), "-p", str(self.run_dir), "-c", str(config), "-g", "daemon off;"],
                cwd=self.run_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, *paths: str) -> None:
        """Through nginx to gunicorn: the upstream must be ready as well."""
        deadline = time.monotonic() + START_TIMEOUT
        for path in paths:
            while True:
                if not self.running:
                    stderr = (self.run_dir / "stderr.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{self.name} nginx exited: {stderr}")
                try:
                    if requests.get(self.url + path, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} nginx {path} not ready after {START_TIMEOUT:.0f} s")
                time.sleep(0.1)

    def logged_server_errors(self) -> list[str]:
        """nginx's own 500s (a bug of the config, never the app's) from its access log."""
        path = self.run_dir / "access.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [f"{self.name} nginx access log: {line[:300]}" for line in lines if '"status":500,' in line]


class Run(Protocol):
    def execute(self) -> int: ...
    def tear_down(self) -> None: ...


def run_to_the_end(name: str, run: Run) -> int:
    """`run.execute()`, with `run.tear_down()` however it ends (an error, Ctrl-C, SIGTERM, exit):
    the servers stopped and the databases dropped. An error that stops the run is 2."""
    atexit.register(run.tear_down)
    # SIGTERM (CI cancelling the job) unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run.execute()
    except Exception as error:
        sys.stdout.flush()
        print(f"{name}: the run could not be made: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        run.tear_down()
