"""A live progress bar driven by a request's watch events (counters only, any size)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from pixpipe.v1 import status_pb2


class RateColumn(ProgressColumn):
    """Images per second so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:5.1f} img/s" if speed else "  –   img/s", style="progress.data.speed")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"), RateColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )


async def follow(events: AsyncIterator[status_pb2.WatchStatusResponse],
                 console: Console) -> status_pb2.RequestStatus:
    """Drive the bar from watch events; returns the final status.

    Only the counters are read: a snapshot or completion carries at most the first page of
    images, and the failures are listed afterwards by the caller.
    """
    final: status_pb2.RequestStatus | None = None
    with progress_bar(console) as progress:
        task = progress.add_task("processing", total=None, failed=0)
        async for event in events:
            kind = event.WhichOneof("event")
            if kind in ("snapshot", "completed"):
                status = getattr(event, kind)
                done, total, failed = status.completed + status.failed, status.total, status.failed
                if kind == "completed":
                    final = status
            elif kind == "image":
                image = event.image
                done, total, failed = image.completed + image.failed, image.total, image.failed
            else:
                continue
            progress.update(task, completed=done, total=total, failed=failed)
    if final is None:
        raise ConnectionError("the status stream ended before the request finished")
    return final
