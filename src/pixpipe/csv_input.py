"""Turn an uploaded products CSV (DESIGN §1) into validated rows, or refuse it with every fault.

The file is read as its bytes arrive: decoded incrementally, cut into lines, parsed by the csv
module and checked row by row, so only the validated rows are ever held whole. Input that would
make pixpipe hold far more than it weighs is refused where it starts, with its line and column:
too many columns (counted before the csv module builds the row), an overlong cell or product
name, too many URLs in one cell; the image limit stops the reading.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from pixpipe.errors import CsvFault, CsvValidationError
from pixpipe.net_policy import PLAIN_URL_PATTERN, check_url_syntax

SERIAL_COLUMN = "S. No."
NAME_COLUMN = "Product Name"
URLS_COLUMN = "Input Image Urls"
REQUIRED_COLUMNS = (SERIAL_COLUMN, NAME_COLUMN, URLS_COLUMN)
MAX_SERIAL = 4_294_967_295  # the serial is stored as an unsigned 32-bit value
MAX_FAULTS = 1000  # enough to fix a file by; more only bloats the error response
MAX_NAME_CHARS = 512
MAX_CELL_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGES = 100_000
DEFAULT_MAX_URL_LENGTH = 2048
DEFAULT_MAX_COLUMNS = 64
DEFAULT_MAX_URLS_PER_PRODUCT = 100

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the same breaks io.StringIO(newline="") splits on
_INTEGER = re.compile(r"([+-]?)0*([0-9]+)")
# A cell of URLs that need no closer look (see net_policy); anything else goes through
# check_url_syntax one URL at a time.
_PLAIN_URLS = re.compile(rf"{PLAIN_URL_PATTERN}(?:,{PLAIN_URL_PATTERN})*", re.ASCII)
_SLICE_BYTES = 1024 * 1024  # parse_products_csv feeds a whole file in pieces of this size


class ProductRow(NamedTuple):
    line: int  # 1-based physical line the row starts on (a quoted newline spans lines)
    serial_number: int
    product_name: str
    image_urls: tuple[str, ...]
    cells: tuple[str, ...]  # as written; a row may stop short of the header's width


@dataclass(frozen=True)
class ParsedCsv:
    header: tuple[str, ...]
    rows: tuple[ProductRow, ...]
    image_count: int


@dataclass(frozen=True)
class CsvLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    max_url_length: int = DEFAULT_MAX_URL_LENGTH
    max_columns: int = DEFAULT_MAX_COLUMNS
    max_urls_per_product: int = DEFAULT_MAX_URLS_PER_PRODUCT


def parse_products_csv(data: bytes, **limits: int) -> ParsedCsv:
    """A whole file at once (see read_products_csv); ``limits`` are CsvLimits' fields."""
    settled = CsvLimits(**limits)
    if len(data) > settled.max_bytes:
        _refuse(1, 0, f"the file is {len(data)} bytes, over the limit of "
                f"{settled.max_bytes} bytes")
    view = memoryview(data)
    return read_products_csv((bytes(view[start:start + _SLICE_BYTES])
                              for start in range(0, len(data), _SLICE_BYTES)), settled)


def read_products_csv(chunks: Iterable[bytes], limits: CsvLimits = CsvLimits()) -> ParsedCsv:
    """Parse and check the file as ``chunks`` of its bytes come; stop reading at a refusal.

    Raises CsvValidationError listing EVERY fault found (up to MAX_FAULTS), except that bytes
    which are not UTF-8 text, or a file over the size limit, are refused on their own, and that
    reading stops at the first row past a limit that guards memory (columns, cell size, image
    count), which is reported after the faults found before it.
    """
    lines = _Lines(chunks, limits)
    faults: list[CsvFault] = []
    validator: _Validator | None = None
    rows: list[ProductRow] = []
    try:
        for record in _records(lines):
            if validator is None:
                if isinstance(record, CsvFault):
                    raise CsvValidationError([record])  # no readable header: no row can be checked
                validator = _Validator(*record, faults, limits)
                continue
            validator.data_records += 1
            if isinstance(record, CsvFault):
                validator.fault(record.line, record.column - 1 if record.column else None,
                                record.reason)
            elif (row := validator.row(*record)) is not None:
                rows.append(row)
        if validator is None:
            _refuse(1, 0, "the file is empty; expected a header row: " +
                    ",".join(REQUIRED_COLUMNS))
        if not validator.data_records:
            validator.fault(validator.header_line, None, "no product rows after the header")
    except _Unreadable as unreadable:
        raise CsvValidationError([unreadable.fault]) from None
    except _StopReading as stop:
        faults.append(stop.fault)
    except _TooManyFaults as stop:
        faults.append(CsvFault(stop.line, 0, "", f"more than {MAX_FAULTS} faults; "
                               "stopped checking here"))
    if faults or validator is None:
        raise CsvValidationError(faults)
    return ParsedCsv(header=tuple(validator.header), rows=tuple(rows),
                     image_count=validator.image_total)


