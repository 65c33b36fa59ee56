"""Runs the Alembic migrations (``pixpipe-migrate``) on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from pixpipe.db.engine import normalise_database_url
from pixpipe.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    escaped = normalise_database_url(database_url).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", escaped)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply pixpipe's database migrations.")
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args()
    storage = Settings().storage
    if not storage.database_url:
        storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(storage.resolved_database_url, args.revision)
