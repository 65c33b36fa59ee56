"""PIXPIPE_LOG_FORMAT=json: one JSON object per line that a collector can parse."""

from __future__ import annotations

import json
import logging
import sys

from pixpipe.runtime import JsonLogFormatter


def test_a_json_log_line_carries_the_service_level_message_and_traceback() -> None:
    formatter = JsonLogFormatter("worker")
    try:
        raise ValueError("bad \"quote\"\nand a newline")
    except ValueError:
        record = logging.LogRecord("pixpipe.worker", logging.ERROR, __file__, 1,
                                   "job %s failed", ("r.i",), sys.exc_info())
    line = formatter.format(record)

    assert "\n" not in line  # one line per record, whatever the message holds
    entry = json.loads(line)
    assert entry["service"] == "worker" and entry["level"] == "ERROR"
    assert entry["logger"] == "pixpipe.worker" and entry["message"] == "job r.i failed"
    assert entry["exception"].endswith('ValueError: bad "quote"\nand a newline')
    assert entry["time"].endswith("+00:00")
