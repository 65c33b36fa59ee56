"""The live gateway's answers, held by schemathesis to the OpenAPI description it publishes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infrastructure import NatsServer
from tests.support.stack import RunningStack, running_stack, stack_settings

# Per operation and phase: enough to reach every documented answer, few enough that the whole
# module (stack start included) takes about 20 s on 2 cores.
EXAMPLES = 15
SEED = 20260101
CHECKS = ",".join(("not_a_server_error", "status_code_conformance",
                   "content_type_conformance", "response_schema_conformance",
                   "unsupported_method", "positive_data_acceptance"))
# Page tokens come from the server: one it did not issue is refused (AIP-158) however
# well-formed, so the run asks for first pages only.
CONFIG = """\
[[operations]]
include-name = "GET /status/{request_id}"
parameters = { "page_token" = "" }
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, database_url: str,
            nats_server: NatsServer) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("conformance")
    # Private networks stay off as in production. The generated uploads name hosts that do
    # not resolve: one delivery fails their images at once, so their event streams end soon
    # and nothing stays queued for other tests.
    environment = stack_settings(data_dir, database_url=database_url, nats_url=nats_server.url,
                                 PIXPIPE_ALLOW_PRIVATE_NETWORKS="false",
                                 PIXPIPE_JOB_MAX_DELIVER="1")
    with running_stack(data_dir, environment, workers=1) as running:
        yield running


def test_every_answer_conforms_to_the_published_schema(gateway: RunningStack,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{gateway.gateway_url}/openapi.json", "--checks", CHECKS,
         "--phases", "examples,coverage,fuzzing", "--max-examples", str(EXAMPLES),
         "--seed", str(SEED), "--request-timeout", "15", "--no-color"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert "Tested: 7" in run.stdout, report
