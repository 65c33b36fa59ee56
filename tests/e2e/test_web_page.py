"""The web page at / driven in real headless Chromium: upload, live view, download, history."""

from __future__ import annotations

import csv
import io
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - CI installs it; see .ci/run
    pytest.skip("the playwright package is not installed (pip install playwright)",
                allow_module_level=True)

from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import database_for_tests, start_own_nats
from tests.support.seaweedfs import SeaweedS3
from tests.support.stack import RunningStack, products_csv, running_stack, stack_settings
from tests.support.webhook_receiver import WebhookReceiver

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():  # pragma: no cover - CI installs it; see .ci/run
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).with_name("artifacts")
API_TOKEN = "page-s3cret"
REQUEST_URL = re.compile(r"#/requests/[0-9a-f-]{36}$")
FINISH_TIMEOUT_MS = 120_000
# Every completed row's "after" thumbnail has really been decoded by the browser.
# Thumbnails load lazily, so scroll to the next one not loaded yet, as a person would.
AFTER_THUMBNAILS_LOADED = """count => {
  const images = [...document.querySelectorAll('tr[data-status="completed"] td.after img')];
  const waiting = images.find(img => !(img.complete && img.naturalWidth > 0));
  if (waiting) waiting.scrollIntoView({block: "center"});
  return images.length === count && !waiting;
}"""
# Every thumbnail has settled: loaded, or replaced by a "No preview" placeholder.
ALL_THUMBNAILS_SETTLED = """() =>
  [...document.querySelectorAll('#image-rows img')].every(img => img.complete)"""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1360, "height": 900},
                                        accept_downloads=True)
    opened = await context.new_page()
    script_errors: list[str] = []
    opened.on("pageerror", lambda error: script_errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert not script_errors, f"the page threw: {script_errors}"


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n!.gitignore\n")
    return ARTIFACTS / name


async def upload_through_the_page(page: Page, base_url: str, csv_path: Path, *,
                                  webhook_url: str = "") -> str:
    await page.goto(f"{base_url}/")
    await expect(page.get_by_role("heading", name="New request")).to_be_visible()
    await page.set_input_files("#file", csv_path)
    await expect(page.locator("#file-chosen")).to_contain_text(csv_path.name)
    await page.get_by_label("Webhook URL").fill(webhook_url)
    await page.get_by_label("Quality").fill("60")
    await page.get_by_role("button", name="Upload and compress").click()
    await expect(page).to_have_url(REQUEST_URL)
    return page.url.rsplit("/", 1)[-1]


async def expect_finished_view(page: Page) -> None:
    """The live view of the corpus request once it is done: counters, rows, thumbnails."""
    await expect(page.locator("#live-status")).to_have_text("Completed",
                                                            timeout=FINISH_TIMEOUT_MS)
    await expect(page.locator("#count-total")).to_have_text("14")
    await expect(page.locator("#count-completed")).to_have_text("12")
    await expect(page.locator("#count-failed")).to_have_text("2")
    await expect(page.locator("#count-in-progress")).to_have_text("0")
    await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("tr.image-row")).to_have_count(14)
    await expect(page.locator('tr.image-row[data-status="completed"]')).to_have_count(12)
    await page.wait_for_function(AFTER_THUMBNAILS_LOADED, arg=12)

    failed = page.locator('tr.image-row[data-status="failed"]')
    await expect(failed).to_have_count(2)
    await expect(failed.filter(has_text="broken.png")).to_contain_text("corrupt PNG data")
    await expect(failed.filter(has_text="missing.jpg")).to_contain_text("HTTP 404 from source")
    # A completed row says how much it saved, in bytes and per cent.
    first = page.locator('tr.image-row[data-status="completed"]').first
    await expect(first.locator("td.saving")).to_have_text(
        re.compile(r"(smaller|larger|kept original)$"))
    await expect(first).to_contain_text("→")
    # Each encoded output says what made it (a source kept as it was has no receipt).
    await expect(page.locator("tr.image-row .receipt").first).to_have_text(
        re.compile(r"^q\d+ · (libjpeg-turbo|mozjpeg|libwebp|libavif)"))


