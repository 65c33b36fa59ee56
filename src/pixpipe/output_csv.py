"""Writes the output CSV: the uploaded columns plus ``Output Image Urls``."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from pixpipe.status_messages import output_url

OUTPUT_COLUMN = "Output Image Urls"
_CHUNK_BYTES = 256 * 1024
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """A user's cell as text a spreadsheet shows rather than evaluates: a leading apostrophe,
    which spreadsheets hide, in front of anything that would start a formula."""
    return f"'{cell}" if cell.startswith(_FORMULA_STARTS) else cell


async def output_csv_chunks(header: Sequence[str],
                            rows: AsyncIterable[tuple[Sequence[str], Sequence[str | None]]],
                            base_url: str) -> AsyncIterator[bytes]:
    """CSV bytes in chunks of about 256 KB, as ``rows`` arrive. A failed image keeps its slot
    empty so positions line up; a row written short of the header is padded to it; cells that
    a spreadsheet would run as formulas are neutralised."""
    base = base_url.rstrip("/")
    width = len(header)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*map(neutralise, header), OUTPUT_COLUMN])
    async for cells, output_paths in rows:
        urls = [f"{base}{output_url(path)}" if path else "" for path in output_paths]
        padding = [""] * (width - len(cells))
        writer.writerow([*map(neutralise, cells), *padding, ",".join(urls)])
        if buffer.tell() >= _CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
