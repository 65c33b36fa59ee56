"""A real HTTP webhook receiver for tests: scripted answers, every POST recorded."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from pixpipe.dev.embedded_nats import free_port

HANG = -1  # a scripted answer that never comes (until the receiver stops)


@dataclass(frozen=True)
class ReceivedPost:
    path: str
    headers: Mapping[str, str]
    body: bytes
    answered: int


class WebhookReceiver:
    """Answers POSTs with the scripted status codes in turn (then 200); can stop and restart
    on the same port to play a receiver that is down for a while."""

    def __init__(self, script: list[int] | None = None, *, port: int | None = None,
                 retry_after: str | None = None) -> None:
        self.port = port or free_port()
        self.script = list(script or [])
        self.retry_after = retry_after
        self.posts: list[ReceivedPost] = []
        self.received = threading.Condition()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._stopping.clear()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.received:
                    status = receiver.script.pop(0) if receiver.script else 200
                if status == HANG:
                    receiver._stopping.wait()
                    self.close_connection = True
                    return
                self.send_response(status)
                if receiver.retry_after and status >= 400:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver.received:
                    receiver.posts.append(ReceivedPost(self.path, dict(self.headers.items()),
                                                       body, status))
                    receiver.received.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def successes(self) -> list[ReceivedPost]:
        return [post for post in self.posts if 200 <= post.answered < 300]

    def wait_for_success(self, timeout: float = 30.0) -> ReceivedPost:
        with self.received:
            if not self.received.wait_for(lambda: self.successes(), timeout=timeout):
                raise TimeoutError(f"no successful webhook within {timeout} s: {self.posts}")
            return self.successes()[0]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
