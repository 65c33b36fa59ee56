"""The Postman collection, run by newman against the whole stack, as a user's client would."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_server import CorpusHttpServer
from tests.support.stack import RunningStack, products_csv
from tests.support.webhook_receiver import WebhookReceiver

REPOSITORY = Path(__file__).resolve().parents[2]
COLLECTION = REPOSITORY / "postman_collection.json"
INSTALL_NEWMAN = REPOSITORY / "scripts" / "install_newman.sh"
NEWMAN = REPOSITORY / ".tools" / "newman" / "node_modules" / ".bin" / "newman"

# Faults at line 3 (S. No.) and line 4 (Input Image Urls): the collection checks the places.
BAD_CSV = ("S. No.,Product Name,Input Image Urls\n"
           "1,Fine,http://127.0.0.1:9/a.jpg\n"
           "two,Bad Serial,http://127.0.0.1:9/b.jpg\n"
           "3,Bad Scheme,ftp://127.0.0.1/c.jpg\n")
BAD_CSV_FAULTS = "3:1,4:3"
# Every pm.test in the collection for a run with all the expected* variables set: a change to
# the collection's tests changes this number on purpose.
ASSERTIONS = 24
NEWMAN_SECONDS = 120


async def run(*command: str, timeout: float) -> tuple[int, str]:  # noqa: ASYNC109
    """Runs a child process without blocking the event loop; its output merged, decoded."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.fixture(scope="session")
async def newman() -> Path:
    """The newman binary, installed from npm into .tools/ on first use."""
    if not NEWMAN.exists() and shutil.which("npm") is None:
        pytest.skip("npm is not installed: newman cannot be installed")
    code, output = await run(str(INSTALL_NEWMAN), timeout=300)
    assert code == 0, f"scripts/install_newman.sh failed:\n{output}"
    return Path(output.strip().splitlines()[-1])


def requests_in(items: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for item in items:
        names.extend(requests_in(item["item"]) if "item" in item else [item["name"]])
    return names


async def test_postman_collection_passes_against_the_stack(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path, newman: Path,
        tmp_path: Path) -> None:
    (tmp_path / "products.csv").write_bytes(products_csv(corpus_dir, corpus_server.port))
    (tmp_path / "bad.csv").write_text(BAD_CSV)
    report_path = tmp_path / "newman.json"
    with WebhookReceiver() as receiver:
        variables = {
            "baseUrl": stack.gateway_url, "csvFile": "products.csv", "badCsvFile": "bad.csv",
            "webhookUrl": receiver.url("/postman"), "expectedCompleted": "12",
            "expectedFailed": "2", "expectedFaults": BAD_CSV_FAULTS,
        }
        code, output = await run(
            str(newman), "run", str(COLLECTION),
            *(argument for key, value in variables.items()
              for argument in ("--env-var", f"{key}={value}")),
            "--working-dir", str(tmp_path), "--no-insecure-file-read",
            "--timeout", str((NEWMAN_SECONDS - 10) * 1000), "--timeout-request", "30000",
            "--reporters", "cli,json", "--reporter-json-export", str(report_path),
            "--color", "off",
            timeout=NEWMAN_SECONDS)
        assert code == 0, f"newman failed ({code}):\n{output}\n{stack.logs()}"
        post = await asyncio.to_thread(receiver.wait_for_success, 30.0)
    assert json.loads(post.body)["status"] == "completed"

    report = json.loads(report_path.read_text())["run"]
    assert report["failures"] == [], output
    assertions = report["stats"]["assertions"]
    assert (assertions["total"], assertions["failed"]) == (ASSERTIONS, 0), output
    executed = [execution["item"]["name"] for execution in report["executions"]]
    collection = json.loads(COLLECTION.read_text())
    polls = [name for name in executed if name == "Status until terminal"]
    assert [name for name in executed if name not in polls] == [
        name for name in requests_in(collection["item"]) if name not in polls], output
    assert 1 <= len(polls) <= 60, output
