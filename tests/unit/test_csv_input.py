"""Unit tests for pixpipe.csv_input: every refusal is located, every valid variant parses."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable, Iterator

import pytest

from pixpipe.csv_input import (
    CsvLimits,
    ParsedCsv,
    ProductRow,
    parse_products_csv,
    read_products_csv,
)
from pixpipe.errors import CsvFault, CsvValidationError
from tests.support.paths import corpus_root

CORPUS = corpus_root() / "products.csv"
HEADER = "S. No.,Product Name,Input Image Urls\n"
A = "https://img.example/a.jpg"
B = "http://img.example/b.png"


def faults_of(data: bytes | str, **limits: int) -> list[CsvFault]:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(CsvValidationError) as caught:
        parse_products_csv(raw, **limits)
    return caught.value.faults


def parse(data: str | bytes) -> ParsedCsv:
    return parse_products_csv(data.encode() if isinstance(data, str) else data)


@pytest.mark.parametrize(
    ("data", "limits", "line", "column", "reason"),
    [
        pytest.param("S. No.,Product Name\n1,A\n", {}, 1, 0,
                     "missing required column 'Input Image Urls'", id="missing-column"),
        pytest.param(f"S. No.,Product Name,Image Urls\n1,A,{A}\n", {}, 1, 0,
                     "missing required column 'Input Image Urls'", id="renamed-column"),
        pytest.param(f"{HEADER}1,Mug,{A}\n2,  ,{A}\n", {}, 3, 2, "product name is empty",
                     id="empty-name"),
        pytest.param(f"{HEADER}1,A,{A}\n2,B,{A}\n 1 ,C,{A}\n", {}, 4, 1,
                     "serial number 1 already used on line 2", id="duplicate-serial"),
        pytest.param(f"{HEADER}1.5,A,{A}\n", {}, 2, 1, "'1.5' is not a whole number",
                     id="fractional-serial"),
        pytest.param(f"{HEADER}abc,A,{A}\n", {}, 2, 1, "is not a whole number",
                     id="text-serial"),
        pytest.param(f"{HEADER},A,{A}\n", {}, 2, 1, "serial number is empty", id="empty-serial"),
        pytest.param(f"{HEADER}0,A,{A}\n", {}, 2, 1, "serial number 0 is not positive",
                     id="zero-serial"),
        pytest.param(f"{HEADER}-3,A,{A}\n", {}, 2, 1, "serial number -3 is not positive",
                     id="negative-serial"),
        pytest.param(f"{HEADER}4294967296,A,{A}\n", {}, 2, 1, "is over 4294967295",
                     id="serial-too-large"),
        pytest.param(f"{HEADER}{'9' * 5000},A,{A}\n", {}, 2, 1, "is over 4294967295",
                     id="serial-huge"),
        pytest.param(f"{HEADER}1,A,ftp://img.example/a.jpg\n", {}, 2, 3,
                     "URL 1 'ftp://img.example/a.jpg': scheme must be http or https, not 'ftp'",
                     id="ftp-scheme"),
        pytest.param(f"{HEADER}1,A,\n", {}, 2, 3, "no image URLs", id="empty-url-cell"),
        pytest.param(f'{HEADER}1,A,"{A},,{B}"\n', {}, 2, 3, "URL 2 is empty",
                     id="empty-url-between-commas"),
        pytest.param(f"{HEADER}1,A,http://\n", {}, 2, 3, "'http://': host is required",
                     id="url-without-host"),
        pytest.param(f"{HEADER}1,A,img.example/a.jpg\n", {}, 2, 3,
                     "'img.example/a.jpg': scheme must be http or https", id="url-without-scheme"),
        pytest.param(f'{HEADER}1,A,"http://img.example/a b.jpg"\n', {}, 2, 3,
                     "contains whitespace", id="url-with-space"),
        pytest.param(f"{HEADER}1,A,http://[::1/a.jpg\n", {}, 2, 3, "malformed URL",
                     id="url-bad-ipv6"),
        pytest.param(f"{HEADER}1,A,http://img.example:99999/a.jpg\n", {}, 2, 3,
                     "malformed URL", id="url-bad-port"),
        pytest.param(f"{HEADER}1,A,https://user:pw@img.example/a.jpg\n", {}, 2, 3,
                     "credentials in URLs are not allowed", id="url-with-credentials"),
        pytest.param(f"{HEADER}1,A,http://a..b/x.jpg\n", {}, 2, 3,
                     "'a..b' is not a valid host name", id="url-empty-label"),
        pytest.param(f"{HEADER}1,A,http://①②⑦.0.0.1/x.jpg\n", {}, 2, 3,
                     "host is not a valid domain name", id="url-nfkc-digits"),
        pytest.param(f"{HEADER}1,A,http://img.example:0/x.jpg\n", {}, 2, 3,
                     "port 0 is not allowed", id="url-port-0"),
        pytest.param(f"{HEADER}1,A,http://999.0.0.1/x.jpg\n", {}, 2, 3,
                     "not a valid IPv4 address", id="url-bad-ipv4"),
        pytest.param(f"{HEADER}1,A,{A}\n", {"max_url_length": 10}, 2, 3,
                     "URL 1 'https://img.example/a.jpg': URL is 25 characters long, over the limit "
                     "of 10", id="url-too-long"),
        pytest.param(f'{HEADER}1,"Mug"x,{A}\n2,B,{A}\n', {}, 2, 2,
                     "unexpected 'x' after a closing quote", id="stray-quote"),
        pytest.param(f'{HEADER}1,A,{A}\n2,"Mug,{A}\n3,C,{A}\n', {}, 3, 2,
                     "quoted cell is never closed", id="unterminated-quote"),
        pytest.param(HEADER.encode() + b"1,Caf\xe9,x\n", {}, 2, 6, "byte 0xe9 is not valid UTF-8",
                     id="latin-1-byte"),
        pytest.param(b"\xef\xbb\xbfS. No.\r\nx\xff", {}, 2, 2, "byte 0xff", id="bad-byte-crlf"),
        pytest.param("S. No.,Product Name,Input Image Urls".encode("utf-16-le"), {}, 1, 2,
                     "NUL character", id="utf-16-without-bom"),
        pytest.param(HEADER, {}, 1, 0, "no product rows after the header", id="header-only"),
        pytest.param(HEADER + "\n,,\n  \n", {}, 1, 0, "no product rows", id="no-rows"),
        pytest.param(b"", {}, 1, 0, "the file is empty", id="empty-file"),
        pytest.param(b"\xef\xbb\xbf\r\n\n", {}, 1, 0, "the file is empty", id="bom-and-blanks"),
        pytest.param(f"{HEADER}1,A,{A}\n", {"max_bytes": 10}, 1, 0,
                     "over the limit of 10 bytes", id="oversize"),
        pytest.param(f"{HEADER}1,A,{A},{B}\n", {}, 2, 0,
                     "4 cells but the header has 3 columns; quote any cell", id="too-many-cells"),
        pytest.param(f"{HEADER}1,A\n", {}, 2, 0, "missing Input Image Urls", id="too-few-cells"),
        pytest.param(f"{HEADER.strip()}, product  NAME \n1,A,{A},x\n", {}, 1, 4,
                     "duplicate column 'product  NAME', also column 2", id="duplicate-column"),
        pytest.param(f'{HEADER}1,A,"{A},{B}"\n2,B,{A}\n', {"max_images": 2}, 3, 3,
                     "more than 2 image URLs in the file", id="too-many-images"),
    ],
)
def test_malformed_file_is_refused_with_located_fault(
    data: str | bytes, limits: dict[str, int], line: int, column: int, reason: str
) -> None:
    faults = faults_of(data, **limits)
    assert [(f.line, f.column) for f in faults] == [(line, column)], faults
    assert reason in faults[0].reason


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (f"{HEADER}1,  ,{A}\n", "Product Name"),
        (f"{HEADER}x,A,{A}\n", "S. No."),
        (f"{HEADER}1,A,ftp://a\n", "Input Image Urls"),
        ("S. No.,Product Name\n1,A\n", "Input Image Urls"),
        (HEADER.encode() + b"\xff", ""),
    ],
)
def test_fault_names_the_column(data: str | bytes, field: str) -> None:
    assert faults_of(data)[0].field == field


def test_every_fault_in_a_file_is_reported() -> None:
    data = (
        "s. no.,Product Name,Input Image Urls,Notes\n"
        f"1,Mug,{A},\n"
        f"1,Cup,{A},\n"  # duplicate serial
        f'0,,"{A},ftp://x/y.png",\n'  # zero serial, empty name, bad scheme
        f'3,"Two\nlines",{A},\n'  # valid, spans lines 5-6
        f"4,Plate,{A},note,extra\n"  # too many cells
        f'5,"Bowl"!,{A},\n'  # stray quote
    )
    faults = faults_of(data)
    assert [(f.line, f.column) for f in faults] == [
        (3, 1), (4, 1), (4, 2), (4, 3), (7, 0), (8, 2),
    ]
    assert "already used on line 2" in faults[0].reason
    assert "URL 2 'ftp://x/y.png'" in faults[3].reason
    assert faults[0].field == "S. No."


def test_fault_count_is_capped() -> None:
    data = HEADER + "".join(f"{n},,{A}\n" for n in range(1, 1500))
    faults = faults_of(data)
    assert len(faults) == 1001
    assert faults[-1] == CsvFault(1002, 0, "", "more than 1000 faults; stopped checking here")
    assert "(+996 more)" in str(CsvValidationError(faults))


def test_minimal_file() -> None:
    parsed = parse(f'{HEADER}1,SKU1,"{A},{B}"\n2,SKU2,{A}\n')
    assert parsed.header == ("S. No.", "Product Name", "Input Image Urls")
    assert parsed.rows == (
        ProductRow(2, 1, "SKU1", (A, B), ("1", "SKU1", f"{A},{B}")),
        ProductRow(3, 2, "SKU2", (A,), ("2", "SKU2", A)),
    )
    assert parsed.image_count == 3


def test_bom_and_crlf() -> None:
    parsed = parse(b"\xef\xbb\xbf" + f'{HEADER}1,Mug,"{A},{B}"\r\n2,Cup,{A}\r\n'.encode())
    assert parsed.header[0] == "S. No."
    assert [(r.line, r.serial_number, r.image_urls) for r in parsed.rows] == [
        (2, 1, (A, B)), (3, 2, (A,)),
    ]


def test_extra_columns_are_kept_in_header_order() -> None:
    parsed = parse(f'SKU code,Input Image Urls,Product Name,S. No.,Price\nX1,{A},Mug,7,"1,50"\n')
    assert parsed.header == ("SKU code", "Input Image Urls", "Product Name", "S. No.", "Price")
    row = parsed.rows[0]
    assert (row.serial_number, row.product_name, row.image_urls) == (7, "Mug", (A,))
    assert row.cells == ("X1", A, "Mug", "7", "1,50")


def test_missing_trailing_optional_cells_are_stored_as_written() -> None:
    parsed = parse(f"{HEADER.strip()},Notes,Price\n1,Mug,{A}\n2,Cup,{B},fragile\n")
    assert [row.cells for row in parsed.rows] == [("1", "Mug", A), ("2", "Cup", B, "fragile")]


def test_spaces_around_values_are_stripped_but_cells_kept() -> None:
    parsed = parse(f'{HEADER} 12 ,  Mug  ," {A} ,   {B}  "\n')
    row = parsed.rows[0]
    assert (row.serial_number, row.product_name, row.image_urls) == (12, "Mug", (A, B))
    assert row.cells == (" 12 ", "  Mug  ", f" {A} ,   {B}  ")


def test_quoted_newline_keeps_later_line_numbers() -> None:
    parsed = parse(f'{HEADER}1,"Mug\nwith\r\nhandle",{A}\n\n2,Cup,{A}\n')
    assert [(r.line, r.product_name) for r in parsed.rows] == [
        (2, "Mug\nwith\r\nhandle"), (6, "Cup"),
    ]


@pytest.mark.parametrize(
    "header",
    [
        "S. No.,Product Name,Input Image Urls",
        "s. no.,product name,input image urls",
        "  S. NO.  , Product   Name ,INPUT IMAGE URLS ",
        '"S. No.","Product Name","Input Image Urls"',
        "S.\tNo.,Product\u00a0Name,Input Image  Urls",
    ],
)
def test_header_names_ignore_case_and_spacing(header: str) -> None:
    parsed = parse(f"{header}\r\n1,Mug,{A}\r\n")
    assert parsed.rows[0].serial_number == 1
    assert parsed.header == tuple(header.replace('"', "").split(","))


def test_blank_lines_and_comma_only_rows_are_ignored() -> None:
    parsed = parse(f"\n{HEADER}\n1,Mug,{A}\n,,\n\n2,Cup,{B}\n\n\n")
    assert [r.line for r in parsed.rows] == [4, 7]


def test_shared_corpus_file() -> None:
    text = CORPUS.read_text(encoding="utf-8").replace("PORT", "8080")
    parsed = parse(text)
    assert len(parsed.rows) == 7
    assert parsed.image_count == 14 == text.count("http://")
    assert [r.serial_number for r in parsed.rows] == list(range(1, 8))
    assert parsed.rows[2].image_urls == (
        "http://127.0.0.1:8080/photos/chelsea.png",
        "http://127.0.0.1:8080/photos/astronaut.png",
    )


# --- streaming ------------------------------------------------------------------------------

def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_chunk_boundaries_change_nothing(size: int) -> None:
    data = ("\ufeff" + HEADER.strip() + ",Notes\r\n"
            f'1,"Café\r\nau lait",{A},€ 3\r\n\r\n2,Cup,"{A},{B}",\r\n3,Mug,{B}').encode()
    whole = parse_products_csv(data)
    assert read_products_csv(pieces(data, size)) == whole
    assert [(row.line, row.product_name) for row in whole.rows] == [
        (2, "Café\r\nau lait"), (5, "Cup"), (6, "Mug")]


def test_bad_byte_in_a_later_chunk_is_located() -> None:
    data = f"{HEADER}1,Mug,{A}\r\n2,Cup,{B}\n".encode() + b"3,Caf\xe9,x\n"
    faults = faults_of_chunks(pieces(data, 16))
    assert [(f.line, f.column) for f in faults] == [(4, 6)]
    assert "0xe9 is not valid UTF-8" in faults[0].reason


def test_size_limit_counts_the_bytes_as_they_come() -> None:
    faults = faults_of_chunks(pieces(f"{HEADER}1,Mug,{A}\n".encode(), 8), max_bytes=20)
    assert [(f.line, f.column) for f in faults] == [(1, 0)]
    assert "exceeds the size limit of 20 bytes" in faults[0].reason


def faults_of_chunks(chunks: Iterable[bytes], **limits: int) -> list[CsvFault]:
    with pytest.raises(CsvValidationError) as caught:
        read_products_csv(chunks, CsvLimits(**limits))
    return caught.value.faults


# --- input that amplifies -------------------------------------------------------------------

def test_header_of_a_million_commas_is_refused_before_it_is_parsed() -> None:
    tracemalloc.start()
    try:
        faults = faults_of(HEADER.strip() + "," * 1_000_000 + f"\n1,A,{A}\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(f.line, f.column) for f in faults] == [(1, 65)]
    assert "more than 64 cells" in faults[0].reason
    assert peak < 16 * 1024 * 1024  # the 1 MB line itself, not a list of a million cells


@pytest.mark.parametrize(
    ("data", "limits", "faults"),
    [
        pytest.param(HEADER.strip() + ',"x"' * 62 + f"\n1,A,{A}\n", {}, [(1, 65)],
                     id="65-quoted-columns"),
        pytest.param(HEADER.strip() + "".join(f',"c{n},d"' for n in range(61)) + f"\n1,A,{A}\n",
                     {}, [],
                     id="64-columns-with-quoted-commas"),
        pytest.param(HEADER.strip() + ",x,y,z\n1,A,x\n", {"max_columns": 5}, [(1, 6)],
                     id="column-setting"),
        pytest.param(f"{HEADER}1,A,{A}\n2,B,{A}" + ",x" * 70 + f"\n3,C,{A}\n", {}, [(3, 65)],
                     id="wide-row-stops-reading"),
        pytest.param(f"{HEADER}1,A,{A}\n2,{'N' * 513},{A}\n3,{'N' * 512},{A}\n", {}, [(3, 2)],
                     id="long-name"),
        pytest.param(f'{HEADER.strip()},Notes\n1,A,{A},{"x" * 70_000}\n2,B,{A},{"é" * 32_768}\n'
                     f'3,C,{A},{"é" * 32_769}\n', {}, [(2, 4), (4, 4)], id="long-cell"),
        pytest.param(f'{HEADER}1,A,"' + ",".join([A] * 101) + f'"\n2,B,"{A},{B}"\n', {},
                     [(2, 3)], id="101-urls-in-a-cell"),
        pytest.param(f'{HEADER}1,A,"{A},{B},{A}"\n', {"max_urls_per_product": 2}, [(2, 3)],
                     id="urls-per-product-setting"),
    ],
)
def test_amplifying_input_is_refused_with_line_and_column(
    data: str, limits: dict[str, int], faults: list[tuple[int, int]]
) -> None:
    if not faults:
        parse(data)
        return
    assert [(f.line, f.column) for f in faults_of(data, **limits)] == faults


def test_a_cell_past_the_csv_field_limit_stops_the_reading_at_its_column() -> None:
    faults = faults_of(f'{HEADER.strip()},Notes\n1,,{A},\n2,B,{A},"{"x" * 200_000}"\n3,C,{A},\n')
    assert [(f.line, f.column) for f in faults] == [(2, 2), (3, 4)]
    assert "longer than 65536 bytes" in faults[1].reason


def test_an_unclosed_quote_does_not_swallow_the_file() -> None:
    faults = faults_of(f'{HEADER}1,A,"{A}\n' + f"2,B,{A}\n" * 100_000)
    assert [(f.line, f.column) for f in faults] == [(2, 3)]
    assert "longer than 65536 bytes" in faults[0].reason


def test_the_image_limit_stops_the_reading() -> None:
    rows = "".join(f'{n},P{n},"{A},{B}"\n' for n in range(1, 1001)).encode()
    chunks = pieces(HEADER.encode() + rows, 100)
    taken = []

    def feed() -> Iterator[bytes]:
        for chunk in chunks:
            taken.append(chunk)
            yield chunk

    faults = faults_of_chunks(feed(), max_images=10)
    assert [(f.line, f.column, f.field) for f in faults] == [(7, 3, "Input Image Urls")]
    assert "more than 10 image URLs" in faults[0].reason
    assert len(taken) < 5 < len(chunks)


def test_a_long_name_and_a_thousand_urls_are_refused_without_storing_them() -> None:
    data = f'{HEADER}1,{"N" * 20_000},"' + ",".join(f"{A}?{n}" for n in range(1000)) + '"\n'
    faults = faults_of(data)
    assert [(f.line, f.column, f.field) for f in faults] == [
        (2, 2, "Product Name"), (2, 3, "Input Image Urls")]
    assert "1000 image URLs in one cell, over the limit of 100" in faults[1].reason
