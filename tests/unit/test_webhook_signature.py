"""Standard Webhooks signing and verifying, checked against the reference implementation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks

from pixpipe.webhook_signature import WebhookVerificationError, sign, signed_headers, verify
from pixpipe_services.notifier.webhooks import parse_retry_after

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = json.dumps({"request_id": "r", "status": "completed"}).encode()


def test_our_signature_passes_the_reference_verifier() -> None:
    headers = signed_headers(SECRET, "msg_1", BODY)
    standardwebhooks.Webhook(SECRET).verify(BODY, headers)
    verify(headers, BODY, SECRET)


def test_the_reference_signature_passes_our_verifier() -> None:
    moment = datetime.now(UTC)
    reference = standardwebhooks.Webhook(SECRET).sign("msg_2", moment, BODY.decode())
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(int(moment.timestamp())),
               "Webhook-Signature": reference}
    verify(headers, BODY, SECRET)
    assert reference == sign(SECRET, "msg_2", int(moment.timestamp()), BODY)


@pytest.mark.parametrize("tamper", ["body", "id", "secret", "old", "headers"])
def test_tampering_is_refused(tamper: str) -> None:
    headers = signed_headers(SECRET, "msg_3", BODY)
    body, secret, now = BODY, SECRET, None
    if tamper == "body":
        body = BODY + b" "
    elif tamper == "id":
        headers["webhook-id"] = "msg_4"
    elif tamper == "secret":
        secret = "whsec_" + "A" * 32
    elif tamper == "old":
        now = int(headers["webhook-timestamp"]) + 3600
    else:
        del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, secret, now=now)


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, now=now) == pytest.approx(90.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("99999999") == 24 * 3600.0
