"""Where outputs go: the data directory (atomic, idempotent writes) or object storage."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from pixpipe.object_storage import S3Store
from pixpipe.settings import StorageSettings


class OutputStore(Protocol):
    """What a codec process writes through; it must pickle, as it travels with each call."""

    def relative_path(self, request_id: str, image_id: str, extension: str) -> str: ...

    def write(self, relative_path: str, data: bytes) -> None: ...

    def copy(self, source_path: str, relative_path: str) -> bool:
        """Blocking: store a copy of an existing output; False when that output is gone."""
        ...


def s3_store_from_settings(storage: StorageSettings) -> S3Store | None:
    if not storage.url:
        return None
    return S3Store.from_url(storage.url, endpoint_url=storage.s3_endpoint_url,
                            cache_control=storage.s3_cache_control,
                            multipart_threshold=storage.s3_multipart_threshold_bytes)


def store_from_settings(storage: StorageSettings) -> OutputStore:
    """Object storage when PIXPIPE_STORAGE_URL is set, else <data dir>/processed_images."""
    return s3_store_from_settings(storage) or ImageStore(storage.images_dir)


class ImageStore:
    """Files live at ``<root>/<request_id>/<image_id>.<ext>``; a retry overwrites its own file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative_path(request_id: str, image_id: str, extension: str) -> str:
        return f"{request_id}/{image_id}.{extension}"

    def absolute_path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def write(self, relative_path: str, data: bytes) -> None:
        """Blocking: the codec processes call it, off any event loop."""
        self._write_atomically(self.absolute_path(relative_path), data)

    def copy(self, source_path: str, relative_path: str) -> bool:
        """A hard link (no bytes copied; a plain copy across file systems), renamed into
        place, so a retried job still replaces only its own name and deleting one request's
        directory leaves every other link intact."""
        source, target = self.absolute_path(source_path), self.absolute_path(relative_path)
        if source == target:
            return source.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per call: two copies to one target (a job redelivered while its
        # first attempt still copies) must not unlink or rename each other's link.
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.link")
        try:
            try:
                os.link(source, temporary)
            except FileNotFoundError:
                return False
            except OSError:
                shutil.copyfile(source, temporary)  # another file system: copy the bytes
            os.replace(temporary, target)
        except FileNotFoundError:
            return False
        finally:
            temporary.unlink(missing_ok=True)  # gone already after a successful rename
        _discard_abandoned_partial(target)
        return True

    @staticmethod
    def _write_atomically(target: Path, data: bytes) -> None:
        """Write beside the target and rename, so a reader never sees half a file.

        The file beside it has one name per target, held under a lock while written: a
        writer killed half way leaves it behind unlocked, and the job's next attempt takes
        it over instead of leaving litter beside every output a crash interrupted.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial_path(target)
        fd = _open_locked(partial)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)  # still ours: the lock is held
            raise
        finally:
            os.close(fd)  # releases the lock


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def _open_locked(path: Path) -> int:
    """Open (or create) ``path`` and hold an exclusive lock on the file that is still there.

    A writer that waited for the lock may find the file it opened already renamed into
    place by the one before it; it then starts again on a fresh file of that name.
    """
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _discard_abandoned_partial(target: Path) -> None:
    """Remove what a killed writer left beside ``target``, unless someone writes it now."""
    partial = _partial_path(target)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(partial).st_ino == os.fstat(fd).st_ino:
            partial.unlink()
    except (BlockingIOError, FileNotFoundError):
        pass  # being written, or already gone
    finally:
        os.close(fd)