async def test_upload_follow_live_and_download(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path, page: Page) -> None:
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(corpus_dir, corpus_server.port))

    with WebhookReceiver() as receiver:
        request_id = await upload_through_the_page(page, stack.gateway_url, csv_path,
                                                   webhook_url=receiver.url())
        await expect(page.locator("#live-id")).to_have_text(request_id)
        await expect(page.locator("#live-options")).to_contain_text("quality 60")
        await expect_finished_view(page)
        await expect(page.locator("#webhook-url")).to_have_text(receiver.url())
        # The page looks again after the request ends, until the delivery is recorded.
        await expect(page.locator("#webhook-state")).to_contain_text(
            "delivered (1 attempt, last answer HTTP 200)", timeout=30_000)

    download_button = page.get_by_role("button", name="Download output CSV")
    await expect(download_button).to_be_enabled()
    async with page.expect_download() as download_info:
        await download_button.click()
    download = await download_info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.reader(io.StringIO((await download.path()).read_text(encoding="utf-8"))))
    assert rows[0][-4:] == ["Output Image Urls", "Output Quality", "Output Encoder",
                            "Output Scores"]
    assert len(rows) == 1 + 7

    recent = page.locator(f'#recent-list a[data-request-id="{request_id}"]')
    await expect(recent).to_be_visible()
    await expect(recent).to_contain_text("products.csv")
    await expect(recent).to_contain_text("Completed")
    await expect(recent).to_have_attribute("aria-current", "true")

    await page.wait_for_function(ALL_THUMBNAILS_SETTLED)
    await page.screenshot(path=artifact("web-page.png"), full_page=True)
    await page.set_viewport_size({"width": 420, "height": 900})
    await page.screenshot(path=artifact("web-page-narrow.png"), full_page=True)
    await page.set_viewport_size({"width": 1360, "height": 900})

    # The filter shows only the failed rows, then everything again.
    await page.get_by_role("button", name="Failed", exact=True).click()
    await expect(page.locator("tr.image-row:visible")).to_have_count(2)
    await page.get_by_role("button", name="All", exact=True).click()
    await expect(page.locator("tr.image-row:visible")).to_have_count(14)

    # From a fresh page, the recent list leads back to the finished request's live view.
    await page.goto(f"{stack.gateway_url}/")
    await expect(page.get_by_role("heading", name="Compress a catalogue of product images")
                 ).to_be_visible()
    await page.locator(f'#recent-list a[data-request-id="{request_id}"]').click()
    await expect(page).to_have_url(re.compile(f"#/requests/{request_id}$"))
    await expect_finished_view(page)


async def test_a_refused_csv_shows_each_fault_by_line_and_column(
        stack: RunningStack, tmp_path: Path, page: Page) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("S. No.,Product Name,Input Image Urls\n"
                   "1,Mug,http://img.example/a.jpg\n"
                   "abc,,ftp://img.example/b.jpg\n"
                   "1,Poster,http://img.example/c.jpg\n")
    await page.goto(f"{stack.gateway_url}/")

    # Slips the page catches itself, before anything is sent.
    await page.get_by_label("Quality").fill("120")
    await page.get_by_role("button", name="Upload and compress").click()
    errors = page.locator("#upload-errors")
    await expect(errors).to_contain_text("Choose a CSV file to upload.")
    await expect(errors).to_contain_text("Quality must be a whole number from 1 to 95.")
    await expect(page.get_by_label("Quality")).to_have_attribute("aria-invalid", "true")

    # quality=auto opens the target score, checked as the gateway would.
    await expect(page.get_by_label("Target score")).to_be_disabled()
    await page.get_by_label("Quality").fill("auto")
    await page.get_by_label("Target score").fill("120")
    await page.get_by_role("button", name="Upload and compress").click()
    await expect(errors).to_contain_text("Target score must be a number from 0 to 100.")
    await expect(errors).not_to_contain_text("Quality must be")

    await page.get_by_label("Quality").fill("")
    await expect(page.get_by_label("Target score")).to_be_disabled()
    await page.set_input_files("#file", bad)
    await page.get_by_role("button", name="Upload and compress").click()
    await expect(errors).to_contain_text("The CSV was refused")
    faults = errors.get_by_role("listitem")
    await expect(faults).to_have_count(4)
    await expect(faults.first).to_have_text(
        "Line 3, column 1 (S. No.): serial number 'abc' is not a whole number")
    located: dict[tuple[str | None, ...], str] = {}
    for fault in await faults.all():
        place = [await fault.get_attribute(name) for name in
                 ("data-line", "data-column", "data-field")]
        located[tuple(place)] = await fault.locator(".fault-reason").inner_text()
    assert "not a whole number" in located["3", "1", "S. No."]
    assert located["3", "2", "Product Name"] == "product name is empty"
    assert "URL 1" in located["3", "3", "Input Image Urls"]
    assert "already used on line 2" in located["4", "1", "S. No."]
    await expect(page).not_to_have_url(REQUEST_URL)
    await page.screenshot(path=artifact("web-page-refused-csv.png"), full_page=True)


