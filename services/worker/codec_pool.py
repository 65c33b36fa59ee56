"""Child processes for CPU-bound work, driven straight from the worker's event loop.

Each child has a pipe for calls and a pipe for results, and the event loop reads and writes
both itself: no helper threads. ``concurrent.futures.ProcessPoolExecutor`` passes every call
through a manager thread and a queue-feeder thread, and the feeder pushes the source image
through the default 64 KB pipe in pieces, each write waiting for the child to drain the last;
those wake-ups and the threads' contention for the GIL cost a worker about a tenth of a core
at full speed. Here a call is one write of a small pickled header and the raw source bytes
into a pipe enlarged to hold a whole photo, and a result is one small pickled message back.

A child that dies (killed, out of memory, a crash in a native decoder) fails the calls it had
with ``ChildProcessDied``; the next call starts a new child in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing
import os
import pickle
import select
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")

# A call: the lengths of the pickled (function, arguments) and of the raw source that follow.
_CALL_HEADER = struct.Struct("!IQ")
# A result: the length of the pickled (succeeded, value or exception) that follows.
_RESULT_HEADER = struct.Struct("!I")
# Room for a typical product photo in one write; Linux's default pipe holds only 64 KB.
_PIPE_BYTES = 1024 * 1024
_READ_BYTES = 1024 * 1024
# Calls queued in each child's pipe, so it starts the next one without waiting for the loop.
DEFAULT_DEPTH = 2
_STOP_SECONDS = 5.0


class ChildProcessDied(Exception):
    """The child process running a call exited before it answered."""


class _ChildProcess:
    """One child: its process, the loop's ends of its two pipes, its unanswered calls."""

    def __init__(self, context: ForkServerContext,
                 initializer: Callable[[], None] | None) -> None:
        self._context = context
        self._initializer = initializer
        self.calls: deque[asyncio.Future[Any]] = deque()
        self.waiting_to_send = 0  # calls assigned to this child while it starts
        self.alive = False
        self._process: BaseProcess | None = None
        self._calls_out: asyncio.WriteTransport | None = None
        self._results_in: asyncio.ReadTransport | None = None
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def ensure_started(self) -> None:
        async with self._starting:
            if not self.alive:
                await self._start()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        calls_reader, calls_writer = self._context.Pipe(duplex=False)
        results_reader, results_writer = self._context.Pipe(duplex=False)
        _enlarge_pipe(calls_writer)
        process = self._context.Process(
            target=_serve, args=(calls_reader, results_writer, self._initializer),
            name="pixpipe-codec", daemon=True)
        try:
            # Starting talks to the fork server: a blocking exchange, kept off the loop.
            await asyncio.to_thread(process.start)
        except BaseException:
            calls_writer.close()
            results_reader.close()
            raise
        finally:
            calls_reader.close()
            results_writer.close()
        self._process = process
        self.alive = True
        self._calls_out, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, calls_writer)
        self._results_in, _ = await loop.connect_read_pipe(
            lambda: _ResultReader(self), results_reader)

    def send(self, function: Callable[..., Any], source: bytes,
             args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._calls_out is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        self._calls_out.write(_CALL_HEADER.pack(len(call), len(source)) + call)
        self._calls_out.write(source)
        self.calls.append(future)
        return future

    def answer(self, outcome: tuple[bool, Any]) -> None:
        succeeded, value = outcome
        future = self.calls.popleft()
        if future.done():  # its caller was cancelled; the child's answer goes nowhere
            return
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)

    def died(self) -> None:
        """The results pipe closed: the child has exited."""
        if not self.alive:
            return
        self.alive = False
        if self._process is not None:
            self._process.join(0)  # reap it if it is gone already
        exit_code = self._process.exitcode if self._process is not None else None
        if self.calls:
            log.error("child process %s exited (exit code %s) with %d calls unanswered",
                      self.pid, exit_code, len(self.calls))
        while self.calls:
            future = self.calls.popleft()
            if not future.done():
                future.set_exception(ChildProcessDied(
                    f"child process {self.pid} exited (exit code {exit_code})"))
        if self._calls_out is not None and not self._calls_out.is_closing():
            self._calls_out.abort()

    async def stop(self) -> None:
        """Close the calls pipe (the child exits after its current call) and wait for it."""
        if self._calls_out is not None:
            self._calls_out.close()
        process = self._process
        if process is not None and process.pid is not None:
            await asyncio.to_thread(process.join, _STOP_SECONDS)
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join)
        if self._results_in is not None:
            self._results_in.close()
        self.died()


