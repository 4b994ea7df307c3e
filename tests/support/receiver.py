"""A webhook receiver on a real socket, in a thread of the test process: it records every
request it gets and answers as the test scripts it (a status, a redirect, a hold)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    # When the receiver had read it (time.monotonic()).
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.received: list[Received] = []
        self._answers: deque[int] = deque()
        self.always: int = 200
        # Seconds each request takes to answer (overlapping requests would show).
        self.delay = 0.0
        # webhook-ids that had two requests in flight at once.
        self.overlaps: list[str] = []
        self._in_flight: Counter[str] = Counter()
        # While set, every request waits (in its own thread) until `release()`.
        self._hold = threading.Event()
        self._hold.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def answer(self, *statuses: int) -> None:
        """The next requests get these statuses, in order; then `always` (200)."""
        with self._lock:
            self._answers.extend(statuses)

    def hold(self) -> None:
        self._hold.clear()

    def release(self) -> None:
        self._hold.set()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Until `count` requests have arrived (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.received)} of {count} requests arrived: {self.received}"
                self._lock.wait(left)
            return list(self.received)

    def types(self) -> list[str]:
        import json

        return [json.loads(request.body)["type"] for request in self.received]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                webhook_id = request.headers.get("webhook-id", "")
                with receiver._lock:
                    receiver.received.append(request)
                    receiver._in_flight[webhook_id] += 1
                    if receiver._in_flight[webhook_id] > 1:
                        receiver.overlaps.append(webhook_id)
                    receiver._lock.notify_all()
                    status = receiver._answers.popleft() if receiver._answers else receiver.always
                receiver._hold.wait(30)
                time.sleep(receiver.delay)
                with receiver._lock:
                    receiver._in_flight[webhook_id] -= 1
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url + "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
