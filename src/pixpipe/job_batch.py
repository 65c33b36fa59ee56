"""The jobs of one request, one per image, held as ids and URLs and encoded in bulk.

A request of 100,000 images would otherwise cost 100,000 ImageJob models and their JSON
dumps; a JobBatch writes the same JSON with one template and builds an ImageJob only when
one is asked for.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from pixpipe.domain import ImageJob, RequestOptions

# A string that JSON needs no escapes for (pydantic writes other characters unescaped).
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f]*')
# Bytes 6 and 8 of a UUID4: version 4, and variant 10 (RFC 9562).
_UUID_VERSION = bytes((byte & 0x0F) | 0x40 for byte in range(256))
_UUID_VARIANT = bytes((byte & 0x3F) | 0x80 for byte in range(256))


def uuid4_hexes(count: int) -> list[str]:
    """``count`` random UUID4s as 32 hex digits, as ``uuid.uuid4().hex`` would write them,
    from one read of the system's random source."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    digits = raw.hex()
    return [digits[start:start + 32] for start in range(0, 32 * count, 32)]


def _json_string(text: str) -> str:
    return f'"{text}"' if _JSON_PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class JobBatch(Sequence[ImageJob]):
    """Every job of request ``request_id``: image ``image_ids[i]`` is fetched from ``urls[i]``."""

    request_id: str
    options: RequestOptions
    image_ids: Sequence[str]
    urls: Sequence[str]
    tenant: str = ""
    # A small request's jobs take the express lane (see pixpipe.bus).
    express: bool = False

    def __len__(self) -> int:
        return len(self.image_ids)

    @overload
    def __getitem__(self, index: int) -> ImageJob: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ImageJob]: ...

    def __getitem__(self, index: int | slice) -> ImageJob | Sequence[ImageJob]:
        if isinstance(index, slice):
            return JobBatch(self.request_id, self.options, self.image_ids[index],
                            self.urls[index], self.tenant, self.express)
        return ImageJob(request_id=self.request_id, image_id=self.image_ids[index],
                        url=self.urls[index], options=self.options, tenant=self.tenant)

    def messages(self) -> Iterator[tuple[str, bytes]]:
        """(Nats-Msg-Id, payload) of each job: the bytes ``ImageJob.model_dump_json`` writes."""
        request_id = self.request_id
        head = f'{{"request_id":{_json_string(request_id)},"image_id":"'
        tail = (f',"options":{self.options.model_dump_json()},'
                f'"tenant":{_json_string(self.tenant)}}}')
        for image_id, url in zip(self.image_ids, self.urls, strict=True):
            yield (f"{request_id}.{image_id}",
                   f'{head}{image_id}","url":{_json_string(url)}{tail}'.encode())