class _ResultReader(asyncio.Protocol):
    def __init__(self, child: _ChildProcess) -> None:
        self._child = child
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _RESULT_HEADER.size:
            (size,) = _RESULT_HEADER.unpack_from(self._buffer)
            end = _RESULT_HEADER.size + size
            if len(self._buffer) < end:
                return
            outcome = pickle.loads(self._buffer[_RESULT_HEADER.size:end])
            del self._buffer[:end]
            self._child.answer(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self._child.died()


class ChildProcessPool:
    """Runs ``function(source, *args)`` in one of ``processes`` children.

    ``function`` and ``args`` are pickled (module-level functions only); ``source`` travels
    as raw bytes. ``initializer`` runs in each child before its first call.
    """

    def __init__(self, processes: int, *, initializer: Callable[[], None] | None = None,
                 depth: int = DEFAULT_DEPTH) -> None:
        if processes < 1 or depth < 1:
            raise ValueError("processes and depth must be at least 1")
        context = multiprocessing.get_context("forkserver")
        # forkserver: never fork a process that already runs asyncio, gRPC and NATS threads.
        self._children = [_ChildProcess(context, initializer) for _ in range(processes)]
        self._depth = depth
        self._slots = asyncio.Semaphore(processes * depth)
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The live children's process ids (tests, diagnostics)."""
        return [child.pid for child in self._children if child.alive and child.pid is not None]

    async def run(self, function: Callable[..., T], source: bytes, *args: Any) -> T:
        """Raises whatever ``function`` raised, or ``ChildProcessDied``."""
        async with self._slots:
            if self._closed:
                raise RuntimeError("the process pool is closed")
            child = min(self._children, key=_load)
            child.waiting_to_send += 1
            try:
                if not child.alive:
                    await child.ensure_started()
            finally:
                child.waiting_to_send -= 1
            future = child.send(function, source, args)
            return cast(T, await future)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(child.stop() for child in self._children if child.alive))


def _load(child: _ChildProcess) -> int:
    return len(child.calls) + child.waiting_to_send


def _enlarge_pipe(connection: Connection) -> None:
    # Linux only, and capped by /proc/sys/fs/pipe-max-size; elsewhere the default stays.
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(connection.fileno(), set_size, _PIPE_BYTES)


# --- in the child -------------------------------------------------------------------------

def _serve(calls: Connection, results: Connection,
           initializer: Callable[[], None] | None) -> None:
    """Answer calls until the worker closes the calls pipe or dies."""
    calls_fd, results_fd = calls.fileno(), results.fileno()
    _exit_when_the_worker_dies(results_fd)
    if initializer is not None:
        initializer()
    while True:
        header = _read_exactly(calls_fd, _CALL_HEADER.size)
        if header is None:
            return
        call_size, source_size = _CALL_HEADER.unpack(header)
        call = _read_exactly(calls_fd, call_size)
        source = _read_exactly(calls_fd, source_size)
        if call is None or source is None:
            return
        try:
            function, args = pickle.loads(call)
            outcome: tuple[bool, Any] = (True, function(source, *args))
        except Exception as error:
            outcome = (False, error)
        try:
            _write_all(results_fd, _pickle_outcome(outcome))
        except BrokenPipeError:
            return  # the worker is gone: there is no one to answer


def _exit_when_the_worker_dies(results_fd: int) -> None:
    """Exit quietly, even mid-call, once the worker is gone.

    A worker killed outright (SIGKILL, the OOM killer) leaves its children to the fork
    server, so PR_SET_PDEATHSIG would not fire: the fork server lives on while any child
    holds its "alive" pipe, as each one does. The worker's death does close the read end of
    the results pipe, which a blocked poll() of the write end reports as POLLERR; this
    thread then ends the call in hand through SystemExit (a half-written output file is
    still removed) instead of finishing work no one will collect.
    """
    signal.signal(signal.SIGTERM, _exit_quietly)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def watch() -> None:
        poller = select.poll()
        poller.register(results_fd, 0)  # errors and hang-ups are reported regardless
        poller.poll()
        signal.pthread_kill(main_thread, signal.SIGTERM)

    threading.Thread(target=watch, name="pixpipe-codec-orphan-watch", daemon=True).start()


def _exit_quietly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _pickle_outcome(outcome: tuple[bool, Any]) -> bytes:
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # an exception or result that cannot cross processes
        described = RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]} "
                                 f"(not picklable: {error})")
        payload = pickle.dumps((False, described), protocol=pickle.HIGHEST_PROTOCOL)
    return _RESULT_HEADER.pack(len(payload)) + payload


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at end of file."""
    if size == 0:
        return b""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = os.read(fd, min(remaining, _READ_BYTES))
        if not part:
            return None
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
