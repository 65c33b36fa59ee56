"""One database read of a request serves every watcher that asked for it before it began."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pixpipe.db.repository import Repository
from pixpipe.domain import RequestView
from pixpipe.status_messages import snapshot_event


@dataclass(frozen=True)
class Snapshot:
    view: RequestView
    # The snapshot message, serialised once for every watcher that receives it.
    wire: bytes


class SnapshotLoader:
    """Single-flight reads of a request's full state, for watchers joining or resynchronising.

    A hundred watchers that open a stream on a running request at once would otherwise read
    its hundreds of images a hundred times, stalling every live stream of the notifier. At
    most one read per request runs; callers arriving meanwhile share the next one.

    A caller only ever shares a read that starts after it asked. Watchers register for live
    events before asking, so whatever such a read misses reaches them as an event.
    """

    def __init__(self, repository: Repository, *, public_base_url: str) -> None:
        self._repository = repository
        self._public_base_url = public_base_url
        self._running: dict[str, asyncio.Task[Snapshot | None]] = {}
        self._next: dict[str, asyncio.Task[Snapshot | None]] = {}
        self.reads = 0  # database reads done, for tests and metrics

    async def load(self, request_id: str) -> Snapshot | None:
        task = self._next.get(request_id)
        if task is None:
            task = asyncio.create_task(self._read_after(request_id,
                                                        self._running.get(request_id)))
            self._next[request_id] = task
        # A caller going away (a watcher disconnecting) must not cancel the others' read.
        return await asyncio.shield(task)

    async def _read_after(self, request_id: str,
                          running: asyncio.Task[Snapshot | None] | None) -> Snapshot | None:
        if running is not None:
            await asyncio.wait([running])  # its outcome is its callers' business
        # The read begins now: from here on, new callers need the next one.
        this = asyncio.current_task()
        assert this is not None
        del self._next[request_id]
        self._running[request_id] = this
        try:
            self.reads += 1
            view = await self._repository.get_request(request_id)
            if view is None:
                return None
            wire = snapshot_event(view, self._public_base_url).SerializeToString()
            return Snapshot(view=view, wire=wire)
        finally:
            if self._running.get(request_id) is this:
                del self._running[request_id]
