"""Whatever bytes are uploaded, the CSV reader parses them or refuses them with located faults."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import event, given
from hypothesis import strategies as st

from pixpipe.csv_input import (
    NAME_COLUMN,
    SERIAL_COLUMN,
    URLS_COLUMN,
    CsvLimits,
    ParsedCsv,
    parse_products_csv,
    read_products_csv,
)
from pixpipe.errors import CsvFault, CsvValidationError
from tests.fuzz.budget import fuzz_budget
from tests.support.paths import corpus_root

# The corpus file names its server's port as PORT, which as it stands is no port at all.
CORPUS_CSV = (corpus_root() / "products.csv").read_bytes().replace(b":PORT/", b":8000/")

# Small limits, so that every refusal a limit makes is within reach of a few hundred bytes.
limits = st.fixed_dictionaries({}, optional={
    "max_images": st.integers(1, 20),
    "max_url_length": st.integers(1, 120),
    "max_columns": st.integers(1, 8),
    "max_urls_per_product": st.integers(1, 6),
})

header_names = st.sampled_from([SERIAL_COLUMN, NAME_COLUMN, URLS_COLUMN, " s. no. ",
                                "PRODUCT  NAME", "Notes", "", '"', "S. No.\n"])
url = st.builds(lambda scheme, host, path: f"{scheme}{host}{path}",
                st.sampled_from(["http://", "https://", "ftp://", "", "http:/", "//"]),
                st.sampled_from(["img.example", "127.0.0.1:99999", "[::1]", "", "a b", "é.ex"]),
                st.sampled_from(["", "/a.jpg", "/?q=1,2", "#x", "/\x00", "/" + "x" * 200]))
cell = st.one_of(
    st.sampled_from(["1", "2", "007", "-3", "0", "4294967296", "+5", " 6 ", "1e3", "x"]),
    url,
    st.lists(url, min_size=1, max_size=4).map(",".join),
    st.text(alphabet=st.sampled_from('ab ,"\r\n\t\x00\ufeffé☃'), max_size=12),
)


def _quoted(text: str, quote: bool) -> str:
    return '"' + text.replace('"', '""') + '"' if quote else text


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """Files close to the real thing: a header, rows of plausible and broken cells."""
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    header = draw(st.lists(header_names, min_size=0, max_size=5))
    if draw(st.booleans()):
        header = [SERIAL_COLUMN, NAME_COLUMN, URLS_COLUMN, *header]
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 6))):
        cells = draw(st.lists(st.tuples(cell, st.booleans()), max_size=6))
        lines.append(",".join(_quoted(text, quote) for text, quote in cells))
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 2]))
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + text.encode()


@st.composite
def valid_files(draw: st.DrawFn) -> bytes:
    """Files that should parse: a serial, a name and a few good URLs per row."""
    rows = [",".join([SERIAL_COLUMN, NAME_COLUMN, URLS_COLUMN])]
    for serial in range(1, draw(st.integers(1, 5)) + 1):
        name = draw(st.text(alphabet=st.sampled_from('ab ,"é☃'), min_size=1, max_size=10))
        if not name.strip():
            name = "SKU"
        urls = draw(st.lists(st.sampled_from(["https://img.example/a.jpg", "http://h:81/b?x=1",
                                              "https://[::1]/c.png", " http://h/d "]),
                             min_size=1, max_size=3))
        rows.append(",".join([str(serial), _quoted(name, True), _quoted(",".join(urls), True)]))
    return "\r\n".join(rows).encode()


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes changed, inserted, deleted or cut off."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if kind == "set" and at < len(data):
            data[at] = draw(st.sampled_from(b'",\r\n\x00\xff\xc3 ab1'))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


uploads = st.one_of(st.binary(max_size=512), csv_files(), valid_files(), st.just(CORPUS_CSV),
                    mutated(CORPUS_CSV), valid_files().flatmap(mutated))


def outcome(data: bytes, **limit: int) -> ParsedCsv | list[CsvFault]:
    """The parse, or the faults it was refused with; any other exception fails the test."""
    try:
        parsed = parse_products_csv(data, **limit)
    except CsvValidationError as refusal:
        faults = refusal.faults
        assert faults, "a refusal names at least one fault"
        for fault in faults:
            assert fault.line >= 1 and fault.column >= 0, fault
            assert fault.reason, fault
        event(f"refused with {len(faults) if len(faults) < 3 else '3 or more'} faults")
        return faults
    assert parsed.rows, "a parsed file has product rows"
    assert parsed.image_count == sum(len(row.image_urls) for row in parsed.rows)
    serials = [row.serial_number for row in parsed.rows]
    assert len(set(serials)) == len(serials)
    for row in parsed.rows:
        assert row.product_name and row.image_urls
        assert all(u.startswith(("http://", "https://")) for u in row.image_urls)
    event("parsed")
    return parsed


@fuzz_budget
@given(uploads, limits)
def test_any_upload_parses_or_is_refused_with_its_place(data: bytes, limit: dict[str, int]) -> None:
    outcome(data, **limit)


@fuzz_budget
@given(uploads, limits, st.lists(st.integers(0, 600), max_size=6))
def test_the_answer_does_not_depend_on_how_the_bytes_arrive(
        data: bytes, limit: dict[str, int], cuts: list[int]) -> None:
    edges = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    chunks = [data[start:end] for start, end in pairwise(edges)]
    try:
        streamed: ParsedCsv | list[CsvFault] = read_products_csv(chunks, CsvLimits(**limit))
    except CsvValidationError as refusal:
        streamed = refusal.faults
    whole = outcome(data, **limit)
    if _is_text(data):
        assert streamed == whole
    else:
        # Bytes that are not text are refused wherever the decoder meets them, which may be
        # before or after a row that stops the reading, depending on the pieces.
        assert isinstance(streamed, list) and isinstance(whole, list)


def _is_text(data: bytes) -> bool:
    try:
        return "\x00" not in data.decode("utf-8")
    except UnicodeDecodeError:
        return False


def test_the_seeds_parse() -> None:
    assert parse_products_csv(CORPUS_CSV).rows
