"""The message stream of an Upload call: the metadata first, then the CSV in chunks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

from pixpipe.v1 import ingest_pb2

UPLOAD_CHUNK_BYTES = 256 * 1024


def upload_requests(metadata: ingest_pb2.UploadMetadata,
                    chunks: Iterable[bytes]) -> Iterator[ingest_pb2.UploadRequest]:
    yield ingest_pb2.UploadRequest(metadata=metadata)
    for chunk in chunks:
        yield ingest_pb2.UploadRequest(chunk=chunk)


async def upload_requests_from(metadata: ingest_pb2.UploadMetadata,
                               chunks: AsyncIterable[bytes],
                               ) -> AsyncIterator[ingest_pb2.UploadRequest]:
    """The same, from chunks that arrive asynchronously (a request body being received)."""
    yield ingest_pb2.UploadRequest(metadata=metadata)
    async for chunk in chunks:
        yield ingest_pb2.UploadRequest(chunk=chunk)


def byte_chunks(data: bytes, size: int = UPLOAD_CHUNK_BYTES) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def file_chunks(path: Path, size: int = UPLOAD_CHUNK_BYTES) -> Iterator[bytes]:
    """The file in chunks, read as the call sends them: memory stays flat at any size."""
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
