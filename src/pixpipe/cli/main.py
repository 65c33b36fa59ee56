"""``pixpipe``: submit CSVs, watch them run, read their status and output from a terminal.

Exit codes: 0 the request completed with every image; 1 it failed or some images failed;
2 a usage or connection error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import grpc
from pydantic import ValidationError
from rich.console import Console

import pixpipe
from pixpipe.cli.keys import add_keys_commands, run_keys_command
from pixpipe.cli.progress import follow
from pixpipe.cli.render import (
    IMAGE_ROW_HEADER,
    failures_table,
    image_json_line,
    image_row,
    summary_lines,
)
from pixpipe.client.connection import PixpipeClient, ServerAddresses
from pixpipe.domain import ImageState, RequestOptions
from pixpipe.grpc_errors import bad_request_details, violation_to_fault
from pixpipe.paging import MAX_PAGE_SIZE
from pixpipe.status_messages import (
    EFFORTS_TO_PROTO,
    FORMATS_TO_PROTO,
    options_to_proto,
    request_to_json,
)
from pixpipe.v1 import status_pb2

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Failed images shown after a watch and in the default status view; the rest on request.
FAILURES_SHOWN = 20


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {pixpipe.__version__}")
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
    submit.add_argument("--quality", type=_quality, help="1-95 (default 50) or auto")
    submit.add_argument("--target-score", type=float,
                        help="with --quality auto: SSIMULACRA2 score to reach (default 70)")
    submit.add_argument("--measure-quality", action="store_true",
                        help="with a fixed quality: report each output's score too")
    submit.add_argument("--max-width", type=int)
    submit.add_argument("--max-height", type=int)
    submit.add_argument("--format", choices=sorted(FORMATS_TO_PROTO))
    submit.add_argument("--effort", choices=list(EFFORTS_TO_PROTO),
                        help="fast, balanced (default) or max: see docs/codec.md")
    submit.add_argument("--watch", action="store_true", help="follow it until it finishes")

    status = commands.add_parser(
        "status", help="show a request's status",
        description="The summary and the first failed images; with an image option, a page "
                    "of images (tab-separated on stdout) and the token of the next one.")
    status.add_argument("request_id")
    status.add_argument("--json", action="store_true",
                        help="the status JSON of the REST API (one page of images, with "
                             "next_page_token); with --all, one image JSON per line")
    status.add_argument("--images", action="store_true", help="list images in every state")
    states = status.add_mutually_exclusive_group()
    states.add_argument("--failed", dest="state", action="store_const",
                        const=ImageState.FAILED.value, help="list only the failed images")
    states.add_argument("--state", choices=[state.value for state in ImageState],
                        help="list only the images in this state")
    status.add_argument("--limit", type=page_size, metavar="N",
                        help=f"images per page, 1-{MAX_PAGE_SIZE} (default {MAX_PAGE_SIZE})")
    pages = status.add_mutually_exclusive_group()
    pages.add_argument("--page-token", default="", metavar="TOKEN",
                       help="the page after a previous one (its 'next page' token)")
    pages.add_argument("--all", action="store_true",
                       help="every page, streamed (each image once)")

    watch = commands.add_parser("watch", help="follow a request with a progress bar")
    watch.add_argument("request_id")

    output = commands.add_parser("output", help="download a finished request's output CSV")
    output.add_argument("request_id")
    output.add_argument("-o", "--output", default="-", help="file to write ('-': stdout)")
    output.add_argument("--base-url", default="", help="base of the image URLs (default: "
                                                       "the server's PIXPIPE_PUBLIC_BASE_URL)")
    add_keys_commands(commands)
    return parser


def _quality(text: str) -> int | str:
    if text == "auto":
        return text
    if not (text.isdigit() and 1 <= int(text) <= 95):
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 95, or auto")
    return int(text)


def page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return size


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
    try:
        requested = RequestOptions(
            quality=args.quality, max_width=args.max_width, max_height=args.max_height,
            format=args.format, effort=args.effort, target_score=args.target_score,
            measure_quality=args.measure_quality or None)
    except ValidationError as error:
        raise UsageError("; ".join(f"--{'-'.join(map(str, item['loc']))}: {item['msg']}"
                                   for item in error.errors())) from None
    answer = await client.upload(args.file, webhook_url=args.webhook,
                                 options=options_to_proto(requested))
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
    if final.failed:
        failed = await first_failures(client, request_id)
        print_failures(console, request_id, failed, final.failed)
    return exit_code_for(final)


async def first_failures(client: PixpipeClient, request_id: str,
                         ) -> list[status_pb2.ImageStatus]:
    failed: list[status_pb2.ImageStatus] = []
    async with contextlib.aclosing(client.list_images(
            request_id, status=ImageState.FAILED, page_size=FAILURES_SHOWN)) as images:
        async for image in images:
            failed.append(image)
            if len(failed) == FAILURES_SHOWN:
                break
    return failed


def print_failures(console: Console, request_id: str,
                   failed: list[status_pb2.ImageStatus], total_failed: int) -> None:
    table = failures_table(failed, total_failed)
    if table is not None:
        console.print(table)
    if total_failed > len(failed):
        console.print(f"… and {total_failed - len(failed)} more: "
                      f"pixpipe status {request_id} --failed --all", highlight=False)


def lists_images(args: argparse.Namespace) -> bool:
    return bool(args.images or args.state or args.limit or args.page_token or args.all)


async def show_status(client: PixpipeClient, args: argparse.Namespace, console: Console) -> int:
    if not (args.json or lists_images(args)):
        status = await client.get_status(args.request_id, status=ImageState.FAILED,
                                         page_size=FAILURES_SHOWN)
        print_summary(console, status)
        print_failures(console, status.request_id, list(status.images), status.failed)
        if status.total:
            console.print("images: --images for a page, --all for every one, --failed for "
                          "the failed ones", style="dim", highlight=False)
        return status_exit_code(status)
    status = await client.get_status(args.request_id, page_size=args.limit or 0,
                                     page_token=args.page_token, status=args.state)
    if args.json and not args.all:
        print(json.dumps(request_to_json(status), indent=2))
        return status_exit_code(status)
    print_summary(console, status)
    line = image_json_line if args.json else image_row
    if not args.json:
        print(IMAGE_ROW_HEADER)
    listed = write_lines(line(image) for image in status.images)
    if args.all and status.next_page_token:
        listed += await write_pages(line, client.list_images(
            args.request_id, status=args.state, page_size=args.limit or MAX_PAGE_SIZE,
            page_token=status.next_page_token))
    which = f"{args.state} " if args.state else ""
    console.print(f"{listed} {which}image(s) listed", highlight=False)
    if status.next_page_token and not args.all:
        console.print(f"next page: --page-token {status.next_page_token}", highlight=False,
                      soft_wrap=True)
    return status_exit_code(status)


def print_summary(console: Console, status: status_pb2.RequestStatus) -> None:
    for text in summary_lines(status):
        console.print(text, highlight=False, soft_wrap=True)


def status_exit_code(status: status_pb2.RequestStatus) -> int:
    if status.status in (status_pb2.REQUEST_STATE_PENDING, status_pb2.REQUEST_STATE_PROCESSING):
        return EXIT_COMPLETED
    return exit_code_for(status)


def write_lines(lines: Iterable[str]) -> int:
    written = 0
    for text in lines:
        sys.stdout.write(text + "\n")
        written += 1
    sys.stdout.flush()
    return written


async def write_pages(line: Callable[[status_pb2.ImageStatus], str],
                      images: AsyncIterator[status_pb2.ImageStatus]) -> int:
    """Each image as it arrives, flushed a page at a time; nothing kept."""
    written = 0
    async for image in images:
        sys.stdout.write(line(image) + "\n")
        written += 1
        if written % MAX_PAGE_SIZE == 0:
            sys.stdout.flush()
    sys.stdout.flush()
    return written


async def write_output(client: PixpipeClient, args: argparse.Namespace) -> int:
    chunks = client.export_csv(args.request_id, base_url=args.base_url)
    if args.output == "-":
        await write_chunks(chunks, sys.stdout.buffer)
        return EXIT_COMPLETED
    # Opened at the first chunk: a request that is not finished leaves the file untouched.
    path = Path(args.output)
    first = await anext(chunks, None)
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        with handle:
            if first is not None:
                await asyncio.to_thread(handle.write, first)
            await write_chunks(chunks, handle)
    except BaseException:
        remove_partial(path)
        raise
    return EXIT_COMPLETED


def remove_partial(path: Path) -> None:
    """A CSV cut short by a broken stream would pass for a whole one; leave none."""
    if path.is_file():
        path.unlink()


async def write_chunks(chunks: AsyncIterator[bytes], sink: BinaryIO) -> None:
    """Each chunk as it arrives (about 256 KB): memory stays flat at any request size."""
    async for chunk in chunks:
        await asyncio.to_thread(sink.write, chunk)
    sink.flush()


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
        if args.command == "keys":
            return run_keys_command(args, console)
        return asyncio.run(run(args, console))
    except BrokenPipeError:
        # The reader went away (``pixpipe status … --all | head``): nothing to tell it, and
        # the interpreter's last flush of stdout must not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
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
