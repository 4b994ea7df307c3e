"""gunicorn's settings for `make serve` and production: `gunicorn -c gunicorn.conf.py`.

Workers and threads come from the Django settings (GUNICORN_WORKERS, GUNICORN_THREADS), so
that one place reads the environment and validates it.
"""

import os
import sys
from pathlib import Path

# Started from anywhere, gunicorn finds the project (and this file's imports do too).
chdir = str(Path(__file__).resolve().parent)
sys.path.insert(0, chdir)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookings_project.settings")

from django.conf import settings  # noqa: E402

wsgi_app = "bookings_project.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Threads share a worker's memory and answer while another thread waits on the database
# or a remote call (the GIL is released on I/O); processes use every core. Behind nginx
# (deploy/nginx.conf), which buffers bodies and answers, the sync worker would be safe from
# slow clients too; measured on 2 cores through nginx (docs/performance.md#worker-model),
# gthread 5 x 4 cost 18-20 ms of app CPU per flow at 10 users against 24-26 for 5 sync
# workers (and 27 for 9), and about the same at 50 users: gthread fills the cores while a
# request waits on PostgreSQL or the payment gateway, where a sync worker would sit idle.
worker_class = "gthread"
workers = settings.GUNICORN_WORKERS
threads = settings.GUNICORN_THREADS
# A worker takes a connection only while it has a thread free for it, so the kernel hands
# each one to a worker that can answer now. By default a gthread worker accepts up to 1,000
# and queues them behind its own threads while another worker idles: at 50 users through
# nginx that made p99 1.1-1.6 s, against 0.35-0.48 s this way (docs/performance.md#worker-model).
# gthread keeps a connection alive only past its threads: GUNICORN_KEEPALIVE_CONNECTIONS more.
worker_connections = threads + settings.GUNICORN_KEEPALIVE_CONNECTIONS
# A request past this is killed. Our slowest honest request is a payment: the gateway's
# read timeout, its connect timeout and a Flights call behind it.
timeout = settings.GUNICORN_TIMEOUT
graceful_timeout = 20
# Longer than a load balancer's idle timeout would close the connection under it.
keepalive = 75
# The app is loaded once, in the master: a worker forked later (a restart after max_requests,
# or to replace a dead one) serves at once, and a broken configuration stops the master.
preload_app = True
# Workers are recycled now and then, at different moments, so a slow leak cannot grow.
max_requests = 5000
max_requests_jitter = 500
# Our request log (bookings_project.requests) has each request with its id; gunicorn's
# access log would say the same again.
accesslog = None
errorlog = "-"
# The longest request line gunicorn allows (nginx's default buffer is as long): past it
# gunicorn answers 414 in HTML, which no API client expects.
limit_request_line = 8190
# gunicorn 27 opens a control socket in $HOME by default; two masters on one host (two
# services, a blue/green switch) would fight over it, and we do not use it.
control_socket_disable = True
# The heartbeat files in RAM, not on a disk that can stall (containers often have /tmp on overlayfs).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn's own lines (workers started, killed, timed out) in the app's format, so that
# stderr stays one JSON object per line with LOG_FORMAT=json.
if settings.LOG_FORMAT == "json":
    from gunicorn.glogging import Logger

    from bookings_project.logs import JsonFormatter

    class JsonLogger(Logger):
        def setup(self, cfg) -> None:
            super().setup(cfg)
            for handler in self.error_log.handlers:
                handler.setFormatter(JsonFormatter())

    logger_class = JsonLogger