async def test_the_live_view_moves_while_the_request_runs(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path, page: Page) -> None:
    """One image is held at its source, so the page must show the request half done."""
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    gate = threading.Event()

    def held() -> list[bytes]:
        gate.wait(60)
        return [photo]

    held_url = corpus_server.stream(f"/held-{uuid.uuid4()}.jpg", held)
    csv_path = tmp_path / "live.csv"
    csv_path.write_text("S. No.,Product Name,Input Image Urls\n"
                        f"1,Fast,{corpus_server.url('photos/logo.png')}\n"
                        f"2,Held,{held_url}\n")
    try:
        await upload_through_the_page(page, stack.gateway_url, csv_path)
        await expect(page.locator("#count-completed")).to_have_text("1")
        await expect(page.locator("#count-in-progress")).to_have_text("1")
        await expect(page.locator("#live-status")).to_have_text("Processing")
        await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "50")
        await expect(page.get_by_role("button", name="Download output CSV")).to_be_disabled()
        await expect(page.locator('tr.image-row[data-status="completed"]')).to_have_count(1)
        await expect(page.locator("#recent-list a[aria-current=true]")).to_contain_text("1/2 done")
        await page.screenshot(path=artifact("web-page-live.png"), full_page=True)
        gate.set()
        await expect(page.locator("#live-status")).to_have_text("Completed",
                                                                timeout=FINISH_TIMEOUT_MS)
        await expect(page.locator("#count-completed")).to_have_text("2")
        await expect(page.get_by_role("button", name="Download output CSV")).to_be_enabled()
        await page.wait_for_function(AFTER_THUMBNAILS_LOADED, arg=2)
    finally:
        gate.set()


async def test_an_unknown_request_says_so(stack: RunningStack, page: Page) -> None:
    await page.goto(f"{stack.gateway_url}/#/requests/00000000-0000-4000-8000-000000000000")
    await expect(page.locator("#live-error")).to_contain_text("There is no request with this id.")


@pytest.fixture
def guarded_stack(tmp_path: Path, database_url: str) -> Iterator[RunningStack]:
    """A stack of its own whose REST routes need a bearer token.

    It gets its own nats-server: on a shared one its jobs would also reach the module's other
    stack's workers, which store results in that stack's data directory.
    """
    nats_server = start_own_nats(tmp_path / "nats")
    try:
        environment = stack_settings(tmp_path / "stack", database_url=database_url,
                                     nats_url=nats_server.url, PIXPIPE_API_TOKEN=API_TOKEN)
        with running_stack(tmp_path / "stack", environment, workers=1) as running:
            yield running
    finally:
        nats_server.stop()


async def test_with_an_api_token_the_page_polls_and_sends_it(
        guarded_stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path, page: Page) -> None:
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(corpus_dir, corpus_server.port))
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await page.goto(f"{guarded_stack.gateway_url}/")
    await expect(page.locator("#recent-empty")).to_contain_text("needs an API token")
    await page.get_by_text("API token", exact=True).click()
    await page.get_by_label("Bearer token").fill(API_TOKEN)
    await page.get_by_label("Bearer token").press("Tab")
    await expect(page.locator("#settings summary")).to_have_text("API token · set")

    # Reloading keeps the token; the live view then polls, as EventSource sends no header.
    request_id = await upload_through_the_page(page, guarded_stack.gateway_url, csv_path)
    await expect_finished_view(page)
    await expect(page.locator(f'#recent-list a[data-request-id="{request_id}"]')).to_be_visible()
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download output CSV").click()
    download = await download_info.value
    header = (await download.path()).read_text(encoding="utf-8").splitlines()[0]
    assert header.endswith("Output Image Urls,Output Quality,Output Encoder,Output Scores")
    assert any(urlsplit(url).path == f"/status/{request_id}" for url in asked)
    assert not any(url.endswith("/events") for url in asked), "EventSource cannot carry a token"



