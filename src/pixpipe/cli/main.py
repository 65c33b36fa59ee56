"""``pixpipe``: submit CSVs, watch them run, read their status and output from a terminal.

Exit codes: 0 the request completed with every image; 1 it failed or some images failed;
2 a usage or connection error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from rich.console import Console

from pixpipe.cli.progress import failures_table, follow
from pixpipe.client.connection import PixpipeClient, ServerAddresses
from pixpipe.grpc_errors import bad_request_details, violation_to_fault
from pixpipe.status_messages import FORMATS_TO_PROTO, request_to_json
from pixpipe.v1 import options_pb2, status_pb2

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("PIXPIPE_INGEST_ADDRESS",
                                                           "127.0.0.1:50051"),
                        help="ingest service host:port (env PIXPIPE_INGEST_ADDRESS)")
    parser.add_argument("--status-server", default=os.environ.get("PIXPIPE_STATUS_ADDRESS"),
                        help="status service host:port (env PIXPIPE_STATUS_ADDRESS; default: "
                             "the --server host, port 50052)")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="upload a CSV of products and image URLs")
    submit.add_argument("file", type=Path)
    submit.add_argument("--webhook", default="", help="URL to POST the result to")
    submit.add_argument("--quality", type=int, help="1-95 (default 50)")
    submit.add_argument("--max-width", type=int)
    submit.add_argument("--max-height", type=int)
    submit.add_argument("--format", choices=sorted(FORMATS_TO_PROTO))
    submit.add_argument("--watch", action="store_true", help="follow it until it finishes")

    status = commands.add_parser("status", help="show a request's status")
    status.add_argument("request_id")
    status.add_argument("--json", action="store_true", help="the status JSON of the REST API")

    watch = commands.add_parser("watch", help="follow a request with a progress bar")
    watch.add_argument("request_id")

    output = commands.add_parser("output", help="download a finished request's output CSV")
    output.add_argument("request_id")
    output.add_argument("-o", "--output", default="-", help="file to write ('-': stdout)")
    output.add_argument("--base-url", default="", help="base of the image URLs (default: "
                                                       "the server's PIXPIPE_PUBLIC_BASE_URL)")
    return parser


def addresses(args: argparse.Namespace) -> ServerAddresses:
    status = args.status_server or f"{args.server.rsplit(':', 1)[0]}:50052"
    return ServerAddresses(ingest=args.server, status=status)


def exit_code_for(status: status_pb2.RequestStatus) -> int:
    if status.status == status_pb2.REQUEST_STATE_COMPLETED and status.failed == 0:
        return EXIT_COMPLETED
    return EXIT_FAILED


async def submit(client: PixpipeClient, args: argparse.Namespace, console: Console) -> int:
    if not args.file.is_file():
        raise UsageError(f"no such file: {args.file}")
    options = options_pb2.ProcessingOptions()
    for name in ("quality", "max_width", "max_height"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    if args.format:
        options.format = FORMATS_TO_PROTO[args.format]
    answer = await client.upload(args.file, webhook_url=args.webhook, options=options)
    console.print(f"request [bold]{answer.request_id}[/]: {answer.image_count} images queued")
    if not args.watch:
        print(answer.request_id)
        return EXIT_COMPLETED
    return await watch(client, answer.request_id, console)


async def watch(client: PixpipeClient, request_id: str, console: Console) -> int:
    final = await follow(client.watch(request_id), console)
    word = "completed" if final.status == status_pb2.REQUEST_STATE_COMPLETED else "failed"
    console.print(f"request {request_id} {word}: {final.completed} of {final.total} images "
                  f"compressed, {final.failed} failed")
    table = failures_table(final)
    if table is not None:
        console.print(table)
    return exit_code_for(final)


async def show_status(client: PixpipeClient, args: argparse.Namespace, console: Console) -> int:
    status = await client.get_status(args.request_id)
    if args.json:
        print(json.dumps(request_to_json(status), indent=2))
    else:
        state = status_pb2.RequestState.Name(status.status).removeprefix("REQUEST_STATE_")
        console.print(f"request {status.request_id}: [bold]{state.lower()}[/] — "
                      f"{status.completed} completed, {status.failed} failed, "
                      f"{status.total} in all")
        table = failures_table(status)
        if table is not None:
            console.print(table)
    if status.status in (status_pb2.REQUEST_STATE_PENDING, status_pb2.REQUEST_STATE_PROCESSING):
        return EXIT_COMPLETED
    return exit_code_for(status)


async def write_output(client: PixpipeClient, args: argparse.Namespace) -> int:
    chunks = [chunk async for chunk in client.export_csv(args.request_id,
                                                         base_url=args.base_url)]
    if args.output == "-":
        sys.stdout.buffer.write(b"".join(chunks))
        sys.stdout.flush()
    else:
        await asyncio.to_thread(Path(args.output).write_bytes, b"".join(chunks))
    return EXIT_COMPLETED


def describe_rpc_error(error: grpc.aio.AioRpcError, args: argparse.Namespace) -> str:
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach pixpipe at {args.server} ({code.name.lower()})"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"no such request: {getattr(args, 'request_id', '')}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        faults = [violation_to_fault(v).describe() for v in bad_request_details(error)]
        return "; ".join(faults) if faults else (error.details() or "invalid argument")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "the server wants an API token: set PIXPIPE_API_TOKEN"
    return f"{code.name.lower()}: {error.details()}"


async def run(args: argparse.Namespace, console: Console) -> int:
    async with PixpipeClient(addresses(args),
                             api_token=os.environ.get("PIXPIPE_API_TOKEN")) as client:
        commands: dict[str, Callable[[], Awaitable[int]]] = {
            "submit": lambda: submit(client, args, console),
            "watch": lambda: watch(client, args.request_id, console),
            "status": lambda: show_status(client, args, console),
            "output": lambda: write_output(client, args),
        }
        return await commands[args.command]()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return asyncio.run(run(args, console))
    except grpc.aio.AioRpcError as error:
        console.print(f"pixpipe: {describe_rpc_error(error, args)}", style="red",
                      highlight=False)
    except (UsageError, ConnectionError, OSError) as error:
        console.print(f"pixpipe: {error}", style="red", highlight=False)
    except KeyboardInterrupt:
        console.print("pixpipe: interrupted", style="red")
    return EXIT_USAGE


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
