"""ChildProcessPool and CodecPool with real child processes (forkserver, pipes, Pillow)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from pixpipe.codec import TransformOptions
from pixpipe.domain import ImageJob, RequestOptions
from pixpipe.errors import DecodeError
from pixpipe.storage import ImageStore
from pixpipe_services.worker.codec_pool import ChildProcessDied, ChildProcessPool, TimeLimitExceeded
from pixpipe_services.worker.processor import CodecPool, TransientFailure
from tests.support import child_calls
from tests.support.paths import corpus_root


@pytest.fixture
async def pool() -> AsyncIterator[ChildProcessPool]:
    pool = ChildProcessPool(2, depth=2)
    yield pool
    await pool.aclose()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purposes
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_many_calls_each_get_their_own_answer(pool: ChildProcessPool) -> None:
    # Far more calls than processes × depth, with sources of many sizes (up to 3 MB, more
    # than the enlarged pipe holds): every answer must match its own call.
    sizes = [index * 37_001 % 3_000_000 for index in range(60)]
    answers = await asyncio.gather(*(
        pool.run(child_calls.describe, bytes([index % 251]) * size, f"call-{index}")
        for index, size in enumerate(sizes)))

    assert [(tag, length) for tag, length, _ in answers] == [
        (f"call-{index}", size) for index, size in enumerate(sizes)]
    assert {pid for _, _, pid in answers} == set(pool.pids)
    assert len(pool.pids) == 2 and os.getpid() not in pool.pids


async def test_an_exception_in_the_child_reaches_the_caller(pool: ChildProcessPool) -> None:
    with pytest.raises(ValueError, match="bad input"):
        await pool.run(child_calls.raise_value_error, b"x", "bad input")
    with pytest.raises(RuntimeError, match=r"_HoldsALock: .*not picklable"):
        await pool.run(child_calls.raise_unpicklable, b"x")
    # The children are still serving.
    assert (await pool.run(child_calls.describe, b"abc", "after"))[:2] == ("after", 3)


async def test_a_child_killed_mid_call_fails_its_calls_and_is_replaced(
        pool: ChildProcessPool) -> None:
    await pool.run(child_calls.describe, b"", "start both")
    await pool.run(child_calls.describe, b"", "start both")
    slow = [asyncio.create_task(pool.run(child_calls.wait_then_describe, b"", 30.0, f"slow-{i}"))
            for i in range(2)]
    # Both children hold a 30 s call; kill the first one's child.
    await asyncio.sleep(0.2)
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)

    with pytest.raises(ChildProcessDied, match=f"child process {victim} exited"):
        await asyncio.wait_for(slow[0], 10)
    assert not slow[1].done()
    # The next call goes to a fresh child in the dead one's place.
    tag, _, pid = await asyncio.wait_for(pool.run(child_calls.describe, b"", "next"), 10)
    assert tag == "next" and pid != victim and victim not in pool.pids
    assert len(pool.pids) == 2
    slow[1].cancel()
    for pid in pool.pids:  # rather than let closing wait out the 30 s call
        os.kill(pid, signal.SIGKILL)


async def test_a_child_that_exits_by_itself_is_replaced(pool: ChildProcessPool) -> None:
    with pytest.raises(ChildProcessDied, match="exit code"):
        await pool.run(child_calls.exit_abruptly, b"", 3)
    assert (await pool.run(child_calls.describe, b"ok", "after exit"))[:2] == ("after exit", 2)


async def test_a_cancelled_call_does_not_shift_later_answers() -> None:
    pool = ChildProcessPool(1, depth=2)
    try:
        first = asyncio.create_task(pool.run(child_calls.wait_then_describe, b"", 0.3, "first"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(pool.run(child_calls.describe, b"22", "second"))
        await asyncio.sleep(0.05)
        first.cancel()
        assert (await asyncio.wait_for(second, 10))[:2] == ("second", 2)
        assert (await pool.run(child_calls.describe, b"333", "third"))[:2] == ("third", 3)
    finally:
        await pool.aclose()


async def test_closing_stops_every_child() -> None:
    pool = ChildProcessPool(2)
    await asyncio.gather(*(pool.run(child_calls.describe, b"", str(i)) for i in range(4)))
    pids = pool.pids
    assert len(pids) == 2

    await pool.aclose()

    # Closing waits for the children to exit.
    assert not any(_process_exists(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(child_calls.describe, b"", "late")


async def test_codec_pool_transforms_stores_and_reports_decode_errors(tmp_path: Path) -> None:
    codec = CodecPool(1)
    store = ImageStore(tmp_path)
    options = TransformOptions(quality=50)
    photo = (corpus_root() / "photos" / "rocket.jpg").read_bytes()
    try:
        job = ImageJob(request_id=str(uuid.uuid4()), image_id=uuid.uuid4().hex,
                       url="http://example.com/rocket.jpg", options=RequestOptions())
        stored = await codec.transform_and_store(photo, options, store, job)
        with Image.open(store.absolute_path(stored.relative_path)) as image:
            assert image.format == "JPEG"
            assert image.size == (stored.width, stored.height)
        assert 0 < stored.bytes_out <= len(photo)

        broken = (corpus_root() / "edge" / "broken.png").read_bytes()
        with pytest.raises(DecodeError) as failure:
            await codec.transform_and_store(broken, options, store, job)
        assert failure.value.reason

        slow = asyncio.create_task(codec.transform_and_store(photo, options, store, job))
        await asyncio.sleep(0)
        for pid in codec.pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(TransientFailure, match="image processor crashed"):
            await asyncio.wait_for(slow, 10)
    finally:
        await codec.aclose()


# --- limits --------------------------------------------------------------------------------

async def _until_gone(pid: int) -> None:
    async with asyncio.timeout(10):
        while _process_exists(pid):  # noqa: ASYNC110 (a process table, not an event)
            await asyncio.sleep(0.02)


def _address_space(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def _job(name: str) -> ImageJob:
    return ImageJob(request_id=str(uuid.uuid4()), image_id=uuid.uuid4().hex,
                    url=f"http://example.com/{name}", options=RequestOptions())


async def test_a_call_past_the_time_limit_is_killed_and_the_queued_call_goes_on() -> None:
    pool = ChildProcessPool(1, depth=2, time_limit=0.3)
    try:
        victim = (await pool.run(child_calls.describe, b"", "start"))[2]
        endless = asyncio.create_task(pool.run(child_calls.spin_then_describe, b"", 30.0, "x"))
        queued = asyncio.create_task(pool.run(child_calls.describe, b"abc", "queued"))

        with pytest.raises(TimeLimitExceeded, match=r"^took longer than 0\.3 s$"):
            await asyncio.wait_for(endless, 10)
        tag, size, pid = await asyncio.wait_for(queued, 10)
        assert (tag, size) == ("queued", 3) and pid != victim and pool.pids == [pid]
        await _until_gone(victim)
    finally:
        await pool.aclose()


async def test_a_slow_image_fails_and_the_rest_of_the_request_goes_on(
        tmp_path: Path, corpus_dir: Path) -> None:
    # AVIF of a 4 MP photo takes over a second of CPU, the small photo about 10 ms.
    codec = CodecPool(1, time_limit_seconds=0.1)
    store = ImageStore(tmp_path)
    slow = (corpus_dir / "product-photos" / "colorful-cups.jpg").read_bytes()
    quick = (corpus_dir / "edge" / "hopper_orientation_6.jpg").read_bytes()
    try:
        await codec.transform_and_store(quick, TransformOptions(), store, _job("warm.jpg"))
        victim = codec.pids[0]
        outcomes = await asyncio.wait_for(asyncio.gather(
            codec.transform_and_store(slow, TransformOptions(format="avif"), store,
                                      _job("slow.jpg")),
            codec.transform_and_store(quick, TransformOptions(), store, _job("quick.jpg")),
            return_exceptions=True), 20)

        assert isinstance(outcomes[0], DecodeError)
        assert outcomes[0].reason == "took longer than 0.1 s"
        assert not isinstance(outcomes[1], BaseException)
        with Image.open(store.absolute_path(outcomes[1].relative_path)) as image:
            assert image.size == (128, 128)
        await _until_gone(victim)
        assert len(codec.pids) == 1 and codec.pids != [victim]
    finally:
        await codec.aclose()


async def test_an_image_needing_too_much_memory_fails_and_its_process_serves_on(
        tmp_path: Path, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    # rocket.jpg claiming 7000 x 7000 pixels: 49 MP, allowed, 196 MB once decoded.
    frame = photo.index(b"\xff\xc0")
    bomb = photo[:frame + 5] + struct.pack(">HH", 7000, 7000) + photo[frame + 9:]
    store = ImageStore(tmp_path)
    # What a codec process takes before any image, under a limit (glibc's arenas are capped).
    probe = CodecPool(1, memory_limit_bytes=1 << 40)
    try:
        await probe.transform_and_store(photo, TransformOptions(), store, _job("probe.jpg"))
        baseline = _address_space(probe.pids[0])
    finally:
        await probe.aclose()
    limit = baseline + 100 * 1024 * 1024
    codec = CodecPool(1, memory_limit_bytes=limit)
    try:
        with pytest.raises(DecodeError) as failure:
            await codec.transform_and_store(bomb, TransformOptions(), store, _job("bomb.jpg"))
        assert failure.value.reason == f"needs more memory than {limit / (1 << 20):.3g} MiB"
        pid = codec.pids[0]
        stored = await codec.transform_and_store(photo, TransformOptions(), store,
                                                 _job("after.jpg"))
        assert (stored.width, stored.height) == (640, 427) and codec.pids == [pid]
    finally:
        await codec.aclose()