@pytest.fixture
def s3_stack(tmp_path: Path, database_url: str, s3_server: SeaweedS3) -> Iterator[RunningStack]:
    """A stack of its own (own nats-server, as above) keeping its outputs in SeaweedFS."""
    nats_server = start_own_nats(tmp_path / "nats")
    try:
        environment = stack_settings(tmp_path / "stack", database_url=database_url,
                                     nats_url=nats_server.url,
                                     **s3_server.environment(prefix=f"page-{uuid.uuid4().hex}"))
        with running_stack(tmp_path / "stack", environment, workers=1) as running:
            yield running
    finally:
        nats_server.stop()


async def test_the_page_shows_outputs_kept_in_object_storage(
        s3_stack: RunningStack, s3_server: SeaweedS3, corpus_server: CorpusHttpServer,
        corpus_dir: Path, tmp_path: Path, page: Page) -> None:
    """Thumbnails and downloads reach the bucket through the gateway's redirect."""
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(corpus_dir, corpus_server.port))
    from_bucket: list[str] = []
    page.on("response", lambda response: from_bucket.append(response.url)
            if response.url.startswith(s3_server.endpoint_url) and response.ok else None)

    await upload_through_the_page(page, s3_stack.gateway_url, csv_path)
    await expect_finished_view(page)  # every "after" thumbnail decoded by the browser
    sources = await page.locator('tr[data-status="completed"] td.after img').evaluate_all(
        "images => images.map(img => img.src)")
    assert sources and all(src.startswith(f"{s3_stack.gateway_url}/processed_images/")
                           for src in sources)
    assert len(from_bucket) >= len(sources), "thumbnails did not come from the bucket"
    assert not s3_stack.settings.storage.images_dir.exists()


CATALOGUE_IMAGES = 20_000
PAGE_SIZE = 100
# One image in this many is a real photo; the rest point at a path the origin answers 404.
REAL_PHOTO_EVERY = 2000
FIRST_PAGE_BUDGET_SECONDS = 3.0
# Rendered by the animation-frame poll, so the clock stops when the rows are on screen.
FIRST_PAGE_SHOWN = """([rows, total]) =>
  document.querySelectorAll('tr.image-row').length === rows &&
  document.getElementById('count-total').textContent.replace(/\\D/g, '') === String(total)"""
FAILED_AT_LEAST = """least =>
  Number(document.getElementById('count-failed').textContent.replace(/\\D/g, '')) >= least"""


