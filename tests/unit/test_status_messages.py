"""The status JSON built from the protobuf messages (pure)."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from pixpipe.status_messages import image_to_json, request_to_json
from pixpipe.v1 import options_pb2, status_pb2


def _generic_mapping(message: status_pb2.ImageStatus) -> dict[str, Any]:
    """What protobuf's own JSON mapping makes of an image, in the status JSON's shape."""
    data = MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)
    data["status"] = data["status"].removeprefix("IMAGE_STATE_").lower()
    data["bytes_in"], data["bytes_out"] = int(data["bytes_in"]), int(data["bytes_out"])
    data.setdefault("output_url", None)
    data.setdefault("error", None)
    effort = data["effort"].removeprefix("EFFORT_").lower()
    data["effort"] = None if effort == "unspecified" else effort
    for name in ("quality_used", "encoder", "score"):
        data.setdefault(name, None)
    return data


def test_the_fast_image_mapping_agrees_with_protobufs_own() -> None:
    done = status_pb2.ImageStatus(
        image_id="a1", serial_number=7, product_name="Lamp, “large”", input_url="https://x/a",
        output_url="/processed_images/r/a1.jpg", status=status_pb2.IMAGE_STATE_COMPLETED,
        bytes_in=2**40, bytes_out=12, position=3, quality_used=50, encoder="mozjpeg",
        effort=options_pb2.EFFORT_MAX, score=71.25)
    failed = status_pb2.ImageStatus(image_id="b2", serial_number=1, input_url="https://x/b",
                                    status=status_pb2.IMAGE_STATE_FAILED, error="not an image")
    pending = status_pb2.ImageStatus(image_id="c3", status=status_pb2.IMAGE_STATE_PENDING)
    for image in (done, failed, pending):
        assert image_to_json(image) == _generic_mapping(image)


def test_a_page_of_a_large_request_carries_its_next_page_token() -> None:
    message = status_pb2.RequestStatus(request_id="r", total=5000, completed=10,
                                       in_progress=4990, next_page_token="tok")
    message.images.add(image_id="a", status=status_pb2.IMAGE_STATE_PENDING)
    data = request_to_json(message)
    assert data["next_page_token"] == "tok"
    assert data["in_progress"] == 4990
    assert [image["image_id"] for image in data["images"]] == ["a"]
    assert message.images[0].image_id == "a"  # the message itself is left as it was
    assert request_to_json(status_pb2.RequestStatus())["next_page_token"] is None
