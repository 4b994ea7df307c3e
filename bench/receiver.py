"""A webhook receiver for the benches, in a process of its own (so that its CPU is nobody's
group): every POST is read and answered 204 at once, on HTTP/1.1 (the sender's connections
stay alive, as with a real receiver); `GET /count` answers how many POSTs it has had.

Run: `.venv/bin/python bench/receiver.py --port PORT` (it prints `ready` once it listens);
the benches start it with `Receiver`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from serving import free_port

START_TIMEOUT = 10.0


class Receiver:
    """bench/receiver.py on a free loopback port, in its own session (process group)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--port", str(self.port)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        # Its first line once it listens (a timer kills it if it never comes).
        timer = threading.Timer(START_TIMEOUT, self.kill)
        timer.start()
        try:
            line = self.process.stdout.readline().strip()
        finally:
            timer.cancel()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"the webhook receiver did not start; see {self.log_path}")

    def count(self) -> int:
        """POSTs received so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=5) as answer:
            return int(answer.read())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()


def serve(port: int) -> int:
    lock = threading.Lock()
    received = 0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal received
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received += 1
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                body = str(received).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    return serve(parser.parse_args().port)


if __name__ == "__main__":
    sys.exit(main())
