"""SQLAlchemy models: API keys, requests with their products and images, webhooks, reuse."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    pass


Base.metadata.naming_convention = NAMING_CONVENTION


class ApiKeyRecord(Base):
    """A shop's key: only the SHA-256 of its token is kept; the token is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    # The token's first characters, so a listing tells keys apart without revealing them.
    token_prefix: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    webhook_secret: Mapped[str] = mapped_column(Text)
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_images_per_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RequestRecord(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    file_name: Mapped[str] = mapped_column(String(255), default="")
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    header: Mapped[list[str]] = mapped_column(JSON, default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every committed change; events carry it so watchers can order and resume.
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set once JetStream confirmed the completion event; a sweeper publishes any left unset.
    completion_published_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True)

    # The key that uploaded it; None in single-token or open mode.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)

    products: Mapped[list[ProductRecord]] = relationship(back_populates="request")

    __table_args__ = (Index("ix_requests_status_created_at", "status", "created_at"),
                      Index("ix_requests_api_key_id_created_at", "api_key_id", "created_at"))


class ProductRecord(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    serial_number: Mapped[int] = mapped_column(BigInteger)
    product_name: Mapped[str] = mapped_column(Text)
    line: Mapped[int] = mapped_column(Integer)
    # Every cell of the uploaded row, in header order, for the output CSV.
    cells: Mapped[list[str]] = mapped_column(JSON, default=list)

    request: Mapped[RequestRecord] = relationship(back_populates="products")

    __table_args__ = (UniqueConstraint("request_id", "serial_number"),)


class ImageRecord(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    serial_number: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)
    input_url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Which worker process last took the image (host:pid), for operators and tests.
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    output_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_in: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_out: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The receipt of a completed image: what encoded it (encoder NULL: the source was kept).
    quality_used: Mapped[int | None] = mapped_column(Integer, nullable=True)
    encoder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    effort: Mapped[str | None] = mapped_column(String(16), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("request_id", "serial_number", "position"),
        Index("ix_images_request_id_status_serial_number_position",
              "request_id", "status", "serial_number", "position"),
        Index("ix_images_product_id_position", "product_id", "position"),
    )


class WebhookDelivery(Base):
    """One webhook event of a request (its completion), delivered by whichever notifier
    holds the lease; written in the same transaction that finished the request."""

    __tablename__ = "webhook_deliveries"

    # Also the Standard Webhooks ``webhook-id``: stable across retries so receivers de-dupe.
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    # The body, fixed at the first attempt so every retry sends the same bytes.
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)

    __table_args__ = (
        UniqueConstraint("request_id", "event_type"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """Every POST made for a delivery: when, how long, and what came back."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notifier: Mapped[str] = mapped_column(String(128))


class ContentOutput(Base):
    """An encoded output reusable by any image whose source bytes and options hash to
    ``content_key`` (services/worker/reuse.py). It names one stored object, owned by the
    request whose image it is: when retention deletes that request the row goes with it."""

    __tablename__ = "content_outputs"

    content_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"),
                                            index=True)
    output_path: Mapped[str] = mapped_column(Text)
    bytes_in: Mapped[int] = mapped_column(BigInteger)
    bytes_out: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    quality_used: Mapped[int | None] = mapped_column(Integer, nullable=True)
    encoder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    effort: Mapped[str | None] = mapped_column(String(16), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SourceValidator(Base):
    """What a source URL last answered (its ETag and Last-Modified) and the content it had,
    so a repeat is fetched conditionally; keyed by a hash of the URL and the options."""

    __tablename__ = "source_validators"

    lookup_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_key: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_modified: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"),
                                            index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ContentClaim(Base):
    """A worker encoding ``content_key`` now: others wait for its output rather than encode
    the same source too. Refreshed while the encode runs and deleted when it ends; a claim
    left unrefreshed for long is taken over (its worker died)."""

    __tablename__ = "content_claims"

    content_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
