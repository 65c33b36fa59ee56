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


async def test_shared_headers_go_with_every_message_beside_its_id(bus: Bus) -> None:
    subject = jobs_subject(str(uuid.uuid4()))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    # Ids of their own: the stream would take others' from its duplicate window for repeats.
    messages = [(subject, f"{subject}.m{n}", b'{"n":%d}' % n) for n in range(3)]
    try:
        await publish_acknowledged(bus.client, messages, window=64, timeout=5,
                                   headers={"traceparent": traceparent})
        stored, seq = [], 1
        for _ in messages:
            stored.append(await bus.js.get_msg(JOBS_STREAM, seq, subject=subject, next=True))
            seq = (stored[-1].seq or seq) + 1
    finally:
        await bus.js.purge_stream(JOBS_STREAM, subject=subject)
    assert [(message.data, message.headers) for message in stored] == [
        (payload, {"Nats-Msg-Id": message_id, "traceparent": traceparent})
        for _, message_id, payload in messages]


async def test_a_message_no_stream_takes_is_an_error(bus: Bus) -> None:
    messages = [(f"pixpipe.nowhere.{n}", f"m{n}", b"x") for n in range(10)]
    with pytest.raises(PublishError, match="status 503"):
        await publish_acknowledged(bus.client, messages, window=4, timeout=5)
