"""Codec processes run below every interactive process of the machine."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from pixpipe_services.worker.processor import (
    AUTOGROUP_NICENESS,
    CODEC_NICENESS,
    _prepare_codec_process,
)

AUTOGROUP = Path("/proc/self/autogroup")


def _report_priority() -> tuple[int, int, int, str]:
    _prepare_codec_process()
    autogroup = AUTOGROUP.read_text() if AUTOGROUP.exists() else ""
    return os.getpid(), os.getsid(0), os.nice(0), autogroup


def test_codec_process_is_niced_in_a_session_of_its_own() -> None:
    context = multiprocessing.get_context("forkserver")
    with context.Pool(1) as pool:
        pid, session, niceness, autogroup = pool.apply(_report_priority)

    assert niceness == os.nice(0) + CODEC_NICENESS
    assert session == pid != os.getsid(0)
    # Kernels without scheduler autogroups have no such file; nice alone applies there.
    assert autogroup == "" or autogroup.strip().endswith(f"nice {AUTOGROUP_NICENESS}")
