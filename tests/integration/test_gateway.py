"""The REST shim's own behaviour: auth, error shapes, the OpenAPI description."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from pixpipe.settings import Settings
from services.gateway.app import create_app


def client_for(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                             base_url="http://gateway")


async def test_api_token_guards_every_route_but_health_and_files(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api_token="s3cret")
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    (settings.images_dir / "r").mkdir(exist_ok=True)
    (settings.images_dir / "r" / "i.jpg").write_bytes(b"jpeg")
    async with client_for(settings) as client:
        for method, path in (("GET", "/status/6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"),
                             ("GET", "/requests"), ("POST", "/upload/"),
                             ("GET", "/status/x/csv"), ("GET", "/status/x/events")):
            refused = await client.request(method, path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["status"] == "UNAUTHENTICATED"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/processed_images/r/i.jpg")).content == b"jpeg"
        assert (await client.get("/openapi.json")).status_code == 200


async def test_every_error_is_google_rpc_status_shaped(
        make_settings: Callable[..., Settings]) -> None:
    async with client_for(make_settings()) as client:
        invalid = await client.post("/upload/", files={"file": ("a.csv", b"x")},
                                    data={"quality": "120"})
        assert invalid.status_code == 400
        body = invalid.json()["error"]
        assert body["status"] == "INVALID_ARGUMENT"
        assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert body["details"][0]["fieldViolations"][0]["field"] == "quality"
        missing_file = await client.post("/upload/")
        assert missing_file.status_code == 400
        unknown = await client.get("/no/such/route")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["status"] == "NOT_FOUND"


async def test_openapi_describes_every_route_with_examples(
        make_settings: Callable[..., Settings]) -> None:
    async with client_for(make_settings()) as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    expected = {("post", "/upload/"), ("get", "/status/{request_id}"),
                ("get", "/status/{request_id}/events"), ("get", "/status/{request_id}/csv"),
                ("get", "/requests"), ("get", "/healthz")}
    described = {(method, path) for path, operations in spec["paths"].items()
                 for method in operations}
    assert expected <= described
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
            ok = operation["responses"]["200"]
            assert any("example" in media for media in ok.get("content", {}).values()), (
                f"{method} {path} has no example")
