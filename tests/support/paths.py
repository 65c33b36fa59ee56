"""Where the shared test corpus lives: ``PIXPIPE_TEST_CORPUS_DIR``, else ../shared/corpus."""

from __future__ import annotations

import os
from pathlib import Path


def corpus_root() -> Path:
    override = os.environ.get("PIXPIPE_TEST_CORPUS_DIR")
    if override:
        return Path(override)
    # The repository is cloned with shared/ beside it.
    return Path(__file__).resolve().parents[3] / "shared" / "corpus"
