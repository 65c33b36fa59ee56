"""Turn an uploaded products CSV (DESIGN §1) into validated rows, or refuse it with every fault."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from pixpipe.errors import CsvFault, CsvValidationError

SERIAL_COLUMN = "S. No."
NAME_COLUMN = "Product Name"
URLS_COLUMN = "Input Image Urls"
REQUIRED_COLUMNS = (SERIAL_COLUMN, NAME_COLUMN, URLS_COLUMN)
MAX_SERIAL = 4_294_967_295  # the serial is stored as an unsigned 32-bit value
MAX_FAULTS = 1000  # enough to fix a file by; more only bloats the error response

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the same breaks io.StringIO(newline="") splits on
_INTEGER = re.compile(r"([+-]?)0*([0-9]+)")


@dataclass(frozen=True)
class ProductRow:
    line: int  # 1-based physical line the row starts on (a quoted newline spans lines)
    serial_number: int
    product_name: str
    image_urls: tuple[str, ...]
    cells: tuple[str, ...]  # as written, one per header column, for the output CSV


@dataclass(frozen=True)
class ParsedCsv:
    header: tuple[str, ...]
    rows: tuple[ProductRow, ...]

    @property
    def image_count(self) -> int:
        return sum(len(row.image_urls) for row in self.rows)


def parse_products_csv(
    data: bytes,
    *,
    max_bytes: int = 50 * 1024 * 1024,
    max_images: int = 100_000,
    max_url_length: int = 2048,
) -> ParsedCsv:
    """Raises CsvValidationError listing EVERY fault found (not just the first)."""
    if len(data) > max_bytes:
        _refuse(1, 0, f"the file is {len(data)} bytes, over the limit of {max_bytes} bytes")
    lines = io.StringIO(_decode(data), newline="").readlines()
    records = _records(lines)
    first = next(records, None)
    if first is None:
        _refuse(1, 0, "the file is empty; expected a header row: " + ",".join(REQUIRED_COLUMNS))
    if isinstance(first, CsvFault):
        raise CsvValidationError([first])  # without a readable header no row can be checked
    faults: list[CsvFault] = []
    rows: list[ProductRow] = []
    try:
        validator = _Validator(*first, faults, max_images=max_images,
                               max_url_length=max_url_length)
        for record in records:
            validator.data_records += 1
            if isinstance(record, CsvFault):
                validator.fault(record.line, record.column - 1 if record.column else None,
                                record.reason)
            elif (row := validator.row(*record)) is not None:
                rows.append(row)
        if not validator.data_records:
            validator.fault(validator.header_line, None, "no product rows after the header")
    except _TooManyFaults as stop:
        faults.append(CsvFault(stop.line, 0, "", f"more than {MAX_FAULTS} faults; "
                               "stopped checking here"))
    if faults:
        raise CsvValidationError(faults)
    return ParsedCsv(header=tuple(validator.header), rows=tuple(rows))


def _refuse(line: int, column: int, reason: str) -> NoReturn:
    raise CsvValidationError([CsvFault(line, column, "", reason)])


def _decode(data: bytes) -> str:
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = _position(body[: err.start].decode("utf-8"))
        _refuse(line, column, f"byte 0x{body[err.start]:02x} is not valid UTF-8; "
                "save the file as UTF-8")
    nul = text.find("\x00")
    if nul >= 0:
        # Python's csv would accept it, but a NUL almost always means UTF-16 or a binary file.
        line, column = _position(text[:nul])
        _refuse(line, column, "NUL character: the file looks binary or UTF-16, not UTF-8 text")
    return text


def _position(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows ``before``."""
    pieces = _LINE_BREAK.split(before)
    return len(pieces), len(pieces[-1]) + 1


