"""Child processes for CPU-bound work, driven straight from the worker's event loop.

Each child has a pipe for calls and a pipe for results, and the event loop reads and writes
both itself: no helper threads. ``concurrent.futures.ProcessPoolExecutor`` passes every call
through a manager thread and a queue-feeder thread, and the feeder pushes the source image
through the default 64 KB pipe in pieces, each write waiting for the child to drain the last;
those wake-ups and the threads' contention for the GIL cost a worker about a tenth of a core
at full speed. Here a call is one write of a small pickled header and the raw source bytes
into a pipe enlarged to hold a whole photo, and a result is one small pickled message back.

A child that dies (killed, out of memory, a crash in a native decoder) fails the call it was
running with ``ChildProcessDied``; the calls queued behind it go to another child, and the
next call starts a new child in its place. A call that has used more CPU time than the pool's
time limit has its child killed and fails with ``TimeLimitExceeded``; under an address-space
limit, a call that runs out of memory fails with ``MemoryLimitExceeded`` and its child
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import pickle
import resource
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
# glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8
# How soon a call close to its time limit is looked at again.
_RECHECK_SECONDS = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ChildProcessDied(Exception):
    """The child process running a call exited before it answered."""


class TimeLimitExceeded(Exception):
    """The call used more CPU time than the pool's time limit; its child was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def __str__(self) -> str:
        return f"took longer than {self.seconds:g} s"


class MemoryLimitExceeded(Exception):
    """The call needed more address space than the pool allows its children."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(limit_bytes)  # the only argument, so unpickling rebuilds it
        self.limit_bytes = limit_bytes

    def __str__(self) -> str:
        return f"needs more memory than {_format_bytes(self.limit_bytes)}"


def _format_bytes(size: int) -> str:
    """``size`` as a reason shows it: 2 GiB, 512 MiB, 1000 bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


class _NotStarted(Exception):
    """The call's child died before it reached the call: another child can run it."""


