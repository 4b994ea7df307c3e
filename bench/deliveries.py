"""Deliveries per second of one notifications worker (`manage.py db_worker`) against a local
webhook receiver, and what a delivery costs: the worker's CPU and PostgreSQL's.

For each value of `--threads` in turn (NOTIFICATION_SEND_THREADS; default 8, the default,
then 1): a throw-away PostgreSQL database, migrated; `--endpoints` webhook endpoints (default
1, so one lane) at a receiver on loopback (bench/receiver.py, a process of its own answering
204 at once; WEBHOOK_ALLOW_INSECURE=true lets the worker call http://127.0.0.1); then
`--events` bookings made by the real code (bookings.services.booking_create, in process), each
writing its booking.created outbox event in its transaction. The signal that queues an event's
task after the commit is disconnected in that process, so nothing is queued yet.

Then one worker starts (`db_worker --interval 0.05 --no-startup-delay`, the production
settings, LOG_LEVEL `--log-level`), and once it polls the queue, every event's task is queued
at once, in one transaction: one `dispatch_events` task per event, as a web process queues
them when its batch window is 0 (`--events-per-task N`: N events per task, as a busy web
process's batch and cleanup's re-queue carry them).
Timed from that commit until every delivery is `delivered` (the receiver's count, then the
deliveries' state), and on until the queue is empty too: a task runs a sweep at most every 10 s
(notifications/sender.py, SWEEP_SECONDS) that dispatches events undispatched for longer, as a
killed worker's would be, so in a backlog older than that most events are dispatched by a sweep
and their own tasks then find nothing to do, which still costs the worker a poll, a claim and a
run each. CPU over both windows, over the deliveries, from /proc: the worker's process
(bench/load.py's CpuMeter; split into its main thread, which polls the queue and runs the
tasks, dispatch and sweeps included, and its sending threads); PostgreSQL's backends of the
database, sampled every 50 ms, less the queueing process's and this script's (the sending
threads reconnect often, and a backend that lived less than a sample is missed: a lower
bound); the receiver's too, so that "other" is only what else ran on the host. The run prints
how many events were dispatched by their own task and how many by a sweep, and how many
connections were made to the database (pg_stat_database.sessions).

Checks: every delivery delivered at its first attempt, every task successful, the receiver
had as many POSTs as there are deliveries. Exits 1 if one failed, 2 if the run could not be
made.

Run: `.venv/bin/python bench/deliveries.py [--events 2000] [--threads 8,1] [--endpoints 1]
[--events-per-task 1] [--json PATH] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from load import CpuMeter  # noqa: E402
from receiver import Receiver  # noqa: E402
from serving import (  # noqa: E402  (scripts/ is not a package)
    Backends,
    drop_database,
    recreate_database,
    run_to_the_end,
    service_env,
    set_up_django,
)

PYTHON = sys.executable
DATABASE_PREFIX = "bench_deliv"
CAPACITY = 1000  # flights.models.MAX_CAPACITY: one seat a booking, so this many bookings a flight.
WORKER_COMMAND = ["manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"]
POLL_SECONDS = 0.05
READY_TIMEOUT = 60.0
# The queue's table and the worker's poll of it, by which the bench sees the worker is up.
TASKS_TABLE = "django_tasks_database_dbtaskresult"


# Seeding, in a Django subprocess on the run's database -----------------------------------------


def run_django_task(args: argparse.Namespace) -> int:
    """This script re-invoked with `--django-task`: migrate, make the endpoints and the events,
    print a JSON line; then, on a line `go` from stdin, queue every event's task in one
    transaction and print the time of its commit."""
    set_up_django()
    import datetime as dt
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from bookings import outbox
    from bookings.models import OutboxEvent
    from bookings.services import booking_create
    from flights.services import flight_create
    from notifications.models import WebhookEndpoint
    from notifications.tasks import dispatch_events

    call_command("migrate", interactive=False, verbosity=0)
    for number in range(args.endpoints):
        WebhookEndpoint.objects.create(url=f"{args.webhook_url}/{number}", description=f"bench {number}")
    user = get_user_model().objects.create_user("bench-deliveries", password=None)
    departure = timezone.now() + dt.timedelta(days=30)
    flights = [
        flight_create(
            flight_number=f"BD{number}",
            departure_airport="BOM",
            arrival_airport="DEL",
            departure_time=departure,
            arrival_time=departure + dt.timedelta(hours=2),
            price=Decimal("4500.00"),
            capacity=CAPACITY,
        )
        for number in range(math.ceil(args.events / CAPACITY))
    ]
    # What the app does after each commit, not yet: the bench queues the tasks itself, below.
    outbox.events_committed.disconnect(dispatch_uid="notifications.enqueue_dispatch")
    started = time.monotonic()
    for number in range(args.events):
        booking_create(user=user, flight_id=flights[number // CAPACITY].pk, seats=1)
    event_ids = list(OutboxEvent.objects.order_by("pk").values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    seeded = {"events": len(event_ids), "seconds": time.monotonic() - started, "backend": backend}
    print(json.dumps(seeded), flush=True)

    if sys.stdin.readline().strip() != "go":
        return 1
    with transaction.atomic():
        for start in range(0, len(event_ids), args.events_per_task):
            dispatch_events.enqueue(event_ids[start : start + args.events_per_task])
    print(json.dumps({"committed_at": time.monotonic()}), flush=True)
    return 0


# One run ----------------------------------------------------------------------------------------


@dataclass
class RunResult:
    threads: int
    endpoints: int
    events: int
    deliveries: int
    seed_seconds: float
    seconds: float  # From the queue's commit to the last delivery delivered.
    # Over the window: worker (its main thread: polling the queue, running the dispatch tasks;
    # and its sending threads), PostgreSQL, bench.
    cpu_seconds: dict[str, float]
    worker_cpu_percent: float  # Of one core, over the window.
    other_cpu_percent: float  # Everything else on the host (not the receiver, PostgreSQL's backends, the bench).
    attempt_ms: dict[str, float]  # The attempts' own duration (send to answer), p50 and p99.
    queue_seconds: float  # From the queue's commit until every task had run too.
    # Events dispatched by their own task, and by the sweep of a task that ran before theirs
    # (an event older than SWEEP_SECONDS undispatched looks dropped); NaN if several a task.
    dispatched_by_task: float
    dispatched_by_sweep: float
    connections: int  # Made to PostgreSQL in the window (the worker's; pg_stat_database.sessions).
    problems: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else math.nan

    def ms_per_delivery(self, group: str) -> float:
        used = self.cpu_seconds.get(group)
        return math.nan if used is None or not self.deliveries else 1000 * used / self.deliveries


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-deliveries-"))
        self.databases: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.receiver: Receiver | None = None
        self.failed = True  # Until the checks pass: keep the logs.
        self.torn_down = False

    def execute(self) -> int:
        args = self.args
        print(f"machine: {machine_text(args)}", flush=True)
        print(
            f"{args.events} booking.created events, {args.endpoints} webhook endpoint(s) at a local receiver "
            f"answering 204, one worker; {args.events_per_task} event(s) per task; LOG_LEVEL={args.log_level}",
            flush=True,
        )
        self.receiver = Receiver(self.log_dir / "receiver.log")
        self.receiver.start()
        results = [self.one_run(index, threads) for index, threads in enumerate(args.threads, start=1)]
        print()
        print(table(results))
        self.failed = any(result.problems for result in results)
        if args.json:
            report = {
                "machine": machine_info(args),
                "options": {key: value for key, value in vars(args).items() if key != "django_task"},
                "runs": [
                    {
                        **asdict(result),
                        "deliveries_per_second": result.per_second,
                        "worker_cpu_ms_per_delivery": result.ms_per_delivery("worker"),
                        "postgres_cpu_ms_per_delivery": result.ms_per_delivery("PostgreSQL"),
                    }
                    for result in results
                ],
            }
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print("FAILED" if self.failed else "ok: every delivery delivered at its first attempt, each POST received")
        return 1 if self.failed else 0

    def env(self, database: str, threads: int) -> dict[str, str]:
        return service_env(
            f"{self.args.pg_url}/{database}",
            WEBHOOK_ALLOW_INSECURE="true",
            NOTIFICATION_SEND_THREADS=str(threads),
            LOG_LEVEL=self.args.log_level,
            LOG_FORMAT="json",
        )

    def one_run(self, index: int, threads: int) -> RunResult:
        args = self.args
        database = f"{args.db_prefix}_{index}"
        self.databases.append(database)
        recreate_database(args.pg_url, database)
        env = self.env(database, threads)
        url = f"{args.pg_url}/{database}"
        received_before = self.receiver.count()

        seeder = self.start(
            [
                __file__,
                "--django-task",
                "--events",
                str(args.events),
                "--endpoints",
                str(args.endpoints),
                "--events-per-task",
                str(args.events_per_task),
                "--webhook-url",
                self.receiver.url,
            ],
            env,
            f"seed-{index}",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        seeded = json.loads(read_line(seeder, "seeding"))
        deliveries = seeded["events"] * args.endpoints

        worker = self.start(WORKER_COMMAND, env, f"worker-{index}")
        self.wait_polling(url, database, worker)
        meter = CpuMeter({"worker": worker.pid, "receiver": self.receiver.process.pid}, [database])
        backends = Backends(args.pg_url, database, leave_out={seeded["backend"]})
        before, threads_before = meter.snapshot(), thread_cpu(worker.pid)
        backends.sample()
        sessions_before = backends.sessions()
        seeder.stdin.write("go\n")
        seeder.stdin.flush()
        committed_at = json.loads(read_line(seeder, "queueing"))["committed_at"]
        if seeder.wait(timeout=60) != 0:
            raise RuntimeError(f"queueing failed; see {self.log_dir}/seed-{index}.log")

        deadline = time.monotonic() + args.timeout
        expected = received_before + deliveries
        while self.receiver.count() < expected:
            self.check_alive(worker, index, deadline)
            backends.sample()
            time.sleep(POLL_SECONDS)
        with psycopg.connect(url, autocommit=True) as connection:
            backends.leave_out.add(connection.info.backend_pid)  # This script's polls.
            while delivered(connection) < deliveries:
                self.check_alive(worker, index, deadline)
                backends.sample()
                time.sleep(0.01)
            finished = time.monotonic()
            after, threads_after = meter.snapshot(), thread_cpu(worker.pid)
            postgres = backends.sample()
            # Then until the queue is empty too: tasks whose event was already dispatched (by
            # the sweep, notifications/sender.py) still cost the worker a poll, a claim and a run.
            while tasks_left(connection):
                self.check_alive(worker, index, deadline)
                backends.sample()
                time.sleep(POLL_SECONDS)
            emptied = time.monotonic()
            after_queue = meter.snapshot()
            postgres_queue = backends.sample()
            problems = check(connection, deliveries, self.receiver.count() - received_before)
            attempt_ms = attempt_durations(connection)
            by_task, by_sweep = dispatchers(connection)
        self.stop(worker)
        cpu = meter.figures(before, after)
        main_thread = threads_after[worker.pid] - threads_before.get(worker.pid, 0.0)
        cpu.seconds["worker main thread"] = main_thread
        cpu.seconds["worker sending threads"] = sum(
            seconds - threads_before.get(tid, 0.0) for tid, seconds in threads_after.items() if tid != worker.pid
        )
        whole = meter.figures(before, after_queue).seconds
        cpu.seconds.update({f"{group}, queue emptied": seconds for group, seconds in whole.items()})
        # PostgreSQL's from the sampled backends (CpuMeter leaves out those that ended).
        cpu.seconds["PostgreSQL"], cpu.seconds["PostgreSQL, queue emptied"] = postgres, postgres_queue
        # Made in the window, less this script's one connection for its polls.
        connections_made = backends.sessions() - sessions_before - 1
        backends.close()
        result = RunResult(
            threads=threads,
            endpoints=args.endpoints,
            events=seeded["events"],
            deliveries=deliveries,
            seed_seconds=seeded["seconds"],
            seconds=finished - committed_at,
            cpu_seconds=cpu.seconds,
            worker_cpu_percent=cpu.servers.get("worker", math.nan),
            other_cpu_percent=math.nan if cpu.other is None else cpu.other,
            attempt_ms=attempt_ms,
            queue_seconds=emptied - committed_at,
            connections=connections_made,
            dispatched_by_task=by_task,
            dispatched_by_sweep=by_sweep,
            problems=problems,
        )
        print(
            f"run {index}: NOTIFICATION_SEND_THREADS={threads}: {deliveries} deliveries in {result.seconds:.2f} s, "
            f"{result.per_second:.0f}/s; CPU ms a delivery: worker {result.ms_per_delivery('worker'):.2f} "
            f"(main thread {result.ms_per_delivery('worker main thread'):.2f}, sending threads "
            f"{result.ms_per_delivery('worker sending threads'):.2f}), "
            f"PostgreSQL {result.ms_per_delivery('PostgreSQL'):.2f}; worker {result.worker_cpu_percent:.0f}% of a "
            f"core, other processes {result.other_cpu_percent:.0f}%; "
            f"attempt p50 {attempt_ms['p50']:.0f} ms, p99 {attempt_ms['p99']:.0f} ms; "
            f"events dispatched by their task {result.dispatched_by_task:.0f}, by a sweep "
            f"{result.dispatched_by_sweep:.0f}; queue empty after {result.queue_seconds:.2f} s, worker CPU ms a "
            f"delivery until then {result.ms_per_delivery('worker, queue emptied'):.2f}, PostgreSQL "
            f"{result.ms_per_delivery('PostgreSQL, queue emptied'):.2f}; "
            f"{connections_made} connections made to PostgreSQL" + "".join(f"\n  - {problem}" for problem in problems),
            flush=True,
        )
        if not args.keep:
            drop_database(args.pg_url, database)
            self.databases.remove(database)
        return result

    def start(self, command: list[str], env: dict[str, str], name: str, **streams: Any) -> subprocess.Popen:
        """A process of the project, in its own session (process group), its stderr (and stdout
        unless piped) to a log."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [PYTHON, *command],
                env=env,
                cwd=ROOT,
                stdout=streams.pop("stdout", log),
                stderr=log,
                text=True,
                start_new_session=True,
                **streams,
            )
        self.processes.append(process)
        return process

    def wait_polling(self, url: str, database: str, worker: subprocess.Popen) -> None:
        """Until the worker's connection has polled the queue (Django is set up, it is in its loop)."""
        deadline = time.monotonic() + READY_TIMEOUT
        with psycopg.connect(f"{self.args.pg_url}/postgres", autocommit=True) as connection:
            while not connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                [database, f"%{TASKS_TABLE}%"],
            ).fetchone()[0]:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start polling; see {self.log_dir}")
                time.sleep(POLL_SECONDS)

    def check_alive(self, worker: subprocess.Popen, index: int, deadline: float) -> None:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}); see {self.log_dir}/worker-{index}.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every delivery delivered after {self.args.timeout:g} s; see {self.log_dir}")

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        """SIGTERM (the worker's graceful stop), then SIGKILL its group if it lingers."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def tear_down(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.receiver is not None:
            self.receiver.kill()
        if self.args.keep:
            print(f"kept: databases {', '.join(self.databases)}; logs in {self.log_dir}")
            return
        for database in self.databases:
            drop_database(self.args.pg_url, database)
        if self.failed:
            print(f"logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process so far, by thread id (the main thread's is the pid)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # The thread ended while we looked.
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def read_line(process: subprocess.Popen, what: str) -> str:
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"{what} failed ({process.returncode}); see its log")
    return line


def delivered(connection: psycopg.Connection) -> int:
    return connection.execute("SELECT count(*) FROM notifications_delivery WHERE state = 'delivered'").fetchone()[0]


def tasks_left(connection: psycopg.Connection) -> int:
    return connection.execute(f"SELECT count(*) FROM {TASKS_TABLE} WHERE status IN ('READY', 'RUNNING')").fetchone()[0]


def dispatchers(connection: psycopg.Connection) -> tuple[int, int]:
    """Events dispatched by their own task (dispatched once it had started), and by a sweep
    (before it started)."""
    return connection.execute(
        f"""SELECT count(*) FILTER (WHERE e.dispatched_at >= t.started_at),
                   count(*) FILTER (WHERE e.dispatched_at < t.started_at)
            FROM {TASKS_TABLE} AS t
            CROSS JOIN LATERAL jsonb_array_elements_text(t.args_kwargs -> 'args' -> 0) AS queued(event_id)
            JOIN bookings_outboxevent AS e ON e.id = queued.event_id::bigint"""
    ).fetchone()


def check(connection: psycopg.Connection, deliveries: int, received: int) -> list[str]:
    problems = []
    states = dict(connection.execute("SELECT state, count(*) FROM notifications_delivery GROUP BY state").fetchall())
    if states != {"delivered": deliveries}:
        problems.append(f"deliveries by state {states}, expected {deliveries} delivered")
    attempts = connection.execute("SELECT count(*) FROM notifications_deliveryattempt").fetchone()[0]
    if attempts != deliveries:
        problems.append(f"{attempts} attempts for {deliveries} deliveries")
    tasks = dict(connection.execute(f"SELECT status, count(*) FROM {TASKS_TABLE} GROUP BY status").fetchall())
    if set(tasks) != {"SUCCESSFUL"}:
        problems.append(f"tasks by status {tasks}")
    if received != deliveries:
        problems.append(f"the receiver had {received} POSTs for {deliveries} deliveries")
    return problems


def attempt_durations(connection: psycopg.Connection) -> dict[str, float]:
    p50, p99 = connection.execute(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms),"
        " percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms) FROM notifications_deliveryattempt"
    ).fetchone()
    return {"p50": float(p50 or 0), "p99": float(p99 or 0)}


# Output ---------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    with psycopg.connect(f"{args.pg_url}/postgres") as connection:
        postgres = connection.execute("SHOW server_version").fetchone()[0]
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def machine_text(args: argparse.Namespace) -> str:
    info = machine_info(args)
    return (
        f"{info['cores']} cores, {info['platform']}, Python {info['python']}, PostgreSQL {info['postgresql']}; "
        f"the worker, the receiver, PostgreSQL and the bench on the same cores; "
        f"load average {info['load_average_at_start']} at the start"
    )


def table(results: list[RunResult]) -> str:
    headers = [
        "run",
        "threads",
        "endpoints",
        "deliveries",
        "seconds",
        "deliveries/s",
        "worker CPU ms",
        "main / sending threads",
        "PostgreSQL CPU ms",
        "worker % of a core",
        "other %",
        "attempt p50 / p99 ms",
        "by task / sweep",
        "queue empty s",
        "connections made",
        "worker / PostgreSQL CPU ms till then",
    ]
    rows = [
        [
            str(index),
            str(result.threads),
            str(result.endpoints),
            str(result.deliveries),
            f"{result.seconds:.2f}",
            f"{result.per_second:.0f}",
            f"{result.ms_per_delivery('worker'):.2f}",
            f"{result.ms_per_delivery('worker main thread'):.2f} / "
            f"{result.ms_per_delivery('worker sending threads'):.2f}",
            f"{result.ms_per_delivery('PostgreSQL'):.2f}",
            f"{result.worker_cpu_percent:.0f}",
            f"{result.other_cpu_percent:.0f}",
            f"{result.attempt_ms['p50']:.0f} / {result.attempt_ms['p99']:.0f}",
            f"{result.dispatched_by_task:.0f} / {result.dispatched_by_sweep:.0f}",
            f"{result.queue_seconds:.2f}",
            str(result.connections),
            f"{result.ms_per_delivery('worker, queue emptied'):.2f} / "
            f"{result.ms_per_delivery('PostgreSQL, queue emptied'):.2f}",
        ]
        for index, result in enumerate(results, start=1)
    ]
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [headers, *rows]]
    return "CPU ms are per delivery, over the window\n" + "\n".join(lines)


# Arguments --------------------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each at least 1")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="booking.created events (default 2000)")
    parser.add_argument(
        "--threads",
        type=counts,
        default=[8, 1],
        help="NOTIFICATION_SEND_THREADS of each run, in turn; repeat one to run it again (default 8,1)",
    )
    parser.add_argument("--endpoints", type=int, default=1, help="webhook endpoints, a lane each (default 1)")
    parser.add_argument("--events-per-task", type=int, default=1, help="events per dispatch task (default 1)")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the worker (default INFO, as in production)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take (default 600)")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the logs")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server, no database name (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument(
        "--db-prefix", default=DATABASE_PREFIX, help=f"the throw-away databases' names (default {DATABASE_PREFIX})"
    )
    parser.add_argument("--django-task", action="store_true", help=argparse.SUPPRESS)  # See run_django_task.
    parser.add_argument("--webhook-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.events < 1 or args.endpoints < 1 or args.events_per_task < 1:
        parser.error("--events, --endpoints and --events-per-task must be at least 1")
    args.pg_url = args.pg_url.rstrip("/")
    return args


def main() -> int:
    args = parse_args()
    if args.django_task:
        return run_django_task(args)
    started = time.monotonic()
    status = run_to_the_end("bench-deliveries", Bench(args))
    print(f"took {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
