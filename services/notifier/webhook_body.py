"""The webhook body: the status JSON, bounded to 1 MB whatever the size of the request."""

from __future__ import annotations

import json
from typing import Any

from pixpipe.db.repository import Repository
from pixpipe.domain import ImageState
from pixpipe.paging import MAX_PAGE_SIZE, ImagePageQuery
from pixpipe.status_messages import image_to_json, image_to_proto, request_to_json, request_to_proto

MAX_BODY_BYTES = 1024 * 1024
# Failed images listed in a large request's body; the rest are counted and linked.
MAX_FAILED_IMAGES = 1000
# Room kept for the summary, the links and the counts around the failed images.
_SUMMARY_ROOM_BYTES = 64 * 1024


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def status_links(public_base_url: str, request_id: str) -> dict[str, str]:
    base = public_base_url.rstrip("/")
    return {"status": f"{base}/status/{request_id}",
            "failed_images": f"{base}/status/{request_id}?status=failed",
            "output_csv": f"{base}/status/{request_id}/csv"}


async def webhook_body(repository: Repository, request_id: str, *,
                       public_base_url: str) -> str | None:
    """The JSON to POST; None when the request is gone.

    A request of up to 1000 images gets its status JSON with every image, as receivers of
    small requests always had. A larger one gets the summary, its failed images (at most
    1000, and never past 1 MB in all) with a count of those left out, and absolute links to
    the full status and the output CSV.
    """
    view = await repository.get_request(request_id)
    if view is None:
        return None
    body = request_to_json(request_to_proto(view, public_base_url))
    for internal in ("webhook", "next_page_token"):
        body.pop(internal, None)
    body["links"] = status_links(public_base_url, request_id)
    if view.next_images is None and view.counters.total <= MAX_PAGE_SIZE:
        body["images_complete"] = True
        encoded = _compact(body)
        if len(encoded.encode()) <= MAX_BODY_BYTES:
            return encoded
    body["images"] = []
    body["images_complete"] = False
    failed = await repository.list_images(request_id, ImagePageQuery(
        size=MAX_FAILED_IMAGES, state=ImageState.FAILED))
    room = MAX_BODY_BYTES - _SUMMARY_ROOM_BYTES
    listed: list[dict[str, Any]] = []
    for image in failed.images if failed else []:
        entry = image_to_json(image_to_proto(image, public_base_url))
        room -= len(_compact(entry).encode()) + 1
        if room < 0:
            break
        listed.append(entry)
    body["failed_images"] = listed
    body["failed_images_omitted"] = view.counters.failed - len(listed)
    return _compact(body)