class _ChildProcess:
    """One child: its process, the loop's ends of its two pipes, its unanswered calls."""

    def __init__(self, context: ForkServerContext, initializer: Callable[[], None] | None,
                 time_limit: float | None, memory_limit: int | None) -> None:
        self._context = context
        self._initializer = initializer
        self._time_limit = time_limit
        self._memory_limit = memory_limit
        self.calls: deque[asyncio.Future[Any]] = deque()
        self.waiting_to_send = 0  # calls assigned to this child while it starts
        self.alive = False
        self._process: BaseProcess | None = None
        self._calls_out: asyncio.WriteTransport | None = None
        self._results_in: asyncio.ReadTransport | None = None
        self._starting = asyncio.Lock()
        self._ready: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._call_started_at: float | None = None  # the child's CPU seconds then
        self._overran: asyncio.Future[Any] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def ready(self) -> bool:
        """Started and past its initializer: calls sent now start the clock as they begin."""
        return self.alive and self._ready is not None and self._ready.done()

    async def ensure_started(self) -> None:
        async with self._starting:
            if not self.alive:
                await self._start()
        assert self._ready is not None
        # The child says when its initializer is done, so no call's time limit counts it.
        await asyncio.shield(self._ready)  # a cancelled caller leaves it for the others

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        calls_reader, calls_writer = self._context.Pipe(duplex=False)
        results_reader, results_writer = self._context.Pipe(duplex=False)
        _enlarge_pipe(calls_writer)
        process = self._context.Process(
            target=_serve,
            args=(calls_reader, results_writer, self._initializer, self._memory_limit),
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
        self._ready = loop.create_future()
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
        if len(self.calls) == 1:
            self._time_first_call()
        return future

    def _time_first_call(self) -> None:
        """Start the clock of the call the child works on now (it takes them in order).

        The clock counts the child's CPU time, not wall time: codec processes run at a low
        priority, and on a busy host one waits long for the CPU without its image being to
        blame (a 10 ms image took 2 s of wall time on a loaded 2-core machine).
        """
        if self._time_limit is not None:
            self._call_started_at = _cpu_seconds(self.pid)
            self._check_time_after(self._time_limit)

    def _check_time_after(self, seconds: float) -> None:
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._check_time)

    def _check_time(self) -> None:
        if not self.alive or not self.calls or self._process is None:
            return
        assert self._time_limit is not None
        now, started = _cpu_seconds(self.pid), self._call_started_at
        if now is not None and started is not None and now - started < self._time_limit:
            # CPU time runs no faster than wall time for each thread the child runs.
            self._check_time_after(max(self._time_limit - (now - started), _RECHECK_SECONDS))
            return
        self._overran = self.calls[0]
        log.warning("killing child process %s: a call used more than %g s of CPU",
                    self.pid, self._time_limit)
        self._process.kill()

    def answer(self, outcome: tuple[bool, Any]) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
            return
        succeeded, value = outcome
        if self._deadline is not None:
            self._deadline.cancel()
        future = self.calls.popleft()
        if self.calls:
            self._time_first_call()
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
        if self._deadline is not None:
            self._deadline.cancel()
        crashed = ChildProcessDied(f"child process {self.pid} exited (exit code {exit_code})")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(crashed)
        if self.calls and self.calls[0] is not self._overran:
            log.error("child process %s exited (exit code %s) with %d calls unanswered",
                      self.pid, exit_code, len(self.calls))
        for position, future in enumerate(self.calls):
            if future.done():
                continue
            if position:
                future.set_exception(_NotStarted())
            elif future is self._overran:
                assert self._time_limit is not None
                future.set_exception(TimeLimitExceeded(self._time_limit))
            else:
                future.set_exception(crashed)
        self.calls.clear()
        self._overran = None
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
            # Safe to unpickle: it comes from our own child over a private pipe.
            outcome = pickle.loads(self._buffer[_RESULT_HEADER.size:end])  # noqa: S301
            del self._buffer[:end]
            self._child.answer(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self._child.died()


class ChildProcessPool:
    """Runs ``function(source, *args)`` in one of ``processes`` children.

    ``function`` and ``args`` are pickled (module-level functions only); ``source`` travels
    as raw bytes. ``initializer`` runs in each child before its first call. ``time_limit``
    (seconds of CPU time per call, from when its child starts it) and ``memory_limit``
    (each child's address space, RLIMIT_AS, in bytes) are off when None.
    """

    def __init__(self, processes: int, *, initializer: Callable[[], None] | None = None,
                 depth: int = DEFAULT_DEPTH, time_limit: float | None = None,
                 memory_limit: int | None = None) -> None:
        if processes < 1 or depth < 1:
            raise ValueError("processes and depth must be at least 1")
        context = multiprocessing.get_context("forkserver")
        # forkserver: never fork a process that already runs asyncio, gRPC and NATS threads.
        self._children = [_ChildProcess(context, initializer, time_limit, memory_limit)
                          for _ in range(processes)]
        self._depth = depth
        self._slots = asyncio.Semaphore(processes * depth)
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The live children's process ids (tests, diagnostics)."""
        return [child.pid for child in self._children if child.alive and child.pid is not None]

    async def run(self, function: Callable[..., T], source: bytes, *args: Any) -> T:
        """Raises whatever ``function`` raised, ``ChildProcessDied``, ``TimeLimitExceeded``
        or ``MemoryLimitExceeded``."""
        async with self._slots:
            if self._closed:
                raise RuntimeError("the process pool is closed")
            while True:
                child = min(self._children, key=_load)
                child.waiting_to_send += 1
                try:
                    if not child.ready:
                        await child.ensure_started()
                finally:
                    child.waiting_to_send -= 1
                try:
                    return cast(T, await child.send(function, source, args))
                except _NotStarted:
                    if self._closed:
                        raise ChildProcessDied("the process pool closed before the call "
                                               "started") from None

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(child.stop() for child in self._children if child.alive))


def _cpu_seconds(pid: int | None) -> float | None:
    """The CPU time process ``pid`` has used, all its threads; None where Linux's /proc is not
    (the time limit then counts wall time)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime, in ticks


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

def _serve(calls: Connection, results: Connection, initializer: Callable[[], None] | None,
           memory_limit: int | None) -> None:
    """Answer calls until the worker closes the calls pipe or dies."""
    calls_fd, results_fd = calls.fileno(), results.fileno()
    _exit_when_the_worker_dies(results_fd)
    if initializer is not None:
        initializer()
    if memory_limit is not None:
        _limit_address_space(memory_limit)
    _write_all(results_fd, _pickle_outcome((True, None)))  # ready
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
            function, args = pickle.loads(call)  # noqa: S301  (from our parent, private pipe)
            outcome: tuple[bool, Any] = (True, function(source, *args))
        except MemoryError as error:
            outcome = (False, error if memory_limit is None
                       else MemoryLimitExceeded(memory_limit))
        except Exception as error:
            outcome = (False, error)
        try:
            _write_all(results_fd, _pickle_outcome(outcome))
        except BrokenPipeError:
            return  # the worker is gone: there is no one to answer


def _limit_address_space(limit: int) -> None:
    """Cap the child's address space, so an allocation past it fails with MemoryError.

    RLIMIT_AS counts reserved address space, and glibc reserves 64 MB for each malloc arena,
    up to eight per core as a codec's threads (AVIF's encoder starts one per core) come and
    go: two arenas keep the reservations from deciding what fits on a many-core host.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


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