def catalogue_csv(origin: CorpusHttpServer) -> bytes:
    """One image per product: mostly 404s (fast failures), a real photo now and then."""
    lines = ["S. No.,Product Name,Input Image Urls"]
    for serial in range(1, CATALOGUE_IMAGES + 1):
        url = (origin.url(f"photos/logo.png?catalogue={serial}")
               if serial % REAL_PHOTO_EVERY == 1 else origin.url(f"gone/{serial}.jpg"))
        lines.append(f"{serial},Product {serial},{url}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def catalogue_stack(tmp_path: Path) -> Iterator[RunningStack]:
    """A stack with its own database and nats-server for one 20,000-image request.

    Its worker is still busy with that request when the test ends: stopping the stack drops
    the rest rather than leaving it to slow the module's other tests.
    """
    (tmp_path / "db").mkdir()
    nats_server = start_own_nats(tmp_path / "nats")
    try:
        with database_for_tests(tmp_path / "db") as database_url:
            environment = stack_settings(tmp_path / "stack", database_url=database_url,
                                         nats_url=nats_server.url)
            with running_stack(tmp_path / "stack", environment, workers=1) as running:
                yield running
    finally:
        nats_server.stop()


async def serials(page: Page) -> list[int]:
    texts = await page.locator("tr.image-row .serial").all_inner_texts()
    return [int(text.lstrip("#")) for text in texts]


async def test_a_catalogue_of_20000_images_is_paged(
        catalogue_stack: RunningStack, corpus_server: CorpusHttpServer, page: Page) -> None:
    gateway = catalogue_stack.gateway_url
    async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
        answer = await client.post("/upload/", files={
            "file": ("catalogue.csv", catalogue_csv(corpus_server), "text/csv")})
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    assert answer.json()["image_count"] == CATALOGUE_IMAGES

    origin = corpus_server.url("/")
    from_origin: list[str] = []
    status_reads: list[str] = []

    def note(url: str) -> None:
        if url.startswith(origin):
            from_origin.append(url)
        elif urlsplit(url).path == f"/status/{request_id}":
            status_reads.append(url)

    page.on("request", lambda request: note(request.url))
    rows = page.locator("tr.image-row")
    top_pager = page.get_by_role("navigation", name="Image pages", exact=True)

    started = time.monotonic()
    await page.goto(f"{gateway}/#/requests/{request_id}")
    await page.wait_for_function(FIRST_PAGE_SHOWN, arg=[PAGE_SIZE, CATALOGUE_IMAGES])
    loaded_in = time.monotonic() - started
    print(f"first page of {CATALOGUE_IMAGES} images shown in {loaded_in:.2f} s")
    assert loaded_in < FIRST_PAGE_BUDGET_SECONDS, f"first page took {loaded_in:.2f} s"

    # One page of rows in the DOM, not one per image; the counters are all there.
    assert await page.locator("#image-rows tr").count() == PAGE_SIZE
    assert await serials(page) == list(range(1, PAGE_SIZE + 1))
    for counter in ("#count-completed", "#count-failed", "#count-in-progress"):
        await expect(page.locator(counter)).to_have_text(re.compile(r"^\d[\d,.\s]*$"))
    await expect(top_pager.locator(".page-info")).to_have_text(
        re.compile(r"^Images 1–100 of 20.?000$"))

    # Events move the counters, and neither re-read nor redraw the page on screen.
    await rows.first.evaluate("row => { row.dataset.probe = 'kept'; }")
    reads = len(status_reads)
    failed_now = int(re.sub(r"\D", "", await page.locator("#count-failed").inner_text()))
    await page.wait_for_function(FAILED_AT_LEAST, arg=failed_now + 300)
    await expect(page.locator("tr.image-row[data-probe=kept]")).to_have_count(1)
    assert len(status_reads) - reads <= 1, status_reads[reads:]  # the completion may re-read it

    # Jumping to the failures shows the first page of failed images, and only those.
    await page.get_by_role("button", name="Jump to the failures").click()
    await expect(page.get_by_role("button", name="Failed", exact=True)
                 ).to_have_attribute("aria-pressed", "true")
    await expect(rows.first.locator(".serial")).to_have_text("#2")
    await expect(page.locator('tr.image-row:not([data-status="failed"])')).to_have_count(0)
    assert await rows.count() == PAGE_SIZE
    await expect(rows.first).to_contain_text("HTTP 404 from source")
    await top_pager.get_by_role("button", name="Next").click()
    await expect(rows.first.locator(".serial")).to_have_text(f"#{PAGE_SIZE + 2}")
    await expect(page.locator('tr.image-row:not([data-status="failed"])')).to_have_count(0)

    # Every image again, a page at a time, forward and back.
    await page.get_by_role("button", name="All", exact=True).click()
    await expect(rows.first.locator(".serial")).to_have_text("#1")
    await top_pager.get_by_role("button", name="Next").click()
    await expect(rows.first.locator(".serial")).to_have_text(f"#{PAGE_SIZE + 1}")
    assert await serials(page) == list(range(PAGE_SIZE + 1, 2 * PAGE_SIZE + 1))
    await expect(top_pager.locator(".page-info")).to_have_text(
        re.compile(r"^Images 101–200 of 20.?000$"))
    await top_pager.get_by_role("button", name="Previous").click()
    await expect(rows.first.locator(".serial")).to_have_text("#1")

    # Sources are links, never images: only compressed outputs load, and lazily.
    first_source = rows.nth(1).locator("a.source-name")
    await expect(first_source).to_have_attribute("href", corpus_server.url("gone/2.jpg"))
    await expect(rows.first.locator("td.after img")).to_have_attribute("loading", "lazy")
    image_sources = await page.eval_on_selector_all("img", "images => images.map(i => i.src)")
    assert not [source for source in image_sources if source.startswith(origin)]
    assert not from_origin, f"the page fetched sources itself: {from_origin[:3]}"
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=artifact("web-page-catalogue.png"))
    await page.set_viewport_size({"width": 420, "height": 900})
    await page.screenshot(path=artifact("web-page-catalogue-narrow.png"))
    await page.get_by_role("button", name="Jump to the failures").click()
    await page.screenshot(path=artifact("web-page-catalogue-failed.png"))
