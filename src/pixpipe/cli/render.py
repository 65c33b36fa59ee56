"""What ``pixpipe`` prints about a request: its summary, failed images, image rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixpipe.status_messages import image_to_json
from pixpipe.v1 import status_pb2

IMAGE_ROW_HEADER = "S. No.\tPosition\tStatus\tProduct\tInput URL\tOutput URL or error"


def state_name(status: status_pb2.RequestStatus) -> str:
    return status_pb2.RequestState.Name(status.status).removeprefix("REQUEST_STATE_").lower()


def _moment(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def summary_lines(status: status_pb2.RequestStatus) -> list[str]:
    """The request without its images: state, counters, timestamps, webhook delivery
    (console markup; what the user or a server wrote is escaped)."""
    lines = [
        f"request {status.request_id}: [bold]{state_name(status)}[/]",
        f"  images    {status.total} in all: {status.completed} completed, "
        f"{status.failed} failed, {status.in_progress} in progress",
    ]
    if status.file_name:
        lines.append(f"  file      {escape(status.file_name)}")
    lines.append(f"  created   {_moment(status.created_at)}")
    if status.HasField("completed_at"):
        lines.append(f"  finished  {_moment(status.completed_at)}")
    if status.HasField("webhook"):
        webhook = status.webhook
        attempts = f"{webhook.attempts} attempt{'' if webhook.attempts == 1 else 's'}"
        last = [f"HTTP {webhook.last_status_code}"] if webhook.HasField(
            "last_status_code") else []
        if webhook.HasField("last_error"):
            last.append(webhook.last_error)
        detail = "; ".join([attempts, *last])
        lines.append(escape(f"  webhook   {webhook.url}: {webhook.state} ({detail})"))
    return lines


def failures_table(failed: Sequence[status_pb2.ImageStatus], total_failed: int,
                   ) -> Table | None:
    """The failed images given (a first few), titled with how many failed in all."""
    if not failed:
        return None
    more = total_failed - len(failed)
    title = f"{total_failed} image(s) failed" + (f", the first {len(failed)}:" if more > 0
                                                  else "")
    table = Table(title=title, title_justify="left")
    table.add_column("S. No.", justify="right")
    table.add_column("Product")
    table.add_column("URL", overflow="fold")
    table.add_column("Reason", style="red")
    for image in failed:
        # Text, not str: a product name such as "[red] lamp" is not console markup.
        table.add_row(str(image.serial_number), Text(image.product_name),
                      Text(image.input_url), Text(image.error))
    return table


def _cell(text: str) -> str:
    return " ".join(text.split()) if any(c in text for c in "\t\r\n") else text


def image_row(image: status_pb2.ImageStatus) -> str:
    """One image as a tab-separated line (IMAGE_ROW_HEADER), for reading or for cut/grep."""
    state = status_pb2.ImageState.Name(image.status).removeprefix("IMAGE_STATE_").lower()
    result = image.output_url if image.HasField("output_url") else image.error
    return "\t".join([str(image.serial_number), str(image.position), state,
                      _cell(image.product_name), _cell(image.input_url), _cell(result)])


def image_json_line(image: status_pb2.ImageStatus) -> str:
    return json.dumps(image_to_json(image), separators=(",", ":"))
