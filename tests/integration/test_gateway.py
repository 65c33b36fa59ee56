"""The REST shim's own behaviour: auth, error shapes, the OpenAPI description."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from pixpipe.dev.embedded_nats import free_port
from pixpipe.settings import Settings
from pixpipe_services.gateway.app import create_app
from pixpipe_services.gateway.sse import resume_version


def client_for(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                             base_url="http://localhost")


async def test_api_token_guards_every_route_but_health_and_files(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api_token="s3cret")
    settings.storage.images_dir.mkdir(parents=True, exist_ok=True)
    (settings.storage.images_dir / "r").mkdir(exist_ok=True)
    (settings.storage.images_dir / "r" / "i.jpg").write_bytes(b"jpeg")
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


def test_a_reconnect_resumes_only_after_a_real_version() -> None:
    assert resume_version("42") == 42
    assert resume_version(str(2**64 - 1)) == 2**64 - 1
    for bad in ("", "99999999999999999999", "1" * 40, "-1", "4.2", "①②", "٣", " 7", "0x10"):
        assert resume_version(bad) == 0, bad


async def test_bad_last_event_ids_never_break_the_event_stream(
        make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(ingest_address=f"127.0.0.1:{free_port()}",
                                   status_address=f"127.0.0.1:{free_port()}"))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        answer = await client.get("/status/6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/events",
                                  headers={"Last-Event-ID": "99999999999999999999"})
    # No status service runs behind this gateway: unavailable, never an internal error.
    assert answer.status_code == 503
    assert answer.json()["error"]["status"] == "UNAVAILABLE"


async def test_the_auth_check_reads_the_routed_path_not_the_host_header(
        make_settings: Callable[..., Settings]) -> None:
    # Any Host is let through to show the token check never looks at it.
    async with client_for(make_settings(api_token="s3cret", allowed_hosts=["*"])) as client:
        for host in ("gateway/healthz?", "gateway/healthz#", "gateway/static/"):
            refused = await client.get("/requests", headers={"Host": host})
            assert refused.status_code == 401, host


async def test_the_description_names_the_token_routes_and_the_resume_header(
        make_settings: Callable[..., Settings]) -> None:
    async with client_for(make_settings()) as client:
        spec = (await client.get("/openapi.json")).json()
    public = {"/healthz", "/readyz"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert bool(operation.get("security")) == (path not in public), (method, path)
    events = spec["paths"]["/status/{request_id}/events"]["get"]
    assert {"in": "header", "name": "Last-Event-ID"}.items() <= next(
        parameter for parameter in events["parameters"]
        if parameter["in"] == "header").items()


async def test_a_method_not_allowed_names_the_allowed_ones(
        make_settings: Callable[..., Settings]) -> None:
    async with client_for(make_settings()) as client:
        refused = await client.delete("/healthz")
    assert refused.status_code == 405
    assert refused.headers["Allow"] == "GET"
    assert refused.json()["error"]["code"] == 405
