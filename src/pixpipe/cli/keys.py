"""``pixpipe keys create|list|revoke``: the operator's commands, run where the database is.

They talk to the database of PIXPIPE_DATABASE_URL (or the data dir's SQLite), not to the
services: a key is made before anyone can call them with it. The token is printed once and
only its SHA-256 is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from pixpipe.db.api_keys import ApiKey, ApiKeyStore
from pixpipe.db.engine import create_engine
from pixpipe.db.migrate import upgrade
from pixpipe.settings import Settings


def add_keys_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="make, list and revoke API keys (operator; "
                                            "needs PIXPIPE_API_KEYS=true on the services)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key; its token is shown once")
    create.add_argument("name", help="whose key it is, e.g. the shop's name")
    create.add_argument("--max-concurrent-requests", type=_positive, default=None,
                        help="requests under way at once (default: no limit)")
    create.add_argument("--max-images-per-hour", type=_positive, default=None,
                        help="images uploaded per rolling hour (default: no limit)")
    create.add_argument("--json", action="store_true", help="print the new key as JSON")
    listing = actions.add_parser("list", help="every key, revoked ones included")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="stop a key working (within seconds)")
    revoke.add_argument("key_id")


def _positive(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError("must be a whole number above 0")
    return int(text)


def run_keys_command(args: argparse.Namespace, console: Console) -> int:
    """Exit code 0 on success, 1 when there was nothing to revoke, 2 when the database
    cannot be used."""
    try:
        return asyncio.run(_run(args, console))
    except SQLAlchemyError as error:
        console.print(f"pixpipe: the database cannot be used: {error.__class__.__name__}: "
                      f"{str(error.orig if hasattr(error, 'orig') else error).splitlines()[0]}",
                      style="red", highlight=False)
        return 2


async def _run(args: argparse.Namespace, console: Console) -> int:
    storage = Settings().storage
    if storage.database_url is None:
        storage.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file
    database_url = storage.resolved_database_url
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    try:
        store = ApiKeyStore(engine)
        if args.keys_command == "create":
            made = await store.create(args.name,
                                      max_concurrent_requests=args.max_concurrent_requests,
                                      max_images_per_hour=args.max_images_per_hour)
            if args.json:
                print(json.dumps({**_as_json(made.key), "token": made.token,
                                  "webhook_secret": made.key.webhook_secret}))
            else:
                print(f"API key {made.key.id} for {made.key.name}\n"
                      f"  token           {made.token}\n"
                      f"  webhook secret  {made.key.webhook_secret}\n"
                      "The token is shown only now: give it to the shop. Webhooks of its "
                      "requests are signed with that webhook secret.")
            return 0
        if args.keys_command == "list":
            keys = await store.list()
            if args.json:
                for key in keys:
                    print(json.dumps(_as_json(key)))
            else:
                console.print(_table(keys))
            return 0
        if await store.revoke(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        console.print(f"pixpipe: no active key {args.key_id}", style="red", highlight=False)
        return 1
    finally:
        await engine.dispose()


def _as_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "token_prefix": key.token_prefix,
            "max_concurrent_requests": key.max_concurrent_requests,
            "max_images_per_hour": key.max_images_per_hour,
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


def _table(keys: list[ApiKey]) -> Table:
    table = Table("id", "name", "token", "limits", "created", "state")
    for key in keys:
        limits = ", ".join(part for part in (
            f"{key.max_concurrent_requests} at once" if key.max_concurrent_requests else "",
            f"{key.max_images_per_hour} images/h" if key.max_images_per_hour else "") if part)
        table.add_row(key.id, key.name, f"{key.token_prefix}…", limits or "none",
                      key.created_at.strftime("%Y-%m-%d %H:%M"),
                      "revoked" if key.revoked else "active")
    return table
