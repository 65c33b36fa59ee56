"""Stores processed images under the data directory with atomic, idempotent writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
