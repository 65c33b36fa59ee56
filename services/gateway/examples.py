"""Example values shown in the OpenAPI description beside the generated schemas."""

from __future__ import annotations

from typing import Any

REQUEST_ID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
IMAGE = {"image_id": "3f6e0b8a9c2d4e5f8a7b6c5d4e3f2a1b", "serial_number": 1,
         "product_name": "SKU1", "input_url": "https://img.example/a.jpg",
         "output_url": "https://pixpipe.example/processed_images/"
                       f"{REQUEST_ID}/3f6e0b8a9c2d4e5f8a7b6c5d4e3f2a1b.jpg",
         "status": "completed", "error": None, "bytes_in": 123456, "bytes_out": 23456,
         "position": 0, "quality_used": 50, "encoder": "libjpeg-turbo", "effort": "balanced",
         "score": None}
STATUS = {"request_id": REQUEST_ID, "status": "completed", "total": 2, "completed": 1,
          "failed": 1, "created_at": "2026-11-24T10:00:00Z",
          "completed_at": "2026-11-24T10:00:04Z",
          "options": {"quality": 50, "format": None, "effort": None, "measure_quality": False},
          "file_name": "products.csv", "version": 5, "in_progress": 0,
          "images": [IMAGE, {**IMAGE, "image_id": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
                             "input_url": "https://img.example/missing.jpg", "position": 1,
                             "output_url": None, "status": "failed",
                             "error": "HTTP 404 from source", "bytes_in": 0,
                             "bytes_out": 0, "quality_used": None, "encoder": None,
                             "effort": None}],
          "webhook": {"url": "https://shop.example/hooks/pixpipe", "state": "delivered",
                      "attempts": 1, "last_status_code": 200, "last_error": None},
          "next_page_token": None}
UPLOAD = {"request_id": REQUEST_ID, "message": "File uploaded successfully", "image_count": 3}
REQUESTS = {"requests": [{key: STATUS[key] for key in (
    "request_id", "status", "total", "completed", "failed", "created_at", "completed_at",
    "file_name")}]}
EVENTS = (f'id: 1\nevent: snapshot\ndata: {{"request_id":"{REQUEST_ID}","version":1,'
          '"type":"snapshot","request":{…}}\n\n'
          f'id: 2\nevent: image\ndata: {{"request_id":"{REQUEST_ID}","version":2,'
          '"type":"image","image":{…},"status":"processing","total":2,"completed":0,'
          '"failed":0}\n\n')
OUTPUT_CSV = ("S. No.,Product Name,Input Image Urls,Output Image Urls,Output Quality,"
              "Output Encoder,Output Scores\r\n"
              '1,SKU1,"https://img.example/a.jpg,https://img.example/missing.jpg",'
              f'"https://pixpipe.example/processed_images/{REQUEST_ID}/3f6e.jpg,",'
              '"50,","libjpeg-turbo,",","\r\n')
READY = {"status": "ready", "checks": {"ingest": "ok", "status": "ok", "database": "ok"}}
NOT_READY = {"status": "not ready", "not_ready": ["ingest"],
             "checks": {"ingest": "UNAVAILABLE: failed to connect to all addresses",
                        "status": "ok", "database": "ok"}}


def error_body(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "message": message, "details": []},
            **extra}


CSV_REFUSED = error_body(400, "INVALID_ARGUMENT", "CSV refused: line 3, column 1 (S. No.): "
                         "serial number must be a positive integer",
                         errors=[{"line": 3, "column": 1, "field": "S. No.",
                                  "reason": "serial number must be a positive integer"}])
