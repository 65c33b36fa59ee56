"""Where outputs go: the data directory (atomic, idempotent writes) or object storage."""

from __future__ import annotations

import os
import shutil
import tempfile
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
        return True

    @staticmethod
    def _write_atomically(target: Path, data: bytes) -> None:
        # Write beside the target and rename, so a reader or a crash never sees half a file.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