def _refuse(line: int, column: int, reason: str) -> NoReturn:
    raise CsvValidationError([CsvFault(line, column, "", reason)])


class _Unreadable(Exception):
    """The bytes cannot be read as text (or there are too many): this fault alone refuses."""

    def __init__(self, line: int, column: int, reason: str) -> None:
        self.fault = CsvFault(line, column, "", reason)


class _StopReading(Exception):
    """Reading on would cost more than the file is worth; report this after the faults so far."""

    def __init__(self, fault: CsvFault) -> None:
        self.fault = fault


class _TooManyFaults(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _position(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows ``before``."""
    pieces = _LINE_BREAK.split(before)
    return len(pieces), len(pieces[-1]) + 1


class _Lines:
    """The upload's text, line by line as the csv module wants it, decoded as bytes arrive.

    It also watches the record being read (``begin_record`` marks where one starts): a record
    with more cells than the column limit, counted from its commas outside quotes, or longer
    than any record of cells within the size limit could be, stops the reading before the csv
    module holds it.
    """

    def __init__(self, chunks: Iterable[bytes], limits: CsvLimits) -> None:
        self._chunks = chunks
        self._max_bytes = limits.max_bytes
        self._max_columns = limits.max_columns
        # Every cell within the limit, its quotes doubled, with its own quotes and a comma.
        self._max_record_chars = limits.max_columns * (2 * MAX_CELL_BYTES + 3)
        self._carry = ""  # text after the last complete line break
        self.line = 0  # lines handed to the csv module so far
        self.record_line = 1
        self._record: list[str] = []
        self._record_chars = 0
        self._record_commas = 0
        self._cells: int | None = None  # counted precisely once the commas could be too many
        self._quoted = False

    def begin_record(self) -> None:
        self.record_line = self.line + 1
        self._record = []
        self._record_chars = self._record_commas = 0
        self._cells = None

    def record_text(self) -> str:
        return "".join(self._record)

    def __iter__(self) -> Iterator[str]:
        max_chars, max_columns = self._max_record_chars, self._max_columns
        for batch in self._batches():
            for line in batch:
                self.line += 1
                self._record.append(line)
                self._record_chars += len(line)
                if self._record_chars > max_chars:
                    self.stop_at_long_cell()
                self._record_commas += line.count(",")
                if self._record_commas >= max_columns:
                    self._count_cells(line)
                yield line

    def _batches(self) -> Iterator[list[str]]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        received = 0
        head: bytes | None = b""  # the first bytes, until it is settled whether a BOM leads
        for chunk in self._chunks:
            received += len(chunk)
            if received > self._max_bytes:
                raise _Unreadable(1, 0, f"the file exceeds the size limit of "
                                  f"{self._max_bytes} bytes")
            if head is not None:
                head += chunk
                if len(head) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(head):
                    continue
                chunk, head = head.removeprefix(codecs.BOM_UTF8), None
            yield self._split(self._decode(decoder, chunk, final=False), final=False)
        tail = (head or b"").removeprefix(codecs.BOM_UTF8)
        yield self._split(self._decode(decoder, tail, final=True), final=True)

    def _decode(self, decoder: codecs.IncrementalDecoder, chunk: bytes, *, final: bool) -> str:
        try:
            text: str = decoder.decode(chunk, final)
        except UnicodeDecodeError as err:
            line, column = self._position_after(err.object[:err.start].decode("utf-8"))
            raise _Unreadable(line, column, f"byte 0x{err.object[err.start]:02x} is not "
                              "valid UTF-8; save the file as UTF-8") from None
        nul = text.find("\x00")
        if nul >= 0:
            # Python's csv would accept it, but a NUL almost always means UTF-16 or a binary file.
            line, column = self._position_after(text[:nul])
            raise _Unreadable(line, column, "NUL character: the file looks binary or UTF-16, "
                              "not UTF-8 text")
        return text

    def _position_after(self, text: str) -> tuple[int, int]:
        """Line and column following ``text``, which comes after every line handed out."""
        line, column = _position(self._carry + text)
        return self.line + line, column

    def _split(self, text: str, *, final: bool) -> list[str]:
        lines = io.StringIO(self._carry + text, newline="").readlines()
        self._carry = ""
        # The last line is held back until its break is seen whole: "\r" may be half a "\r\n".
        if not final and lines and not lines[-1].endswith("\n"):
            self._carry = lines.pop()
            if self._record_chars + len(self._carry) > self._max_record_chars:
                self._record.append(self._carry)
                self.stop_at_long_cell()
        return lines

    def _count_cells(self, line: str) -> None:
        if self._cells is None:
            self._cells, self._quoted = 1, False
            for earlier in self._record:  # ``line`` is the last of them
                self._count_commas(earlier)
        else:
            self._count_commas(line)
        if self._cells > self._max_columns:
            raise _StopReading(CsvFault(
                self.record_line, self._max_columns + 1, "",
                f"more than {self._max_columns} cells; at most {self._max_columns} columns "
                "are allowed"))

    def _count_commas(self, line: str) -> None:
        assert self._cells is not None
        # Splitting at quotes alternates between outside and inside a quoted cell ("" inside
        # one toggles twice); the csv module reads well-formed quoting the same way.
        parts = line.split('"')
        self._cells += sum(part.count(",") for part in parts[1 if self._quoted else 0::2])
        if len(parts) % 2 == 0:
            self._quoted = not self._quoted

    def stop_at_long_cell(self) -> NoReturn:
        raise _StopReading(CsvFault(
            self.record_line, _long_cell_column(self.record_text(), MAX_CELL_BYTES), "",
            f"a cell is longer than {MAX_CELL_BYTES} bytes"))


def _long_cell_column(record: str, limit: int) -> int:
    """1-based column of the first cell of ``record`` longer than ``limit`` characters as
    written (0 if none is)."""
    column, length, quoted = 1, 0, False
    for part in record.split('"'):
        if quoted:
            length += len(part) + 2
        else:
            pieces = part.split(",")
            length += len(pieces[0])
            for piece in pieces[1:]:
                if length > limit:
                    return column
                column, length = column + 1, len(piece)
        if length > limit:
            return column
        quoted = not quoted
    return 0


def _records(lines: _Lines) -> Iterator[tuple[int, list[str]] | CsvFault]:
    """Each non-blank record with the line it starts on, or a fault where quoting is broken."""
    reader = csv.reader(lines, strict=True)
    while True:
        lines.begin_record()
        start = lines.record_line
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field larger than field limit" in str(err):
                lines.stop_at_long_cell()
            column, reason = _quote_fault(lines.record_text())
            yield CsvFault(start, column, "", reason or f"malformed CSV: {err}")
            if lines.line < start:
                return  # no progress was made; never loop on the same error
            continue
        # Spreadsheets export trailing rows of bare commas; they carry nothing to check.
        if cells and (cells[0].strip() or any(cell.strip() for cell in cells)):
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


class _Validator:
    """Checks rows against the header, collecting faults instead of stopping at the first."""

    def __init__(self, header_line: int, header: list[str], faults: list[CsvFault],
                 limits: CsvLimits) -> None:
        self.header_line = header_line
        self.header = header
        self.limits = limits
        self.faults = faults
        self.data_records = 0
        self.image_total = 0
        self.serial_lines: dict[int, int] = {}
        self.fields = [name.strip() for name in header]
        if len(header) > limits.max_columns:
            raise _StopReading(CsvFault(header_line, limits.max_columns + 1, "",
                                        f"more than {limits.max_columns} columns"))
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
        self.complete = len(self.columns) == len(REQUIRED_COLUMNS)
        # A row needs cells up to the last required column; trailing optional ones may be left off.
        self.required_width = max(self.columns.values(), default=-1) + 1
        self.serial_index = self.columns.get(SERIAL_COLUMN, -1)
        self.name_index = self.columns.get(NAME_COLUMN, -1)
        self.urls_index = self.columns.get(URLS_COLUMN, -1)

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
        elif len(cells) < self.required_width:
            missing = [name for name, index in self.columns.items() if index >= len(cells)]
            self.fault(line, None, f"{len(cells)} cells but the header has {width} columns; "
                       f"missing {', '.join(missing)}")
        if max(map(len, cells)) > MAX_CELL_BYTES // 4:  # only then can a cell be too long
            self._cell_sizes(line, cells)
        serial = self._serial(line, cells)
        name = self._name(line, cells)
        urls = self._urls(line, cells)
        if len(self.faults) > before or serial is None or name is None or urls is None:
            return None
        return ProductRow(line, serial, name, urls, tuple(cells))

    def _cell_sizes(self, line: int, cells: list[str]) -> None:
        for index, cell in enumerate(cells):
            if len(cell) > MAX_CELL_BYTES // 4 and (size := len(cell.encode())) > MAX_CELL_BYTES:
                self.fault(line, index, f"cell is {size} bytes long, over the limit of "
                           f"{MAX_CELL_BYTES} bytes")

    def _serial(self, line: int, cells: list[str]) -> int | None:
        index = self.serial_index
        if not 0 <= index < len(cells):
            return None
        raw = cells[index]
        value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 10 else 0
        if not 0 < value <= MAX_SERIAL:
            if (checked := self._unusual_serial(line, index, raw)) is None:
                return None
            value = checked
        if (first := self.serial_lines.setdefault(value, line)) != line:
            self.fault(line, index, f"serial number {value} already used on line {first}")
            return None
        return value

    def _unusual_serial(self, line: int, index: int, raw: str) -> int | None:
        text = raw.strip()
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
        return value

    def _name(self, line: int, cells: list[str]) -> str | None:
        index = self.name_index
        if not 0 <= index < len(cells):
            return None
        name = cells[index].strip()
        if not name:
            self.fault(line, index, "product name is empty")
            return None
        if len(name) > MAX_NAME_CHARS:
            self.fault(line, index, f"product name is {len(name)} characters long, over the "
                       f"limit of {MAX_NAME_CHARS}")
            return None
        return name

    def _urls(self, line: int, cells: list[str]) -> tuple[str, ...] | None:
        index = self.urls_index
        if not 0 <= index < len(cells):
            return None
        raw = cells[index]
        limits = self.limits
        if (count := raw.count(",") + 1) > limits.max_urls_per_product:
            self.fault(line, index, f"{count} image URLs in one cell, over the limit of "
                       f"{limits.max_urls_per_product}")
            return None
        # The common case is checked a whole cell at a time.
        urls = tuple(raw.split(",")) if _PLAIN_URLS.fullmatch(raw) else ()
        if not urls or (len(raw) > limits.max_url_length
                        and max(map(len, urls)) > limits.max_url_length):
            if (checked := self._unusual_urls(line, index, raw)) is None:
                return None
            urls = checked
        self.image_total += len(urls)
        if self.image_total > limits.max_images:
            raise _StopReading(CsvFault(line, index + 1, self.fields[index],
                                        f"more than {limits.max_images} image URLs in the "
                                        "file; stopped reading here"))
        return urls

    def _unusual_urls(self, line: int, index: int, raw: str) -> tuple[str, ...] | None:
        if not raw.strip():
            self.fault(line, index, "no image URLs")
            return None
        urls = tuple(part.strip() for part in raw.split(","))
        valid = True
        for number, url in enumerate(urls, 1):
            if not url:
                self.fault(line, index, f"URL {number} is empty (two commas in a row, or a "
                           "comma at the start or end)")
                valid = False
                continue
            try:
                check_url_syntax(url, max_length=self.limits.max_url_length)
            except ValueError as err:
                self.fault(line, index, f"URL {number} {_shorten(url)}: {err}")
                valid = False
        return urls if valid else None


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
