"""Module-level functions for ChildProcessPool tests: children import them by name."""

from __future__ import annotations

import os
import threading
import time


def describe(source: bytes, tag: str) -> tuple[str, int, int]:
    """The tag, the source's length and the child's pid."""
    return tag, len(source), os.getpid()


def wait_then_describe(source: bytes, seconds: float, tag: str) -> tuple[str, int, int]:
    time.sleep(seconds)
    return describe(source, tag)


def spin_then_describe(source: bytes, seconds: float, tag: str) -> tuple[str, int, int]:
    """Busy for ``seconds`` of CPU time (sleeping would use none)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return describe(source, tag)


def raise_value_error(source: bytes, message: str) -> None:
    raise ValueError(message)


class _HoldsALock(Exception):
    """An exception that cannot be pickled (a lock is one of its arguments)."""


def raise_unpicklable(source: bytes) -> None:
    raise _HoldsALock("with a lock", threading.Lock())


def exit_abruptly(source: bytes, code: int) -> None:
    os._exit(code)
