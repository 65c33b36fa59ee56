"""The Python client library: a gRPC client for users and the webhook verifier for receivers."""

from pixpipe.client.connection import PixpipeClient, ServerAddresses
from pixpipe.domain import ImageState
from pixpipe.webhook_signature import WebhookVerificationError, verify

__all__ = ["ImageState", "PixpipeClient", "ServerAddresses", "WebhookVerificationError",
           "verify"]
