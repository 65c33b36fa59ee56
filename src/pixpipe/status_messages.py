"""Builds the protobuf status messages from views, and the status JSON from those messages."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from pixpipe.domain import (
    Effort,
    ImageChange,
    ImageState,
    ImageView,
    OutputFormat,
    RequestCounters,
    RequestOptions,
    RequestState,
    RequestView,
)
from pixpipe.paging import encode_page_token
from pixpipe.v1 import options_pb2, status_pb2

_REQUEST_STATES = {
    RequestState.PENDING: status_pb2.REQUEST_STATE_PENDING,
    RequestState.PROCESSING: status_pb2.REQUEST_STATE_PROCESSING,
    RequestState.COMPLETED: status_pb2.REQUEST_STATE_COMPLETED,
    RequestState.FAILED: status_pb2.REQUEST_STATE_FAILED,
}
_IMAGE_STATES = {
    ImageState.PENDING: status_pb2.IMAGE_STATE_PENDING,
    ImageState.PROCESSING: status_pb2.IMAGE_STATE_PROCESSING,
    ImageState.COMPLETED: status_pb2.IMAGE_STATE_COMPLETED,
    ImageState.FAILED: status_pb2.IMAGE_STATE_FAILED,
}
IMAGE_STATES_TO_PROTO = _IMAGE_STATES
IMAGE_STATES_FROM_PROTO = {value: key for key, value in _IMAGE_STATES.items()}
FORMATS_TO_PROTO: dict[OutputFormat, options_pb2.ImageFormat.ValueType] = {
    "jpeg": options_pb2.IMAGE_FORMAT_JPEG,
    "webp": options_pb2.IMAGE_FORMAT_WEBP,
    "avif": options_pb2.IMAGE_FORMAT_AVIF,
    "auto": options_pb2.IMAGE_FORMAT_AUTO,
}
FORMATS_FROM_PROTO: dict[int, OutputFormat] = {
    value: key for key, value in FORMATS_TO_PROTO.items()}
EFFORTS_TO_PROTO: dict[Effort, options_pb2.Effort.ValueType] = {
    "fast": options_pb2.EFFORT_FAST,
    "balanced": options_pb2.EFFORT_BALANCED,
    "max": options_pb2.EFFORT_MAX,
}
EFFORTS_FROM_PROTO: dict[int, Effort] = {value: key for key, value in EFFORTS_TO_PROTO.items()}

PROCESSED_IMAGES_ROUTE = "/processed_images"


def output_url(output_path: str | None, base_url: str) -> str | None:
    """The absolute address users fetch an output at: the gateway's route, which serves the
    file or redirects to the object in the bucket."""
    return f"{base_url.rstrip('/')}{PROCESSED_IMAGES_ROUTE}/{output_path}" if output_path else None


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def options_to_proto(options: RequestOptions) -> options_pb2.ProcessingOptions:
    message = options_pb2.ProcessingOptions()
    if options.quality == "auto":
        message.quality_auto = True
    elif options.quality is not None:
        message.quality = options.quality
    if options.max_width is not None:
        message.max_width = options.max_width
    if options.max_height is not None:
        message.max_height = options.max_height
    if options.format is not None:
        message.format = FORMATS_TO_PROTO[options.format]
    if options.effort is not None:
        message.effort = EFFORTS_TO_PROTO[options.effort]
    if options.target_score is not None:
        message.target_score = options.target_score
    if options.measure_quality:
        message.measure_quality = True
    return message


def options_from_proto(message: options_pb2.ProcessingOptions) -> RequestOptions:
    """Raises pydantic.ValidationError for out-of-range values."""
    quality: int | Literal["auto"] | None = None
    if message.quality_auto:
        quality = "auto"
    elif message.HasField("quality"):
        quality = message.quality
    return RequestOptions(
        quality=quality,
        max_width=message.max_width if message.HasField("max_width") else None,
        max_height=message.max_height if message.HasField("max_height") else None,
        format=FORMATS_FROM_PROTO.get(message.format),
        effort=EFFORTS_FROM_PROTO.get(message.effort),
        target_score=message.target_score if message.HasField("target_score") else None,
        measure_quality=message.measure_quality or None,
    )


def image_to_proto(image: ImageView, base_url: str) -> status_pb2.ImageStatus:
    message = status_pb2.ImageStatus(
        image_id=image.image_id, serial_number=image.serial_number,
        product_name=image.product_name, input_url=image.input_url,
        status=_IMAGE_STATES[image.status], bytes_in=image.bytes_in or 0,
        bytes_out=image.bytes_out or 0, position=image.position,
    )
    url = output_url(image.output_path, base_url)
    if url is not None:
        message.output_url = url
    if image.error is not None:
        message.error = image.error
    if image.quality_used is not None:
        message.quality_used = image.quality_used
    if image.encoder is not None:
        message.encoder = image.encoder
    if image.effort is not None:
        message.effort = EFFORTS_TO_PROTO[image.effort]
    if image.score is not None:
        message.score = image.score
    return message


def request_to_proto(view: RequestView, base_url: str) -> status_pb2.RequestStatus:
    counters = view.counters
    message = status_pb2.RequestStatus(
        request_id=view.request_id, status=_REQUEST_STATES[counters.status],
        total=counters.total, completed=counters.completed, failed=counters.failed,
        images=[image_to_proto(image, base_url) for image in view.images],
        options=options_to_proto(view.options), file_name=view.file_name,
        version=counters.version,
        in_progress=max(counters.total - counters.completed - counters.failed, 0),
    )
    if view.next_images is not None:
        message.next_page_token = encode_page_token(view.request_id, view.images_state,
                                                    view.next_images)
    message.created_at.CopyFrom(timestamp(view.created_at))
    if view.completed_at is not None:
        message.completed_at.CopyFrom(timestamp(view.completed_at))
    if view.webhook is not None:
        webhook = view.webhook
        message.webhook.url = webhook.url
        message.webhook.state = webhook.state
        message.webhook.attempts = webhook.attempts
        if webhook.last_status_code is not None:
            message.webhook.last_status_code = webhook.last_status_code
        if webhook.last_error is not None:
            message.webhook.last_error = webhook.last_error
    return message


def image_event(change: ImageChange, base_url: str) -> status_pb2.WatchStatusResponse:
    counters: RequestCounters = change.counters
    event = status_pb2.WatchStatusResponse(request_id=change.request_id,
                                           version=counters.version)
    event.emitted_at.FromNanoseconds(time.time_ns())  # GetCurrentTime goes via datetime
    event.image.CopyFrom(status_pb2.ImageEvent(
        image=image_to_proto(change.image, base_url),
        request_status=_REQUEST_STATES[counters.status],
        total=counters.total, completed=counters.completed, failed=counters.failed,
    ))
    return event


def completion_event(view: RequestView, base_url: str) -> status_pb2.WatchStatusResponse:
    event = status_pb2.WatchStatusResponse(request_id=view.request_id,
                                           version=view.counters.version)
    event.emitted_at.FromNanoseconds(time.time_ns())  # GetCurrentTime goes via datetime
    event.completed.CopyFrom(request_to_proto(view, base_url))
    return event


def snapshot_event(view: RequestView, base_url: str) -> status_pb2.WatchStatusResponse:
    event = status_pb2.WatchStatusResponse(request_id=view.request_id,
                                           version=view.counters.version)
    event.emitted_at.FromNanoseconds(time.time_ns())  # GetCurrentTime goes via datetime
    event.snapshot.CopyFrom(request_to_proto(view, base_url))
    return event


def _enum_suffix(value: str, prefix: str) -> str:
    return value.removeprefix(prefix).lower()


_IMAGE_STATE_NAMES = {value: state.value for state, value in _IMAGE_STATES.items()}
_EFFORT_NAMES: dict[int, str] = dict(EFFORTS_FROM_PROTO)


def image_to_json(message: status_pb2.ImageStatus) -> dict[str, Any]:
    """One image of the status JSON.

    Written out field by field rather than through MessageToDict: a page holds up to 1000
    images, and the generic mapping cost ~50 µs an image (50 ms a page) against ~2 µs here.
    tests/unit/test_status_messages.py holds it to MessageToDict's output.
    """
    return {
        "image_id": message.image_id,
        "serial_number": message.serial_number,
        "product_name": message.product_name,
        "input_url": message.input_url,
        "output_url": message.output_url if message.HasField("output_url") else None,
        "status": _IMAGE_STATE_NAMES.get(message.status, "unspecified"),
        "error": message.error if message.HasField("error") else None,
        "bytes_in": message.bytes_in,
        "bytes_out": message.bytes_out,
        "position": message.position,
        "quality_used": message.quality_used if message.HasField("quality_used") else None,
        "encoder": message.encoder if message.HasField("encoder") else None,
        "effort": _EFFORT_NAMES.get(message.effort),
        "score": message.score if message.HasField("score") else None,
    }


def request_to_json(message: status_pb2.RequestStatus) -> dict[str, Any]:
    """The status JSON of DESIGN §6 (also the webhook body), via the protobuf JSON mapping."""
    summary = status_pb2.RequestStatus()
    summary.CopyFrom(message)
    del summary.images[:]  # mapped below, much faster than MessageToDict maps them
    data = MessageToDict(summary, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)
    data["status"] = _enum_suffix(data["status"], "REQUEST_STATE_")
    data["version"] = int(data["version"])
    data["images"] = [image_to_json(image) for image in message.images]
    data["next_page_token"] = message.next_page_token or None
    data.setdefault("completed_at", None)
    options = data.get("options", {})
    if "format" in options:
        fmt = _enum_suffix(options["format"], "IMAGE_FORMAT_")
        options["format"] = None if fmt == "unspecified" else fmt
    if options.pop("quality_auto", False):
        options["quality"] = "auto"
    if "effort" in options:
        effort = _enum_suffix(options["effort"], "EFFORT_")
        options["effort"] = None if effort == "unspecified" else effort
    if message.HasField("webhook"):
        data["webhook"].setdefault("last_status_code", None)
        data["webhook"].setdefault("last_error", None)
    else:
        data["webhook"] = None
    return data


def event_to_json(event: status_pb2.WatchStatusResponse) -> dict[str, Any]:
    """One watch event as JSON (used by the SSE route)."""
    kind = event.WhichOneof("event")
    body: dict[str, Any] = {"request_id": event.request_id, "version": event.version,
                            "type": kind}
    if kind == "image":
        image_event_message = event.image
        body.update(
            image=image_to_json(image_event_message.image),
            status=_enum_suffix(status_pb2.RequestState.Name(image_event_message.request_status),
                                "REQUEST_STATE_"),
            total=image_event_message.total, completed=image_event_message.completed,
            failed=image_event_message.failed,
        )
    elif kind in ("snapshot", "completed"):
        body["request"] = request_to_json(getattr(event, kind))
    return body
