"""Writes the output CSV: the uploaded columns, ``Output Image Urls`` and the receipts."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass

from pixpipe.status_messages import output_url

OUTPUT_COLUMN = "Output Image Urls"
# Per image, comma-joined in input order like the URLs; a failed image leaves its slot empty.
RECEIPT_COLUMNS = ("Output Quality", "Output Encoder", "Output Scores")
_CHUNK_BYTES = 256 * 1024
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class OutputImage:
    """One image's output path (None: it failed) and the receipt of what made it."""

    path: str | None
    quality_used: int | None = None
    encoder: str | None = None
    score: float | None = None


def neutralise(cell: str) -> str:
    """A user's cell as text a spreadsheet shows rather than evaluates: a leading apostrophe,
    which spreadsheets hide, in front of anything that would start a formula."""
    return f"'{cell}" if cell.startswith(_FORMULA_STARTS) else cell


async def output_csv_chunks(header: Sequence[str],
                            rows: AsyncIterable[tuple[Sequence[str], Sequence[OutputImage]]],
                            base_url: str) -> AsyncIterator[bytes]:
    """CSV bytes in chunks of about 256 KB, as ``rows`` arrive. A failed image keeps its slot
    empty so positions line up, in the URLs and in the receipt columns after them (a source
    kept as it was has a URL but an empty receipt: nothing encoded it); a row written short
    of the header is padded to it; cells that a spreadsheet would run as formulas are
    neutralised."""
    base = base_url.rstrip("/")
    width = len(header)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*map(neutralise, header), OUTPUT_COLUMN, *RECEIPT_COLUMNS])
    async for cells, images in rows:
        padding = [""] * (width - len(cells))
        writer.writerow([*map(neutralise, cells), *padding, *_output_cells(images, base)])
        if buffer.tell() >= _CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def _output_cells(images: Sequence[OutputImage], base: str) -> list[str]:
    done = [image if image.path else OutputImage(None) for image in images]
    return [",".join(output_url(image.path, base) or "" for image in done),
            ",".join(_text(image.quality_used) for image in done),
            ",".join(image.encoder or "" for image in done),
            ",".join(_text(None if image.score is None else round(image.score, 1))
                     for image in done)]


def _text(value: float | None) -> str:
    return "" if value is None else str(value)
