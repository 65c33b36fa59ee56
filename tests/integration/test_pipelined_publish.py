"""publish_acknowledged against a real JetStream: every message stored once, refusals raised."""

from __future__ import annotations

import uuid

import pytest

from pixpipe.bus import JOBS_STREAM, Bus, jobs_subject
from pixpipe.pipelined_publish import PublishError, publish_acknowledged


async def test_every_message_is_stored_once_through_a_small_window(bus: Bus) -> None:
    subject = jobs_subject(str(uuid.uuid4()))
    messages = [(subject, f"m{n}", b'{"n":%d}' % n) for n in range(5000)]
    try:
        published = await publish_acknowledged(bus.client, messages, window=64, timeout=5)
        again = await publish_acknowledged(bus.client, messages[:100], window=64, timeout=5)
        stream = await bus.js.stream_info(JOBS_STREAM, subjects_filter=subject)
        last = await bus.js.get_last_msg(JOBS_STREAM, subject)
    finally:
        await bus.js.purge_stream(JOBS_STREAM, subject=subject)
    assert (published, again) == (5000, 100)
    assert stream.state.subjects == {subject: 5000}  # the second run was de-duplicated
    assert last.data == b'{"n":4999}' and last.headers == {"Nats-Msg-Id": "m4999"}


async def test_a_message_no_stream_takes_is_an_error(bus: Bus) -> None:
    messages = [(f"pixpipe.nowhere.{n}", f"m{n}", b"x") for n in range(10)]
    with pytest.raises(PublishError, match="status 503"):
        await publish_acknowledged(bus.client, messages, window=4, timeout=5)