def _records(lines: list[str]) -> Iterator[tuple[int, list[str]] | CsvFault]:
    """Each non-blank record with the line it starts on, or a fault where quoting is broken."""
    reader = csv.reader(lines, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            column, reason = _quote_fault("".join(lines[start - 1 : reader.line_num]))
            yield CsvFault(start, column, "", reason or f"malformed CSV: {err}")
            if reader.line_num < start:
                return  # no progress was made; never loop on the same error
            continue
        # Spreadsheets export trailing rows of bare commas; they carry nothing to check.
        if any(cell.strip() for cell in cells):
            yield start, cells


def _quote_fault(record: str) -> tuple[int, str]:
    """Find which cell of a record csv refused, since csv.Error only says what went wrong."""
    column, state = 1, "start"
    for char in record:
        if state == "quoted":
            state = "after_quote" if char == '"' else "quoted"
        elif char == ",":
            column, state = column + 1, "start"
        elif state == "start":
            state = "quoted" if char == '"' else "plain"
        elif state == "after_quote":
            if char == '"':
                state = "quoted"  # a doubled quote inside a quoted cell
            elif char not in "\r\n":
                return column, f"unexpected {char!r} after a closing quote; quote the whole cell"
    if state == "quoted":
        return column, "quoted cell is never closed (unbalanced '\"')"
    return 0, ""


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


class _TooManyFaults(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Validator:
    """Checks rows against the header, collecting faults instead of stopping at the first."""

    def __init__(self, header_line: int, header: list[str], faults: list[CsvFault], *,
                 max_images: int, max_url_length: int) -> None:
        self.header_line = header_line
        self.header = header
        self.max_images = max_images
        self.max_url_length = max_url_length
        self.faults = faults
        self.data_records = 0
        self.image_total = 0
        self.serial_lines: dict[int, int] = {}
        self.fields = [name.strip() for name in header]
        self.columns: dict[str, int] = {}
        first_of: dict[str, int] = {}
        for index, name in enumerate(header):
            key = _normalise(name)
            if key in first_of and key:
                self.fault(header_line, index, f"duplicate column {name.strip()!r}, "
                           f"also column {first_of[key] + 1}")
            first_of.setdefault(key, index)
        for required in REQUIRED_COLUMNS:
            if (found := first_of.get(_normalise(required))) is None:
                self.faults.append(CsvFault(header_line, 0, required, f"missing required column "
                                            f"{required!r} (names ignore case and spaces)"))
            else:
                self.columns[required] = found
                self.fields[found] = required

    def fault(self, line: int, index: int | None, reason: str) -> None:
        if len(self.faults) >= MAX_FAULTS:
            raise _TooManyFaults(line)
        field = self.fields[index] if index is not None and index < len(self.fields) else ""
        self.faults.append(CsvFault(line, 0 if index is None else index + 1, field, reason))

    def row(self, line: int, cells: list[str]) -> ProductRow | None:
        before = len(self.faults)
        width = len(self.header)
        if len(cells) > width:
            self.fault(line, None, f"{len(cells)} cells but the header has {width} columns; "
                       "quote any cell that contains commas")
        elif missing := [name for name, index in self.columns.items() if index >= len(cells)]:
            self.fault(line, None, f"{len(cells)} cells but the header has {width} columns; "
                       f"missing {', '.join(missing)}")
        serial = self._serial(line, cells)
        name = self._cell(cells, NAME_COLUMN)
        if name is not None and not name.strip():
            self.fault(line, self.columns[NAME_COLUMN], "product name is empty")
        urls = self._urls(line, cells)
        if len(self.faults) > before or serial is None or not name or urls is None:
            return None
        # Trailing optional cells may be left off; pad so every row lines up with the header.
        padded = tuple(cells) + ("",) * (width - len(cells))
        return ProductRow(line, serial, name.strip(), urls, padded)

    def _cell(self, cells: list[str], column: str) -> str | None:
        index = self.columns.get(column)
        return cells[index] if index is not None and index < len(cells) else None

    def _serial(self, line: int, cells: list[str]) -> int | None:
        if (raw := self._cell(cells, SERIAL_COLUMN)) is None:
            return None
        text, index = raw.strip(), self.columns[SERIAL_COLUMN]
        if not (match := _INTEGER.fullmatch(text)):
            reason = "serial number is empty" if not text else \
                f"serial number {_shorten(text)} is not a whole number"
            self.fault(line, index, reason)
            return None
        sign, digits = match.groups()
        # Bounding the digits first keeps int() away from its huge-string limit.
        value = int(digits) if len(digits) <= len(str(MAX_SERIAL)) else MAX_SERIAL + 1
        if sign == "-" or value == 0:
            self.fault(line, index, f"serial number {text} is not positive")
            return None
        if value > MAX_SERIAL:
            self.fault(line, index, f"serial number {_shorten(text)} is over {MAX_SERIAL}")
            return None
        if (first := self.serial_lines.setdefault(value, line)) != line:
            self.fault(line, index, f"serial number {value} already used on line {first}")
            return None
        return value

    def _urls(self, line: int, cells: list[str]) -> tuple[str, ...] | None:
        if (raw := self._cell(cells, URLS_COLUMN)) is None:
            return None
        index = self.columns[URLS_COLUMN]
        if not raw.strip():
            self.fault(line, index, "no image URLs")
            return None
        urls = tuple(part.strip() for part in raw.split(","))
        valid = True
        for number, url in enumerate(urls, 1):
            if problem := _url_problem(url, self.max_url_length):
                self.fault(line, index, f"URL {number}: {problem}")
                valid = False
        if self.image_total <= self.max_images < self.image_total + len(urls):
            self.fault(line, index, f"more than {self.max_images} image URLs in the file")
        self.image_total += len(urls)
        return urls if valid else None


def _url_problem(url: str, max_length: int) -> str | None:
    if not url:
        return "empty URL (two commas in a row, or a comma at the start or end)"
    if len(url) > max_length:
        return f"URL is {len(url)} characters long, over the limit of {max_length}"
    shown = _shorten(url)
    if any(char.isspace() or not char.isprintable() for char in url):
        return f"{shown} contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit only checks the port when it is asked for
    except ValueError as err:
        return f"{shown} is not a valid URL ({err})"
    if not parts.scheme:
        return f"{shown} is not an absolute http or https URL"
    if parts.scheme not in ("http", "https"):
        return f"{shown} uses scheme {parts.scheme!r}; only http and https are allowed"
    if not parts.hostname:
        return f"{shown} has no host"
    return None


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
