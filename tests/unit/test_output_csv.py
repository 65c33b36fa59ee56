"""Writing the output CSV (pure)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence

from pixpipe.output_csv import OutputImage, output_csv_chunks

Row = tuple[Sequence[str], Sequence[str | None]]


async def _rows(rows: list[Row]) -> AsyncIterator[tuple[Sequence[str], list[OutputImage]]]:
    for cells, paths in rows:
        yield cells, [OutputImage(path) for path in paths]


async def _collect(header: list[str], rows: list[Row], base_url: str) -> list[bytes]:
    return [chunk async for chunk in output_csv_chunks(header, _rows(rows), base_url)]


async def test_failed_images_leave_empty_slots_and_columns_pass_through() -> None:
    rows: list[Row] = [
        (["1", "Lamp, large", "a,b,c", "red"], ["r/1.jpg", None, "r/3.jpg"]),
        (["2", "Desk", "d", "oak"], [None])]
    chunks = await _collect(["S. No.", "Product Name", "Input Image Urls", "Colour"], rows,
                            "https://cdn.example/")
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert parsed[0][-4] == "Output Image Urls"
    assert parsed[1][:-3] == ["1", "Lamp, large", "a,b,c", "red",
                         "https://cdn.example/processed_images/r/1.jpg,,"
                         "https://cdn.example/processed_images/r/3.jpg"]
    assert parsed[2][-4:] == ["", "", "", ""]


async def test_a_row_stored_short_of_the_header_is_padded_to_it() -> None:
    chunks = await _collect(["S. No.", "Product Name", "Input Image Urls", "Colour"],
                            [(["1", "Desk", "u"], ["r/1.jpg"])], "http://h")
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert parsed[1][:-3] == ["1", "Desk", "u", "", "http://h/processed_images/r/1.jpg"]


async def test_large_outputs_come_in_bounded_chunks() -> None:
    rows: list[Row] = [([str(n), f"P{n}", "u"], [f"r/{n}.jpg"]) for n in range(1, 20_001)]
    chunks = await _collect(["S. No.", "Product Name", "Input Image Urls"], rows, "http://h")
    assert len(chunks) > 1
    assert max(len(chunk) for chunk in chunks) < 300 * 1024
    assert len(b"".join(chunks).decode().splitlines()) == 20_001


async def test_cells_a_spreadsheet_would_run_as_formulas_are_neutralised() -> None:
    attacks = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
               "\tx", "\rx"]
    chunks = await _collect(["S. No.", "Product Name", "Input Image Urls", "=Notes"],
                            [(["1", name, "u", "plain"], ["r/1.jpg"]) for name in attacks],
                            "http://h")
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert parsed[0][3] == "'=Notes"
    assert [row[1] for row in parsed[1:]] == [f"'{name}" for name in attacks]
    assert all(row[3] == "plain" and row[4].startswith("http://h/") for row in parsed[1:])


async def test_receipts_follow_the_urls_slot_for_slot() -> None:
    async def rows() -> AsyncIterator[tuple[Sequence[str], list[OutputImage]]]:
        yield (["1", "Lamp", "a,b,c,d"],
               [OutputImage("r/1.jpg", 42, "libjpeg-turbo", 70.349),
                OutputImage(None, 50, "libjpeg-turbo", 66.0),  # failed: nothing reported
                OutputImage("r/3.jpg"),  # the source kept as it was
                OutputImage("r/4.webp", 60, "libwebp", None)])

    chunks = [chunk async for chunk in output_csv_chunks(
        ["S. No.", "Product Name", "Input Image Urls"], rows(), "http://h")]
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert parsed[0][3:] == ["Output Image Urls", "Output Quality", "Output Encoder",
                             "Output Scores"]
    assert parsed[1][3].split(",")[1:3] == ["", "http://h/processed_images/r/3.jpg"]
    assert parsed[1][4:] == ["42,,,60", "libjpeg-turbo,,,libwebp", "70.3,,,"]
