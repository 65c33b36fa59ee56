"""Error types shared by every layer; the gRPC and REST edges map them to status codes."""

from __future__ import annotations

from dataclasses import dataclass


class PixpipeError(Exception):
    """Base class of every error pixpipe raises on purpose."""


@dataclass(frozen=True)
class CsvFault:
    """One thing wrong with an uploaded CSV, located by 1-based line and column.

    ``column`` is the 1-based column number in the header (0 when the fault concerns the
    whole line or file); ``field`` names the column when there is one.
    """

    line: int
    column: int
    field: str
    reason: str

    def describe(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        name = f" ({self.field})" if self.field else ""
        return f"{where}{name}: {self.reason}"


class CsvValidationError(PixpipeError):
    """The CSV was refused whole; ``faults`` lists every problem found."""

    def __init__(self, faults: list[CsvFault]) -> None:
        self.faults = faults
        super().__init__("; ".join(f.describe() for f in faults[:5]) +
                         (f" (+{len(faults) - 5} more)" if len(faults) > 5 else ""))


class InvalidOptionError(PixpipeError):
    """A request option (quality, size, format, webhook URL) is out of range or malformed."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class FetchError(PixpipeError):
    """Downloading an image failed. ``transient`` says whether a retry may succeed."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        self.reason = reason
        self.transient = transient
        super().__init__(reason)


class DecodeError(PixpipeError):
    """The downloaded bytes are not an image Pillow can safely decode."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
