"""Outputs on disk when a writer dies half way: no half file in place, no litter left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixpipe.storage import ImageStore

PHOTO = Path(__file__).parents[2].parent / "shared" / "corpus" / "product-photos" / "grey.jpg"

# Takes the lock a writer takes, writes half the photo, says so, then waits to be killed.
HALF_WRITER = """
import os, sys, time
from pathlib import Path
from pixpipe.storage import _open_locked, _partial_path
target, data = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
fd = _open_locked(_partial_path(target))
os.write(fd, data[: len(data) // 2])
print("half written", flush=True)
time.sleep(60)
"""


@pytest.fixture
def photo() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture
def half_writer(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    target = tmp_path / "r1" / "a.jpg"
    target.parent.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(target), str(PHOTO)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "half written\n"
        yield writer
    finally:
        writer.kill()
        writer.wait()


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_retry_takes_over_what_a_killed_writer_left(
        tmp_path: Path, photo: bytes, half_writer: subprocess.Popen[str]) -> None:
    os.kill(half_writer.pid, signal.SIGKILL)
    half_writer.wait()
    assert listing(tmp_path / "r1") == [".a.jpg.partial"]

    ImageStore(tmp_path).write("r1/a.jpg", photo)

    assert listing(tmp_path / "r1") == ["a.jpg"]
    assert (tmp_path / "r1" / "a.jpg").read_bytes() == photo


def test_a_copy_clears_a_dead_writers_leftover_but_not_a_live_ones(
        tmp_path: Path, photo: bytes, half_writer: subprocess.Popen[str]) -> None:
    store = ImageStore(tmp_path)
    store.write("r0/source.jpg", photo)

    assert store.copy("r0/source.jpg", "r1/a.jpg")
    assert listing(tmp_path / "r1") == [".a.jpg.partial", "a.jpg"], "its writer still runs"

    half_writer.kill()
    half_writer.wait()
    assert store.copy("r0/source.jpg", "r1/a.jpg")
    assert listing(tmp_path / "r1") == ["a.jpg"]
    assert (tmp_path / "r1" / "a.jpg").read_bytes() == photo


def test_writes_to_one_name_one_after_another_each_land_whole(tmp_path: Path,
                                                              photo: bytes) -> None:
    store = ImageStore(tmp_path)
    store.write("r1/a.jpg", photo)
    store.write("r1/a.jpg", photo[:1000])
    assert (tmp_path / "r1" / "a.jpg").read_bytes() == photo[:1000]
    assert listing(tmp_path / "r1") == ["a.jpg"]


def test_writers_racing_for_one_name_leave_one_whole_file(tmp_path: Path,
                                                          photo: bytes) -> None:
    # A job redelivered while its first attempt still writes: both write the same name.
    store = ImageStore(tmp_path)
    payloads = [photo[: len(photo) - step * 4096] for step in range(8)]
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        for _ in range(20):
            list(pool.map(lambda data: store.write("r1/a.jpg", data), payloads))
            assert (tmp_path / "r1" / "a.jpg").read_bytes() in payloads
            assert listing(tmp_path / "r1") == ["a.jpg"]
