"""A real webhook receiver for the tests: an HTTP server on a free loopback port, in a thread,
that records every POST (headers and body) and answers as a test scripts it (a status, a
delay, a redirect, an endless body)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.private_servers import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    location: str | None = None  # with a 3xx status
    body_bytes: int = 0  # an answer this long, written 64 KiB at a time
    written: list[int] = field(default_factory=list)  # bytes of body written, per answer


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with owner._lock:
                    owner.received.append(Received(self.path, dict(self.headers.items()),
                                                   body, time.time()))
                how = owner.behaviour
                time.sleep(how.delay)
                self.send_response(how.status)
                if how.location:
                    self.send_header("location", how.location)
                self.send_header("content-length", str(how.body_bytes))
                self.end_headers()
                written = 0
                try:
                    while written < how.body_bytes:
                        self.wfile.write(b"x" * (64 << 10))
                        written += 64 << 10
                except OSError:
                    pass
                how.written.append(written)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int = 1, timeout: float = 60) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.1)
        raise TimeoutError(f"{len(self.received)} of {count} deliveries arrived")
