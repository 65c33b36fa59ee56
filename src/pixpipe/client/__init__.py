"""The Python client library: gRPC helpers for users and the webhook verifier for receivers."""

from pixpipe.webhook_signature import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
