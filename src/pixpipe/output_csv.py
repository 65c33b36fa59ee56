"""Writes the output CSV: the uploaded columns plus ``Output Image Urls``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

from pixpipe.status_messages import output_url

OUTPUT_COLUMN = "Output Image Urls"
_ROWS_PER_CHUNK = 500


def output_csv_chunks(header: Sequence[str],
                      rows: Sequence[tuple[Sequence[str], Sequence[str | None]]],
                      base_url: str) -> Iterator[bytes]:
    """CSV bytes in chunks. A failed image keeps its slot empty so positions line up."""
    base = base_url.rstrip("/")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*header, OUTPUT_COLUMN])
    for index, (cells, output_paths) in enumerate(rows, start=1):
        urls = [f"{base}{output_url(path)}" if path else "" for path in output_paths]
        writer.writerow([*cells, ",".join(urls)])
        if index % _ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
