"""A real loopback HTTP server for tests: the image corpus plus programmable routes."""

from __future__ import annotations

import mimetypes
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from tests.support.paths import corpus_root

DEFAULT_CORPUS = corpus_root()

Route = Callable[["Exchange"], None]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]


class CorpusHttpServer:
    """Serves ``directory`` on 127.0.0.1 from a background thread; use as a context manager.

    Extra routes answer exact paths (query ignored) before the directory is consulted.
    ``stop()`` releases handlers parked in ``hang`` routes and closes open keep-alive
    connections, so no thread outlives the server.
    """

    def __init__(self, directory: Path | str = DEFAULT_CORPUS, *, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self.tls = tls
        self.stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/{path.lstrip('/')}"

    def start(self) -> None:
        self.stopping.clear()
        self._server = _Server((self.host, 0), self)
        # A short poll interval keeps stop() quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"corpus-http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Hang up every open connection, as a server closing idle keep-alives does."""
        assert self._server is not None, "server not started"
        self._server.drop_connections()

    # Programmable routes.

    def route(self, path: str, handler: Route) -> str:
        """Answer ``path`` with ``handler``; returns the route's full URL."""
        with self._lock:
            self._routes[path] = handler
        return self.url(path)

    def respond(self, path: str, *, status: int = 200, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> str:
        """A fixed answer. A ``Content-Length`` in ``headers`` is sent as is, even if false."""
        def handler(exchange: Exchange) -> None:
            exchange.send(status, body, headers)
        return self.route(path, handler)

    def redirect(self, path: str, location: str, *, status: int = 302) -> str:
        return self.respond(path, status=status, headers={"Location": location})

    def redirect_chain(self, prefix: str, hops: int, final_location: str) -> str:
        """``hops`` redirects ``prefix``0 → ``prefix``1 → … → ``final_location``."""
        for hop in range(hops):
            target = f"{prefix}{hop + 1}" if hop + 1 < hops else final_location
            self.redirect(f"{prefix}{hop}", target)
        return self.url(f"{prefix}0")

    def hang(self, path: str, *, after_headers: bool = False) -> str:
        """Never answer (or stop after the headers) until the server stops."""
        def handler(exchange: Exchange) -> None:
            if after_headers:
                exchange.send_response(200)
                exchange.send_header("Content-Type", "image/jpeg")
                exchange.send_header("Content-Length", "1000")
                exchange.end_headers()
                exchange.wfile.flush()
            self.stopping.wait()
            exchange.close_connection = True
        return self.route(path, handler)

    def stream(self, path: str, chunks: Callable[[], Iterable[bytes]], *,
               content_type: str = "image/jpeg") -> str:
        """A chunked body (no Content-Length) from a fresh ``chunks()`` per request."""
        def handler(exchange: Exchange) -> None:
            exchange.send_response(200)
            exchange.send_header("Content-Type", content_type)
            exchange.send_header("Transfer-Encoding", "chunked")
            exchange.end_headers()
            for chunk in chunks():
                if self.stopping.is_set():
                    exchange.close_connection = True
                    return
                exchange.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            exchange.wfile.write(b"0\r\n\r\n")
        return self.route(path, handler)

    def _find_route(self, path: str) -> Route | None:
        with self._lock:
            return self._routes.get(path)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class Exchange(BaseHTTPRequestHandler):
    """One request; routes get it to answer with ``send`` or by writing ``wfile`` raw."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def send(self, status: int, body: bytes = b"",
             headers: Mapping[str, str] | None = None) -> None:
        headers = dict(headers or {})
        declared = headers.setdefault("Content-Length", str(len(body)))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if declared != str(len(body)):
            # The body length is a lie; closing is the only way to end the message.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        app._record(RecordedRequest(self.command, path, dict(self.headers.items())))
        try:
            route = app._find_route(path)
            if route is not None:
                route(self)
            else:
                self._serve_file(app.directory, path)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (size limit, timeout); that is what the test wanted.
            self.close_connection = True

    def _serve_file(self, root: Path, path: str) -> None:
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            self.send(404, b"not found", {"Content-Type": "text/plain"})
            return
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self.send(200, file.read_bytes(), {"Content-Type": content_type})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: CorpusHttpServer) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Exchange)

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self.app.tls is None:
            return connection, address
        try:
            return self.app.tls.wrap_socket(connection, server_side=True), address
        except OSError:
            connection.close()  # a client that refused our certificate
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-exchange (size limit, timeout) is expected; anything else
        # is a bug in a route and deserves the traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Unblock handlers waiting for the next keep-alive request by closing their sockets."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
