"""Example bodies for the OpenAPI description of every route."""

from __future__ import annotations

from typing import Any

REQUEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
IMAGE = {"image_id": "3f6e0b8a9c2d4e5f8a7b6c5d4e3f2a1b", "serial_number": 1,
         "product_name": "SKU1", "input_url": "https://img.example/a.jpg",
         "output_url": f"/processed_images/{REQUEST_ID}/3f6e0b8a9c2d4e5f8a7b6c5d4e3f2a1b.jpg",
         "status": "completed", "error": None, "bytes_in": 123456, "bytes_out": 23456,
         "position": 0}
STATUS = {"request_id": REQUEST_ID, "status": "completed", "total": 2, "completed": 1,
          "failed": 1, "created_at": "2026-11-24T10:00:00Z",
          "completed_at": "2026-11-24T10:00:04Z", "options": {"quality": 50, "format": None},
          "file_name": "products.csv", "version": 5,
          "images": [IMAGE, {**IMAGE, "image_id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
                             "input_url": "https://img.example/missing.jpg", "position": 1,
                             "output_url": None, "status": "failed",
                             "error": "HTTP 404 from source", "bytes_in": 0,
                             "bytes_out": 0}],
          "webhook": {"url": "https://shop.example/hooks/pixpipe", "state": "delivered",
                      "attempts": 1, "last_status_code": 200, "last_error": None}}


def error(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": {
        "error": {"code": code, "status": status, "message": message, "details": []},
        **extra}}}}


UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {
        "request_id": REQUEST_ID, "message": "File uploaded successfully", "image_count": 3}}}},
    400: {"description": "the CSV or an option is invalid; every fault is listed",
          **error(400, "INVALID_ARGUMENT", "CSV refused: line 3, column 1 (S. No.): serial "
                  "number must be a positive integer",
                  errors=[{"line": 3, "column": 1, "field": "S. No.",
                           "reason": "serial number must be a positive integer"}])},
    503: {"description": "the job queue is unavailable; nothing was queued",
          **error(503, "UNAVAILABLE", "the job queue is unavailable; nothing was queued")},
}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": STATUS}}},
    400: {"description": "malformed request id",
          **error(400, "INVALID_ARGUMENT", "request_id must be a UUID, got 'x'")},
    404: {"description": "unknown request",
          **error(404, "NOT_FOUND", f"no request {REQUEST_ID}")},
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events: a snapshot, image events, then completed",
          "content": {"text/event-stream": {"example": (
              f'id: 1\nevent: snapshot\ndata: {{"request_id":"{REQUEST_ID}","version":1,'
              '"type":"snapshot","request":{…}}\n\n'
              f'id: 2\nevent: image\ndata: {{"request_id":"{REQUEST_ID}","version":2,'
              '"type":"image","image":{…},"status":"processing","total":2,"completed":0,'
              '"failed":0}\n\n')}}},
    404: STATUS_RESPONSES[404],
}
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the uploaded columns plus Output Image Urls and the receipts",
          "content": {"text/csv": {"example": (
              "S. No.,Product Name,Input Image Urls,Output Image Urls,Output Quality,"
              "Output Encoder,Output Scores\r\n"
              '1,SKU1,"https://img.example/a.jpg,https://img.example/missing.jpg",'
              f'"https://pixpipe.example/processed_images/{REQUEST_ID}/3f6e.jpg,",'
              '"50,","libjpeg-turbo,",","\r\n')}}},
    404: STATUS_RESPONSES[404],
    409: {"description": "the request is still running",
          **error(409, "FAILED_PRECONDITION", f"request {REQUEST_ID} is still processing")},
}
REQUESTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {"requests": [
        {key: STATUS[key] for key in ("request_id", "status", "total", "completed", "failed",
                                      "created_at", "completed_at", "file_name")}]}}}},
}

VALIDATION_RESPONSE: dict[str, Any] = {
    "description": "a parameter is out of range or malformed",
    **error(400, "INVALID_ARGUMENT", "quality: Input should be less than or equal to 95")}
