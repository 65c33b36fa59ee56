"""Plain value types that travel between the layers: options, jobs, views and outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# "auto": per image, the smallest of JPEG, WebP and AVIF at one score.
# The one definition of each: settings, the codec and the contract's mapping use these.
EncodedFormat = Literal["jpeg", "webp", "avif"]
# "auto": per image, the smallest of the encoded formats at the target score.
OutputFormat = Literal[EncodedFormat, "auto"]
Effort = Literal["fast", "balanced", "max"]


class RequestState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class ImageState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_REQUEST_STATES = (RequestState.COMPLETED, RequestState.FAILED)


class RequestOptions(BaseModel):
    """Per-request processing options, validated; ``None`` means the server default."""

    model_config = ConfigDict(frozen=True)

    # "auto": per image, the lowest quality whose output reaches ``target_score``.
    quality: Annotated[int, Field(ge=1, le=95)] | Literal["auto"] | None = None
    max_width: int | None = Field(default=None, ge=1, le=65535)
    max_height: int | None = Field(default=None, ge=1, le=65535)
    format: OutputFormat | None = None
    effort: Effort | None = None
    target_score: float | None = Field(default=None, ge=0, le=100)
    # With a fixed quality, also score each output (quality=auto always does).
    measure_quality: bool | None = None


# The ids a job carries become parts of file paths and object keys: only these shapes pass.
REQUEST_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
IMAGE_ID_PATTERN = r"^[0-9a-f]{32}$"


class ImageJob(BaseModel):
    """The message a worker pulls from JetStream: one image of one request. A message whose
    ids are not a request's UUID and an image's 32 hex digits is refused as malformed (a
    forged ``../`` id must never reach the file system)."""

    model_config = ConfigDict(frozen=True)

    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    url: str
    options: RequestOptions = RequestOptions()
    # The API key that uploaded the request ("" for none): outputs are reused within a key.
    tenant: str = Field(default="", max_length=36)

    @property
    def message_id(self) -> str:
        return f"{self.request_id}.{self.image_id}"


@dataclass(frozen=True)
class ImageView:
    image_id: str
    serial_number: int
    product_name: str
    position: int
    input_url: str
    status: ImageState
    error: str | None = None
    output_path: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    quality_used: int | None = None
    encoder: str | None = None
    effort: Effort | None = None
    score: float | None = None


@dataclass(frozen=True)
class ImageCursor:
    """The last image of a page, in the order pages follow: serial number, then position."""

    serial_number: int
    position: int


@dataclass(frozen=True)
class ImagePage:
    images: list[ImageView]
    # Where the next page starts; None on the last page.
    next_after: ImageCursor | None = None


@dataclass(frozen=True)
class RequestCounters:
    status: RequestState
    total: int
    completed: int
    failed: int
    version: int


@dataclass(frozen=True)
class WebhookView:
    url: str
    # waiting (request still running), pending, delivered or failed.
    state: str
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class RequestView:
    request_id: str
    file_name: str
    options: RequestOptions
    webhook_url: str | None
    counters: RequestCounters
    created_at: datetime
    completed_at: datetime | None
    header: list[str] = field(default_factory=list)
    # One page of images (the first, unless asked otherwise), never all of a large request.
    images: list[ImageView] = field(default_factory=list)
    webhook: WebhookView | None = None
    # Where the page after ``images`` starts; None when there is none or none was read.
    next_images: ImageCursor | None = None
    # The filter ``images`` was read with (None: every image).
    images_state: ImageState | None = None


@dataclass(frozen=True)
class ImageChange:
    """One committed change to an image with the request counters it produced."""

    request_id: str
    image: ImageView
    counters: RequestCounters
    # True only for the one commit that moved the request to a terminal state.
    finished_request: bool = False


@dataclass(frozen=True)
class ImageSuccess:
    output_path: str
    bytes_in: int
    bytes_out: int
    width: int
    height: int
    # The receipt: what encoded the output (encoder None: the source was kept as it was).
    quality_used: int | None = None
    encoder: str | None = None
    effort: Effort | None = None
    score: float | None = None


@dataclass(frozen=True)
class ImageFailure:
    reason: str
    bytes_in: int | None = None


ImageOutcome = ImageSuccess | ImageFailure
