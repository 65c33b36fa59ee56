"""API keys on the whole stack: a key sees only its own requests, signs its own webhooks,
and is held to its own limits; a revoked key stops working."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from pixpipe.call_limits import retry_delay_seconds
from pixpipe.cli.main import main as cli
from pixpipe.client.connection import PixpipeClient, ServerAddresses
from pixpipe.v1 import status_pb2
from pixpipe.webhook_signature import WebhookVerificationError, verify
from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer
from tests.support.stack import (
    RunningStack,
    products_csv,
    stack_in,
)
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                nats_server: NatsServer) -> Iterator[RunningStack]:
    with stack_in(tmp_path_factory, "stack-keys", database_url=database_url,
                  nats_url=nats_server.url, workers=1, PIXPIPE_API_KEYS="true") as running:
        yield running


async def keys_command(*arguments: str) -> int:
    """The ``pixpipe keys`` command line, run as a command (it has an event loop of its own)."""
    return await asyncio.to_thread(cli, ["keys", *arguments])


async def make_key(stack: RunningStack, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], name: str, *limits: str,
                   ) -> dict[str, str]:
    """``pixpipe keys create`` against the stack's database, as an operator would run it."""
    monkeypatch.setenv("PIXPIPE_DATABASE_URL", stack.settings.storage.resolved_database_url)
    capsys.readouterr()
    assert await keys_command("create", name, "--json", *limits) == 0
    made: dict[str, str] = json.loads(capsys.readouterr().out)
    assert made["token"].startswith("pxp_") and made["webhook_secret"].startswith("whsec_")
    return made


def client_of(stack: RunningStack, token: str | None) -> PixpipeClient:
    return PixpipeClient(ServerAddresses(ingest=stack.ingest_address,
                                         status=stack.status_address), api_token=token)


async def not_found(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value


async def test_a_key_sees_only_its_own_requests_and_signs_its_own_webhooks(
        keyed_stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    shop_a = await make_key(keyed_stack, monkeypatch, capsys, "Shop A")
    shop_b = await make_key(keyed_stack, monkeypatch, capsys, "Shop B")
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(corpus_dir, corpus_server.port))

    with WebhookReceiver() as receiver:
        async with client_of(keyed_stack, shop_a["token"]) as a, \
                client_of(keyed_stack, shop_b["token"]) as b, \
                client_of(keyed_stack, None) as nobody:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await nobody.upload(csv_path)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

            answer = await a.upload(csv_path, webhook_url=receiver.url())
            request_id = answer.request_id
            async for _event in a.watch(request_id):
                pass
            status = await a.get_status(request_id)
            assert (status.total, status.completed, status.failed) == (14, 12, 2)

            # To shop B the request does not exist, on every call.
            await not_found(b.get_status(request_id))
            await not_found(b.get_status(request_id, summary_only=True))
            await not_found(anext(b.list_images(request_id)))
            await not_found(anext(b.export_csv(request_id)))
            watch = b.status.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                         metadata=b.metadata)
            await not_found(watch.read())
            listed_b = await b.status.ListRequests(status_pb2.ListRequestsRequest(limit=100),
                                                   metadata=b.metadata)
            assert request_id not in {r.request_id for r in listed_b.requests}
            listed_a = await a.status.ListRequests(status_pb2.ListRequestsRequest(limit=100),
                                                   metadata=a.metadata)
            assert [r.request_id for r in listed_a.requests] == [request_id]
            assert b"".join([chunk async for chunk in a.export_csv(request_id)])

        # The same through the REST gateway, which passes each caller's key on.
        async with httpx.AsyncClient(base_url=keyed_stack.gateway_url, timeout=30) as rest:
            as_a = {"Authorization": f"Bearer {shop_a['token']}"}
            as_b = {"Authorization": f"Bearer {shop_b['token']}"}
            assert (await rest.get(f"/status/{request_id}", headers=as_a)).status_code == 200
            for path in (f"/status/{request_id}", f"/status/{request_id}/csv",
                         f"/status/{request_id}/events"):
                reply = await rest.get(path, headers=as_b)
                assert reply.status_code == 404, (path, reply.text)
                assert (await rest.get(path)).status_code == 401
            assert (await rest.get(path, headers={"Authorization": "Bearer pxp_nobody"})
                    ).status_code == 401
            # Output files too: its own key reads them, another is told they do not exist.
            output = next(image.output_url for image in status.images
                          if image.HasField("output_url"))
            file = await rest.get(output, headers=as_a)
            assert file.status_code == 200 and file.content[:2] == b"\xff\xd8"
            assert (await rest.get(output, headers=as_b)).status_code == 404
            assert (await rest.get(output)).status_code == 401
            mine = (await rest.get("/requests", headers=as_a)).json()["requests"]
            theirs = (await rest.get("/requests", headers=as_b)).json()["requests"]
            assert [r["request_id"] for r in mine] == [request_id]
            assert request_id not in {r["request_id"] for r in theirs}

        delivered = receiver.wait_for_success()
        verify(delivered.headers, delivered.body, shop_a["webhook_secret"])
        with pytest.raises(WebhookVerificationError):
            verify(delivered.headers, delivered.body, shop_b["webhook_secret"])
        with pytest.raises(WebhookVerificationError):
            verify(delivered.headers, delivered.body, keyed_stack.settings.webhooks.secret or "")

    # Revoked, the key stops working (within the few seconds keys are cached).
    capsys.readouterr()
    assert await keys_command("revoke", shop_b["id"]) == 0
    assert await keys_command("revoke", shop_b["id"]) == 1  # nothing left to revoke
    capsys.readouterr()
    assert await keys_command("list", "--json") == 0
    listed = {key["id"]: key for key in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed[shop_b["id"]]["revoked_at"] and listed[shop_a["id"]]["revoked_at"] is None
    assert "token" not in listed[shop_a["id"]]  # only its prefix is kept
    async with client_of(keyed_stack, shop_b["token"]) as b:
        for _ in range(100):
            try:
                await b.status.ListRequests(status_pb2.ListRequestsRequest(limit=1),
                                            metadata=b.metadata)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the revoked key still works")


async def test_a_key_is_held_to_its_images_per_hour(
        keyed_stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    limited = await make_key(keyed_stack, monkeypatch, capsys, "Small shop",
                       "--max-images-per-hour", "20")
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(corpus_dir, corpus_server.port))  # 14 images
    async with client_of(keyed_stack, limited["token"]) as client:
        await client.upload(csv_path)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.upload(csv_path)  # 28 in the hour
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "20 images per hour" in (error.details() or "")
    delay = retry_delay_seconds(error)
    assert delay is not None and 3000 < delay <= 3600
    async with httpx.AsyncClient(base_url=keyed_stack.gateway_url, timeout=30) as rest:
        answer = await rest.post("/upload/", files={"file": ("p.csv", csv_path.read_bytes(),
                                                             "text/csv")},
                                 headers={"Authorization": f"Bearer {limited['token']}"})
    assert answer.status_code == 429, answer.text
    assert 3000 < int(answer.headers["Retry-After"]) <= 3600
