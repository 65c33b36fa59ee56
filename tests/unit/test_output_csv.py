"""Writing the output CSV (pure)."""

from __future__ import annotations

import csv
import io

from pixpipe.output_csv import output_csv_chunks


def test_failed_images_leave_empty_slots_and_columns_pass_through() -> None:
    rows: list[tuple[list[str], list[str | None]]] = [
        (["1", "Lamp, large", "a,b,c", "red"], ["r/1.jpg", None, "r/3.jpg"]),
        (["2", "Desk", "d", "oak"], [None])]
    text = b"".join(output_csv_chunks(["S. No.", "Product Name", "Input Image Urls", "Colour"],
                                      rows, "https://cdn.example/")).decode()
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0][-1] == "Output Image Urls"
    assert parsed[1] == ["1", "Lamp, large", "a,b,c", "red",
                         "https://cdn.example/processed_images/r/1.jpg,,"
                         "https://cdn.example/processed_images/r/3.jpg"]
    assert parsed[2][-1] == ""


def test_large_outputs_come_in_several_chunks() -> None:
    rows = [([str(n), f"P{n}", "u"], [f"r/{n}.jpg"]) for n in range(1, 1201)]
    chunks = list(output_csv_chunks(["S. No.", "Product Name", "Input Image Urls"], rows,
                                    "http://h"))
    assert len(chunks) == 3
    assert len(b"".join(chunks).decode().splitlines()) == 1201
