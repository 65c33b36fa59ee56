// The pixpipe web page: upload a CSV, follow the request live, download the output CSV.
// Plain ES2020, no build step and no dependencies; every server value reaches the DOM as text.
"use strict";

(() => {
  const TOKEN_KEY = "pixpipe.apiToken";
  const RECENT_LIMIT = 20;
  const RECENT_REFRESH_MS = 15000;
  const POLL_MS = 1000;
  // Rows on screen at once: a request may hold 100,000 images, so the table shows one page.
  const PAGE_SIZE = 100;
  // While images move in or out of a filtered page, it is fetched again at most this often.
  const REFRESH_MS = 1000;
  // After the request ends, its webhook is usually delivered within seconds; look again a
  // few times.
  const WEBHOOK_CHECK_MS = 2000;
  const WEBHOOK_CHECKS = 30;
  const TERMINAL = new Set(["completed", "failed"]);
  const REQUEST_WORDS = {
    pending: "Waiting", processing: "Processing", completed: "Completed", failed: "Failed",
  };
  const IMAGE_WORDS = {
    pending: "Queued", processing: "Working", completed: "Done", failed: "Failed",
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- small helpers

  /** Creates an element; attributes set as properties unless they contain a dash. */
  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key.includes("-") || key === "role") node.setAttribute(key, value === true ? "" : value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const integerFormat = new Intl.NumberFormat();

  function formatBytes(bytes) {
    if (!Number.isFinite(bytes) || bytes <= 0) return "—";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return `${unit === 0 ? integerFormat.format(value) : numberFormat.format(value)} ${units[unit]}`;
  }

  /** Share saved, or null when either size is unknown. */
  function savingRatio(bytesIn, bytesOut) {
    return bytesIn > 0 && bytesOut > 0 ? 1 - bytesOut / bytesIn : null;
  }

  function describeSaving(ratio) {
    if (ratio === null) return { text: "—", tone: "" };
    const percent = Math.round(Math.abs(ratio) * 1000) / 10;
    if (ratio === 0) return { text: "kept original", tone: "neutral" };
    if (ratio > 0) return { text: `${numberFormat.format(percent)}% smaller`, tone: "good" };
    return { text: `${numberFormat.format(percent)}% larger`, tone: "warn" };
  }

  /** Timestamps come as RFC 3339 with up to nine fractional digits; Date wants three. */
  function parseTime(text) {
    if (!text) return null;
    const date = new Date(String(text).replace(/(\.\d{3})\d+/, "$1"));
    return Number.isNaN(date.getTime()) ? null : date;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

  function relativeTime(date) {
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    const steps = [[60, "second"], [60, "minute"], [24, "hour"], [7, "day"], [Infinity, "week"]];
    let value = seconds;
    for (const [size, unit] of steps) {
      if (Math.abs(value) < size) return relativeFormat.format(Math.round(value), unit);
      value /= size;
    }
    return timeFormat.format(date);
  }

  function formatDuration(milliseconds) {
    const seconds = milliseconds / 1000;
    if (seconds < 60) return `${numberFormat.format(seconds)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  /** Only http(s) and same-origin paths may become a link or an image source. */
  function safeUrl(text) {
    if (!text) return null;
    try {
      const url = new URL(text, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function lastPathSegment(text) {
    try {
      const url = new URL(text);
      const name = decodeURIComponent(url.pathname.split("/").filter(Boolean).pop() || "");
      return name || url.host;
    } catch {
      return text;
    }
  }

  // ---------------------------------------------------------------- the REST API

  function readToken() {
    try {
      return window.localStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function writeToken(token) {
    try {
      if (token) window.localStorage.setItem(TOKEN_KEY, token);
      else window.localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage can be disabled; the token then lasts as long as the page.
    }
  }

  let apiToken = readToken();

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  /** What went wrong, in words, from any error answer the gateway (or FastAPI) gives. */
  function errorMessage(status, body) {
    if (status === 401) {
      return apiToken
        ? "The gateway refused the API token. Check it under “API token”."
        : "This gateway needs an API token. Enter it under “API token”.";
    }
    const error = body && body.error;
    if (error && error.message) return error.message;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((item) => {
        const where = Array.isArray(item.loc) ? item.loc.filter((part) => part !== "body").join(" ") : "";
        return where ? `${where}: ${item.msg}` : String(item.msg);
      }).join("; ");
    }
    if (body && typeof body.detail === "string") return body.detail;
    if (status === 404) return "Not found.";
    return `The gateway answered HTTP ${status}.`;
  }

  async function apiFetch(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (apiToken) headers.set("Authorization", `Bearer ${apiToken}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: "no-store" });
    } catch {
      throw new ApiError(0, null, "Could not reach the gateway. Is it running?");
    }
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      throw new ApiError(response.status, body, errorMessage(response.status, body));
    }
    return response;
  }

  async function apiJson(path, options) {
    return (await apiFetch(path, options)).json();
  }

  const requestPath = (requestId, suffix = "") =>
    `/status/${encodeURIComponent(requestId)}${suffix}`;

  // ---------------------------------------------------------------- the API token field

  const tokenInput = $("api_token");
  const tokenSummary = document.querySelector("#settings summary");

  function showTokenState() {
    tokenSummary.textContent = apiToken ? "API token · set" : "API token";
  }

  tokenInput.value = apiToken;
  showTokenState();
  tokenInput.addEventListener("change", () => {
    apiToken = tokenInput.value.trim();
    writeToken(apiToken);
    showTokenState();
    loadRecent();
    if (live && live.failedToLoad) openRequest(live.requestId);
  });
  $("forget-token").addEventListener("click", () => {
    tokenInput.value = "";
    apiToken = "";
    writeToken("");
    showTokenState();
    loadRecent();
  });

  // ---------------------------------------------------------------- the upload form

  const form = $("upload-form");
  const fileInput = $("file");
  const dropzone = $("dropzone");
  const fileChosen = $("file-chosen");
  const uploadErrors = $("upload-errors");
  const submitButton = $("submit");

  function showChosenFile() {
    const file = fileInput.files && fileInput.files[0];
    dropzone.classList.toggle("has-file", Boolean(file));
    fileChosen.hidden = !file;
    fileChosen.textContent = file ? `${file.name} · ${formatBytes(file.size)}` : "";
    if (file) fileInput.removeAttribute("aria-invalid");
  }

  fileInput.addEventListener("change", showChosenFile);

  /** The target score means something only with quality auto. */
  function syncTargetScore() {
    const auto = $("quality").value.trim().toLowerCase() === "auto";
    $("target_score").disabled = !auto;
    if (!auto) $("target_score").removeAttribute("aria-invalid");
  }

  $("quality").addEventListener("input", syncTargetScore);
  syncTargetScore();

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      dropzone.classList.add("dragging");
    });
  }
  dropzone.addEventListener("dragleave", (event) => {
    if (!dropzone.contains(event.relatedTarget)) dropzone.classList.remove("dragging");
  });
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      const transfer = new DataTransfer();
      transfer.items.add(files[0]);
      fileInput.files = transfer.files;
      showChosenFile();
    }
  });
  // A file dropped beside the drop zone must not replace the page with the file.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (!dropzone.contains(event.target)) event.preventDefault();
    });
  }

  function clearUploadErrors() {
    uploadErrors.hidden = true;
    uploadErrors.replaceChildren();
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  }

  function showUploadErrors(title, problems = [], faults = []) {
    uploadErrors.replaceChildren(h("p", { class: "form-errors-title" }, title));
    if (problems.length) {
      uploadErrors.append(h("ul", {}, problems.map((problem) => h("li", {}, problem))));
    }
    if (faults.length) {
      uploadErrors.append(h("ol", { class: "faults", "aria-label": "Problems found in the CSV" },
        faults.map((fault) => h("li", {
          class: "fault",
          dataset: { line: String(fault.line || 0), column: String(fault.column || 0),
            field: fault.field || "" },
        },
        h("span", { class: "fault-where" }, describeFaultPlace(fault),
          h("span", { class: "visually-hidden" }, ": ")),
        h("span", { class: "fault-reason" }, fault.reason || "")))));
    }
    uploadErrors.hidden = false;
    uploadErrors.focus();
  }

  function describeFaultPlace(fault) {
    const place = [fault.line ? `Line ${fault.line}` : "The file"];
    if (fault.column) place.push(`column ${fault.column}`);
    return place.join(", ") + (fault.field ? ` (${fault.field})` : "");
  }

  /** Checks the form as the gateway would, so simple slips are caught before uploading. */
  function validateForm() {
    const problems = [];
    const invalid = (field, message) => {
      field.setAttribute("aria-invalid", "true");
      problems.push(message);
    };
    if (!fileInput.files || !fileInput.files.length) invalid(fileInput, "Choose a CSV file to upload.");
    const webhook = $("webhook_url");
    if (webhook.value.trim() && !/^https?:\/\/\S+$/i.test(webhook.value.trim())) {
      invalid(webhook, "The webhook URL must start with http:// or https://.");
    }
    const quality = $("quality");
    const qualityText = quality.value.trim().toLowerCase();
    if (qualityText && qualityText !== "auto" &&
        !(/^\d+$/.test(qualityText) && Number(qualityText) >= 1 && Number(qualityText) <= 95)) {
      invalid(quality, "Quality must be a whole number from 1 to 95. Or auto: the " +
        "lowest quality that reaches the target score.");
    }
    const target = $("target_score");
    const targetText = target.value.trim();
    if (!target.disabled && (target.validity.badInput || (targetText &&
        !(Number.isFinite(Number(targetText)) && Number(targetText) >= 0 && Number(targetText) <= 100)))) {
      invalid(target, "Target score must be a number from 0 to 100.");
    }
    const ranges = [["max_width", "Max width", 1, 65535], ["max_height", "Max height", 1, 65535]];
    for (const [id, label, low, high] of ranges) {
      const field = $(id);
      const text = field.value.trim();
      if (field.validity.badInput) invalid(field, `${label} must be a whole number.`);
      else if (text && !(/^\d+$/.test(text) && Number(text) >= low && Number(text) <= high)) {
        invalid(field, `${label} must be a whole number from ${low} to ${high}.`);
      }
    }
    return problems;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearUploadErrors();
    const problems = validateForm();
    if (problems.length) {
      showUploadErrors("Please fix these before uploading:", problems);
      return;
    }
    const data = new FormData();
    data.append("file", fileInput.files[0], fileInput.files[0].name);
    for (const id of ["webhook_url", "quality", "target_score", "max_width", "max_height",
      "format", "effort"]) {
      const field = $(id);
      const value = id === "quality" ? field.value.trim().toLowerCase() : field.value.trim();
      if (value && !field.disabled) data.append(id, value);
    }
    submitButton.disabled = true;
    submitButton.textContent = "Uploading…";
    try {
      const answer = await apiJson("/upload/", { method: "POST", body: data });
      fileInput.value = "";
      showChosenFile();
      loadRecent();
      navigateTo(answer.request_id);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const faults = (error.body && Array.isArray(error.body.errors)) ? error.body.errors : [];
      if (faults.length) {
        const count = faults.length === 1 ? "1 problem" : `${faults.length} problems`;
        showUploadErrors(`The CSV was refused (${count}); nothing was queued. ` +
          "Fix the lines below and upload it again.", [], faults);
      } else {
        showUploadErrors("The upload failed.", [error.message]);
      }
    } finally {
      submitButton.disabled = false;
      submitButton.textContent = "Upload and compress";
    }
  });

  // ---------------------------------------------------------------- recent requests

  const recentList = $("recent-list");
  const recentEmpty = $("recent-empty");
  let recentTimer = null;

  let recentRequests = [];
  let liveCounters = null;

  /** A list fetched before the latest live event must not roll the open request back. */
  function withLiveCounters(requests) {
    if (!liveCounters) return requests;
    return requests.map((item) => {
      if (item.request_id !== liveCounters.request_id) return item;
      const listedDone = (item.completed || 0) + (item.failed || 0);
      const liveDone = liveCounters.completed + liveCounters.failed;
      return liveDone >= listedDone ? { ...item, ...liveCounters } : item;
    });
  }

  /** The open request's entry follows the live view rather than the last refresh. */
  function syncRecent(request) {
    liveCounters = { request_id: request.request_id, status: request.status,
      total: request.total, completed: request.completed, failed: request.failed };
    const item = recentRequests.find((entry) => entry.request_id === request.request_id);
    if (!item || (item.status === request.status && item.completed === request.completed &&
        item.failed === request.failed && item.total === request.total)) return;
    Object.assign(item, { status: request.status, total: request.total,
      completed: request.completed, failed: request.failed });
    // Only this entry's words change: live events come many times a second.
    const link = Array.from(recentList.querySelectorAll("a.recent-item"))
      .find((node) => node.dataset.requestId === item.request_id);
    if (!link) return;
    const badge = link.querySelector(".badge");
    badge.dataset.status = item.status;
    badge.textContent = REQUEST_WORDS[item.status] || item.status;
    link.querySelector(".recent-summary").textContent = recentSummary(item);
  }

  function recentSummary(item) {
    const done = (item.completed || 0) + (item.failed || 0);
    return `${integerFormat.format(done)}/${integerFormat.format(item.total || 0)} done` +
      (item.failed ? ` · ${integerFormat.format(item.failed)} failed` : "");
  }

  function renderRecent(requests) {
    recentRequests = requests;
    const current = live ? live.requestId : null;
    recentList.replaceChildren(...requests.map((item) => {
      const created = parseTime(item.created_at);
      return h("li", {},
        h("a", {
          href: `#/requests/${encodeURIComponent(item.request_id)}`,
          class: "recent-item",
          dataset: { requestId: item.request_id },
          "aria-current": item.request_id === current ? "true" : null,
        },
        h("span", { class: "recent-top" },
          h("span", { class: "recent-name" }, item.file_name || "untitled.csv"),
          h("span", { class: "badge small", dataset: { status: item.status } },
            REQUEST_WORDS[item.status] || item.status)),
        h("span", { class: "recent-bottom" },
          h("span", { class: "recent-summary" }, recentSummary(item)),
          created ? h("time", { dateTime: created.toISOString(), title: timeFormat.format(created) },
            relativeTime(created)) : null)));
    }));
    recentEmpty.hidden = requests.length > 0;
  }

  let recentCalls = 0;

  async function loadRecent() {
    clearTimeout(recentTimer);
    const call = ++recentCalls;
    try {
      const answer = await apiJson(`/requests?limit=${RECENT_LIMIT}`);
      if (call !== recentCalls) return; // a later refresh is on its way
      renderRecent(withLiveCounters(Array.isArray(answer.requests) ? answer.requests : []));
      recentEmpty.textContent = "No requests yet.";
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (call !== recentCalls) return;
      renderRecent([]);
      // A gateway without the list simply has no history to show.
      recentEmpty.textContent = error.status === 404 ? "No requests yet." : error.message;
    }
    if (!document.hidden) recentTimer = setTimeout(loadRecent, RECENT_REFRESH_MS);
  }

  function markCurrentInRecent() {
    for (const link of recentList.querySelectorAll("a.recent-item")) {
      if (live && link.dataset.requestId === live.requestId) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
  }

  $("refresh-recent").addEventListener("click", loadRecent);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) loadRecent();
  });

  // ---------------------------------------------------------------- the live view

  const view = {
    empty: $("live-empty"),
    section: $("live-view"),
    title: $("live-title"),
    options: $("live-options"),
    id: $("live-id"),
    times: $("live-times"),
    status: $("live-status"),
    download: $("download-csv"),
    downloadHelp: $("download-help"),
    progress: $("progress"),
    progressDone: $("progress-done"),
    progressFailed: $("progress-failed"),
    progressText: $("progress-text"),
    total: $("count-total"),
    completed: $("count-completed"),
    failed: $("count-failed"),
    inProgress: $("count-in-progress"),
    jumpFailures: $("jump-failures"),
    connection: $("live-connection"),
    announce: $("live-announce"),
    error: $("live-error"),
    webhookBox: $("webhook-box"),
    webhookUrl: $("webhook-url"),
    webhookState: $("webhook-state"),
    imagesHead: document.querySelector(".images-head"),
    chips: Array.from(document.querySelectorAll(".chip[data-filter]")),
    pagers: Array.from(document.querySelectorAll(".pager")),
    table: $("images"),
    rows: $("image-rows"),
  };

  const FILTERS = new Set(["all", "failed", "completed", "processing", "pending"]);
  const FILTER_NOUNS = {
    all: "Images", failed: "Failed images", completed: "Completed images",
    processing: "Images being processed", pending: "Queued images",
  };
  const EMPTY_PAGE_WORDS = {
    all: "No images.", failed: "No failed images.", completed: "No completed images yet.",
    processing: "No image is being processed right now.", pending: "No image is waiting.",
  };

  let live = null;

  /**
   * One request on screen: its summary, one page of its images, and the feed (SSE, or polling
   * when a token is needed) keeping both fresh. Events update the counters and the rows on
   * this page; other pages are read from GET /status when the user goes to them.
   */
  class LiveRequest {
    constructor(requestId) {
      this.requestId = requestId;
      this.version = -1;
      this.request = { request_id: requestId, status: "pending", total: 0, completed: 0, failed: 0 };
      this.filter = "all";
      // The page token of every page from the first to the one on screen (the last).
      this.tokens = [""];
      this.nextToken = null;
      this.rows = new Map();
      this.firstImage = null;
      this.lastImage = null;
      this.pageLoaded = false;
      this.turning = true;
      this.pageCalls = 0;
      // Image events that arrive while a page is on its way: the answer may predate them.
      this.held = null;
      this.refreshTimer = null;
      this.dirty = new Set();
      this.frame = 0;
      this.source = null;
      this.polling = false;
      this.pollTimer = null;
      this.webhookTimer = null;
      this.followingWebhook = false;
      this.stopped = false;
      this.failedToLoad = false;
    }

    get pageIndex() {
      return this.tokens.length - 1;
    }

    start() {
      if (apiToken) {
        // EventSource cannot send an Authorization header; ask for the status instead.
        this.startPolling();
      } else {
        this.listen();
        this.loadPage();
      }
    }

    stop() {
      this.stopped = true;
      if (this.source) this.source.close();
      this.source = null;
      clearTimeout(this.pollTimer);
      clearTimeout(this.refreshTimer);
      clearTimeout(this.webhookTimer);
      cancelAnimationFrame(this.frame);
    }

    startPolling() {
      this.polling = true;
      this.loadPage();
    }

    listen() {
      const source = new EventSource(requestPath(this.requestId, "/events"));
      this.source = source;
      this.setConnection("Connecting…");
      source.addEventListener("open", () => this.setConnection("Live updates"));
      source.addEventListener("snapshot", (event) => {
        const data = JSON.parse(event.data);
        this.applySummary(data.request, data.version);
        // The snapshot carries the request's first images: those on this page follow it.
        for (const image of (data.request && data.request.images) || []) {
          this.updateRow(this.rows.get(image.image_id), image, data.version);
        }
      });
      source.addEventListener("image", (event) => this.applyImageEvent(JSON.parse(event.data)));
      source.addEventListener("completed", (event) => {
        const data = JSON.parse(event.data);
        // The server ends the stream now; closing first stops EventSource reconnecting.
        source.close();
        this.source = null;
        this.applySummary(data.request, data.version);
        // The final state of this page in one read, whatever events were coalesced.
        this.loadPage();
      });
      source.addEventListener("error", (event) => {
        if (this.stopped) return;
        if (event.data) {
          // An error the server reported inside the stream: carry on by polling.
          let message = "the live stream broke";
          try {
            message = JSON.parse(event.data).message || message;
          } catch {
            // keep the generic words
          }
          source.close();
          this.source = null;
          this.setConnection(`Live updates stopped (${message}); checking every second instead.`);
          this.startPolling();
        } else if (source.readyState === EventSource.CLOSED) {
          // Refused outright (unknown id, token needed): the status answer says why.
          this.source = null;
          if (!this.failedToLoad) this.startPolling();
        } else {
          this.setConnection("Connection lost — reconnecting…");
        }
      });
    }

    /** Reads the page on screen (again); its answer refreshes the summary too. */
    async loadPage() {
      if (this.stopped) return;
      clearTimeout(this.pollTimer);
      clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
      const call = ++this.pageCalls;
      if (!this.held) this.held = new Map();
      view.table.setAttribute("aria-busy", "true");
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (this.filter !== "all") query.set("status", this.filter);
      if (this.tokens[this.pageIndex]) query.set("page_token", this.tokens[this.pageIndex]);
      let answer;
      try {
        answer = await apiJson(`${requestPath(this.requestId)}?${query}`);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (this.stopped || call !== this.pageCalls) return;
        this.held = null;
        view.table.setAttribute("aria-busy", "false");
        this.pageFailed(error);
        return;
      }
      if (this.stopped || call !== this.pageCalls) return;
      const held = this.held;
      this.held = null;
      view.table.setAttribute("aria-busy", "false");
      this.failedToLoad = false;
      this.hideError();
      this.applySummary(answer, answer.version);
      const images = Array.isArray(answer.images) ? answer.images : [];
      if (!images.length && this.pageIndex > 0) {
        // Every image of this page has moved on to another state: show the page before.
        this.tokens.pop();
        this.loadPage();
        return;
      }
      this.showPage(images, answer.version, answer.next_page_token || null, held);
      if (this.polling && !TERMINAL.has(this.request.status)) {
        this.setConnection("Checking every second");
        this.pollTimer = setTimeout(() => this.loadPage(), POLL_MS);
      }
    }

    pageFailed(error) {
      if (error.status === 0 || error.status >= 500) {
        this.setConnection(`${error.message} Trying again…`);
        this.pollTimer = setTimeout(() => this.loadPage(), POLL_MS * 3);
      } else if (error.status === 400 && this.pageIndex > 0) {
        // A page token the gateway no longer takes: start the list again.
        this.tokens = [""];
        this.loadPage();
      } else {
        this.failedToLoad = true;
        this.turning = false;
        this.renderPager();
        this.setConnection("");
        this.showError(error.status === 404
          ? "There is no request with this id." : error.message);
      }
    }

    /** Puts a fetched page on screen, keeping the rows (and loaded thumbnails) it shares. */
    showPage(images, version, nextToken, held) {
      const rows = new Map();
      for (const image of images) {
        const entry = this.rows.get(image.image_id) || { data: image, version, row: null, shown: {} };
        if (entry.version <= version) {
          entry.data = image;
          entry.version = version;
        }
        rows.set(image.image_id, entry);
      }
      for (const { image, version: changed } of held ? held.values() : []) {
        this.updateRow(rows.get(image.image_id), image, changed);
      }
      this.rows = rows;
      this.firstImage = images.length ? images[0] : null;
      this.lastImage = images.length ? images[images.length - 1] : null;
      this.nextToken = nextToken;
      this.pageLoaded = true;
      this.turning = false;
      const fragment = document.createDocumentFragment();
      for (const entry of rows.values()) {
        renderRow(entry);
        this.dirty.delete(entry);
        fragment.append(entry.row);
      }
      if (!rows.size) {
        fragment.append(h("tr", { class: "empty-row" },
          h("td", { colSpan: 6 }, EMPTY_PAGE_WORDS[this.filter])));
      }
      view.rows.replaceChildren(fragment);
      this.renderPager();
    }

    setFilter(filter) {
      if (!FILTERS.has(filter)) return;
      this.filter = filter;
      this.turnTo([""]);
    }

    goTo(where) {
      if (this.turning) return;
      if (where === "next" && this.nextToken) this.turnTo([...this.tokens, this.nextToken]);
      else if (where === "previous" && this.pageIndex > 0) this.turnTo(this.tokens.slice(0, -1));
      else if (where === "first") this.turnTo([""]);
    }

    turnTo(tokens) {
      this.tokens = tokens;
      this.nextToken = null;
      this.turning = true;
      this.renderPager();
      this.loadPage();
    }

    setConnection(text) {
      view.connection.textContent = text;
    }

    showError(text) {
      view.error.replaceChildren(h("p", {}, text));
      view.error.hidden = false;
    }

    hideError() {
      view.error.hidden = true;
    }

    /** The request's summary from a snapshot, a completion or a status answer. */
    applySummary(request, version) {
      if (!request) return;
      const { images: _images, next_page_token: _next, ...summary } = request;
      const wasTerminal = TERMINAL.has(this.request.status);
      if (typeof version === "number" && version < this.version) {
        // Older than events already shown: keep their counters, take the rest.
        const { status: _s, total: _t, completed: _c, failed: _f, in_progress: _i, ...rest } = summary;
        this.request = { ...this.request, ...rest };
      } else {
        this.request = { ...this.request, ...summary };
        if (typeof version === "number") this.version = version;
      }
      this.schedule();
      if (!wasTerminal && TERMINAL.has(this.request.status)) this.finished();
      // The delivery record may only appear with the completion, after finished() ran.
      if (TERMINAL.has(this.request.status) && !this.followingWebhook && this.request.webhook) {
        this.followingWebhook = true;
        this.followWebhook(0);
      }
    }

    applyImageEvent(data) {
      if (typeof data.version === "number") {
        if (data.version <= this.version) return;
        this.version = data.version;
      }
      const wasTerminal = TERMINAL.has(this.request.status);
      this.request = {
        ...this.request, status: data.status, total: data.total,
        completed: data.completed, failed: data.failed,
      };
      const image = data.image;
      if (image) {
        if (this.held) this.held.set(image.image_id, { image, version: data.version });
        const entry = this.rows.get(image.image_id);
        this.updateRow(entry, image, data.version);
        if (this.filter !== "all" && this.movesThroughPage(image, entry)) this.refreshSoon();
      }
      this.schedule();
      // The last image's event already carries the terminal state the completion repeats.
      if (!wasTerminal && TERMINAL.has(this.request.status)) this.finished();
    }

    updateRow(entry, image, version) {
      if (!entry || (typeof version === "number" && version < entry.version)) return;
      if (typeof version === "number") entry.version = version;
      if (sameImage(entry.data, image)) return;
      entry.data = image;
      this.dirty.add(entry);
    }

    /** Whether an image just left this filtered page, or joined the filter within its range. */
    movesThroughPage(image, entry) {
      if (!this.pageLoaded || this.turning) return false;
      if (entry) return image.status !== this.filter;
      if (image.status !== this.filter) return false;
      if (this.pageIndex > 0 && this.firstImage && compareImages(image, this.firstImage) < 0) return false;
      return !(this.nextToken && this.lastImage && compareImages(image, this.lastImage) > 0);
    }

    refreshSoon() {
      // A polled page is read again every second anyway.
      if (this.polling || this.refreshTimer) return;
      this.refreshTimer = setTimeout(() => {
        this.refreshTimer = null;
        this.loadPage();
      }, REFRESH_MS);
    }

    finished() {
      const { completed, failed, total } = this.request;
      const words = this.request.status === "completed"
        ? `Request completed: ${completed} of ${total} images compressed` +
          (failed ? `, ${failed} failed.` : ".")
        : `Request failed: none of the ${total} images could be processed.`;
      view.announce.textContent = words;
      this.setConnection("");
      loadRecent();
    }

    followWebhook(checks) {
      const webhook = this.request.webhook;
      if (this.stopped || !webhook || !["pending", "delivering"].includes(webhook.state) ||
          checks >= WEBHOOK_CHECKS) {
        return;
      }
      this.webhookTimer = setTimeout(async () => {
        try {
          // One image is the least a status answer can carry; only the summary is wanted.
          const request = await apiJson(`${requestPath(this.requestId)}?limit=1`);
          if (this.stopped) return;
          this.applySummary(request, request.version);
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
        }
        this.followWebhook(checks + 1);
      }, WEBHOOK_CHECK_MS);
    }

    /** DOM work is batched per frame so a burst of events costs one repaint. */
    schedule() {
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          this.render();
        });
      }
    }

    render() {
      if (this.stopped) return;
      this.renderSummary();
      this.renderPager();
      for (const entry of this.dirty) {
        if (this.rows.get(entry.data.image_id) === entry) renderRow(entry);
      }
      this.dirty.clear();
    }

    renderSummary() {
      const request = this.request;
      const total = request.total || 0;
      const completed = request.completed || 0;
      const failed = request.failed || 0;
      const done = completed + failed;
      const percent = total ? Math.floor((done / total) * 100) : 0;
      const terminal = TERMINAL.has(request.status);

      view.title.textContent = request.file_name || (request.created_at ? "Request" : "Loading…");
      view.id.textContent = this.requestId;
      view.options.textContent = request.options ? describeOptions(request.options) : "";
      const created = parseTime(request.created_at);
      const finished = parseTime(request.completed_at);
      view.times.replaceChildren(
        created ? h("span", {}, "Started ", h("time", { dateTime: created.toISOString() },
          timeFormat.format(created))) : "",
        created && finished ? ` · finished in ${formatDuration(finished - created)}` : "");

      view.status.textContent = REQUEST_WORDS[request.status] || request.status;
      view.status.dataset.status = request.status;
      view.download.disabled = !terminal;
      view.downloadHelp.textContent = terminal
        ? "The input columns plus “Output Image Urls” and each image's quality, encoder and score."
        : "Available when every image is done.";

      view.progressDone.style.width = total ? `${(completed / total) * 100}%` : "0";
      view.progressFailed.style.width = total ? `${(failed / total) * 100}%` : "0";
      view.progress.setAttribute("aria-valuenow", String(percent));
      view.progress.setAttribute("aria-valuetext",
        `${done} of ${total} images done, ${failed} failed`);
      view.progress.dataset.status = request.status;
      view.progressText.textContent = `${percent}% · ${integerFormat.format(done)} of ` +
        `${integerFormat.format(total)} images`;

      view.total.textContent = integerFormat.format(total);
      view.completed.textContent = integerFormat.format(completed);
      view.failed.textContent = integerFormat.format(failed);
      view.inProgress.textContent = integerFormat.format(Math.max(0, total - done));
      view.jumpFailures.hidden = failed === 0;

      syncRecent(request);
      const webhook = request.webhook;
      view.webhookBox.hidden = !webhook;
      if (webhook) {
        view.webhookUrl.textContent = webhook.url;
        view.webhookState.textContent = describeWebhook(webhook);
      }
      document.title = terminal
        ? `${REQUEST_WORDS[request.status]} · ${request.file_name || "request"} — pixpipe`
        : `${percent}% · ${request.file_name || "request"} — pixpipe`;
    }

    /** Which rows are shown, the filter chips, and which way the user can page. */
    renderPager() {
      const counts = { all: this.request.total, failed: this.request.failed,
        completed: this.request.completed };
      const count = counts[this.filter];
      const first = this.pageIndex * PAGE_SIZE + 1;
      let words = "";
      if (this.turning) {
        words = `Loading page ${integerFormat.format(this.pageIndex + 1)}…`;
      } else if (this.rows.size) {
        words = `${FILTER_NOUNS[this.filter]} ${integerFormat.format(first)}–` +
          `${integerFormat.format(first + this.rows.size - 1)}` +
          (typeof count === "number" ? ` of ${integerFormat.format(count)}` : "");
      }
      for (const pager of view.pagers) {
        const info = pager.querySelector(".page-info");
        if (info.textContent !== words) info.textContent = words;
        // aria-disabled rather than disabled: a focused button keeps its focus.
        for (const button of pager.querySelectorAll("button[data-page]")) {
          const off = this.turning ||
            (button.dataset.page === "next" ? !this.nextToken : this.pageIndex === 0);
          button.setAttribute("aria-disabled", String(off));
        }
      }
      for (const chip of view.chips) {
        chip.setAttribute("aria-pressed", String(chip.dataset.filter === this.filter));
      }
    }
  }

  function describeOptions(options) {
    const format = options.format ? options.format.toUpperCase() : "default format";
    const quality = options.quality === "auto"
      ? `quality auto (target score ${options.target_score ?? 70})`
      : options.quality ? `quality ${options.quality}` : "default quality";
    const box = options.max_width || options.max_height
      ? `fit in ${options.max_width || "any"} × ${options.max_height || "any"} px`
      : "original size";
    return `Options: ${format}, ${quality}, ${box}`;
  }

  function describeWebhook(webhook) {
    const attempts = webhook.attempts === 1 ? "1 attempt" : `${webhook.attempts || 0} attempts`;
    const last = webhook.last_status_code ? `, last answer HTTP ${webhook.last_status_code}`
      : webhook.last_error ? `, last error: ${webhook.last_error}` : "";
    const states = {
      pending: "waiting to be delivered",
      delivering: "being delivered",
      delivered: "delivered",
      failed: "gave up delivering",
    };
    const state = states[webhook.state] || webhook.state;
    return webhook.attempts ? `${state} (${attempts}${last})` : state;
  }

  function sameImage(a, b) {
    return a.status === b.status && a.output_url === b.output_url && a.error === b.error &&
      a.bytes_in === b.bytes_in && a.bytes_out === b.bytes_out &&
      a.quality_used === b.quality_used && a.encoder === b.encoder && a.score === b.score;
  }

  /** What made a completed output: "q42 · mozjpeg · score 70.3"; null for a kept source. */
  function describeReceipt(image) {
    if (image.status !== "completed" || !image.encoder) return null;
    const parts = [];
    if (image.quality_used != null) parts.push(`q${image.quality_used}`);
    parts.push(image.encoder);
    if (image.score != null) parts.push(`score ${Number(image.score).toFixed(1)}`);
    return parts.join(" · ");
  }

  /** Images are listed by serial number, then by their place in the product's cell. */
  function compareImages(a, b) {
    return (a.serial_number - b.serial_number) || (a.position - b.position);
  }

  /** The compressed image, loaded only when its row scrolls near the viewport. */
  function thumbnail(url, alt) {
    const href = safeUrl(url);
    if (!href) return h("span", { class: "thumb empty" }, "—");
    const image = h("img", { alt, decoding: "async", width: 64, height: 64 });
    const link = h("a", { href, target: "_blank", rel: "noopener noreferrer", class: "thumb",
      title: "Open the compressed image" }, image);
    const noPreview = () => link.replaceWith(h("span", { class: "thumb empty" }, "No preview"));
    image.addEventListener("error", noPreview, { once: true });
    if (apiToken && new URL(href, window.location.href).origin === window.location.origin) {
      // With API keys the gateway gives an output only to the key that made it, and an <img>
      // cannot send a token: fetch it with the token and show the bytes.
      fetch(href, { headers: { Authorization: `Bearer ${apiToken}` } })
        .then((answer) => (answer.ok ? answer.blob() : Promise.reject(answer.status)))
        .then((blob) => {
          const local = URL.createObjectURL(blob);
          image.src = local;
          link.href = local;
        })
        .catch(noPreview);
    } else {
      image.loading = "lazy";
      image.src = href;
    }
    return link;
  }

  /** The source is named and linked, never loaded: a page must not fetch 100 origins' images. */
  function sourceLink(url) {
    const href = safeUrl(url);
    const name = lastPathSegment(url);
    let host = "";
    try {
      host = new URL(url).host;
    } catch {
      host = "";
    }
    return [
      href
        ? h("a", { href, class: "source-name", target: "_blank", rel: "noopener noreferrer",
          referrerPolicy: "no-referrer", title: url }, name)
        : h("span", { class: "source-name", title: url }, name),
      h("span", { class: "source-host" }, host),
    ];
  }

  function renderRow(entry) {
    const image = entry.data;
    if (!entry.row) {
      entry.row = h("tr", { class: "image-row" });
      entry.cells = Array.from({ length: 6 }, (_, index) =>
        entry.row.appendChild(h("td", { class: index === 3 || index === 4 ? "num" : "" })));
    }
    const [product, source, after, size, saving, status] = entry.cells;
    const shown = entry.shown;
    entry.row.dataset.status = image.status;
    entry.row.dataset.imageId = image.image_id;

    if (!shown.product) {
      shown.product = true;
      product.replaceChildren(
        h("div", { class: "product" },
          h("span", { class: "serial" }, `#${image.serial_number}`),
          h("span", { class: "product-name" }, image.product_name)),
        h("div", { class: "image-position" }, `Image ${image.position + 1}`));
      source.replaceChildren(...sourceLink(image.input_url));
      source.classList.add("source");
      after.classList.add("thumb-cell", "after");
      entry.label = `${image.product_name}, image ${image.position + 1}`;
    }
    if (shown.output !== image.output_url || shown.afterStatus !== image.status) {
      shown.output = image.output_url;
      shown.afterStatus = image.status;
      after.replaceChildren(image.output_url
        ? thumbnail(image.output_url, `Compressed: ${entry.label}`)
        : image.status === "failed" ? h("span", { class: "thumb-none", "aria-label": "no output" }, "—")
          : h("span", { class: "thumb empty" }, image.status === "processing" ? "Working…" : "Waiting"));
    }
    size.replaceChildren(image.status === "completed" && image.bytes_in > 0
      ? h("span", {}, formatBytes(image.bytes_in),
        h("span", { class: "arrow", "aria-hidden": "true" }, " → "),
        h("span", { class: "visually-hidden" }, " to "), formatBytes(image.bytes_out))
      : "—");
    const receipt = describeReceipt(image);
    if (receipt) {
      size.append(h("div", { class: "receipt", title: "Quality used · encoder · score" }, receipt));
    }
    const { text, tone } = describeSaving(image.status === "completed"
      ? savingRatio(image.bytes_in, image.bytes_out) : null);
    saving.textContent = text;
    saving.className = `num saving ${tone || "none"}`;
    status.replaceChildren(h("span", { class: "badge small", dataset: { status: image.status } },
      IMAGE_WORDS[image.status] || image.status));
    if (image.status === "failed") {
      status.append(h("p", { class: "image-error" }, image.error || "failed for an unknown reason"));
    }
  }

  function resetView() {
    view.rows.replaceChildren();
    view.error.hidden = true;
    view.announce.textContent = "";
    view.connection.textContent = "";
    view.webhookBox.hidden = true;
  }

  function openRequest(requestId) {
    if (live) live.stop();
    resetView();
    view.empty.hidden = true;
    view.section.hidden = false;
    live = new LiveRequest(requestId);
    live.renderSummary();
    live.renderPager();
    live.start();
    markCurrentInRecent();
  }

  function closeRequest() {
    if (live) live.stop();
    live = null;
    view.section.hidden = true;
    view.empty.hidden = false;
    document.title = "pixpipe — bulk image compression";
    markCurrentInRecent();
  }

  view.download.addEventListener("click", async () => {
    if (!live) return;
    const requestId = live.requestId;
    view.download.disabled = true;
    try {
      const response = await apiFetch(requestPath(requestId, "/csv"));
      const blob = await response.blob();
      const disposition = response.headers.get("content-disposition") || "";
      const match = /filename="?([^";]+)"?/i.exec(disposition);
      const link = h("a", {
        href: URL.createObjectURL(blob), download: match ? match[1] : `pixpipe-${requestId}.csv`,
      });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      live.showError(error.status === 409
        ? "The output CSV is ready once every image is done." : error.message);
    } finally {
      if (live && live.requestId === requestId) live.renderSummary();
    }
  });

  // The filter and the pages are the server's (GET /status?status=…&page_token=…).
  for (const chip of view.chips) {
    chip.addEventListener("click", () => {
      if (live) live.setFilter(chip.dataset.filter);
    });
  }

  view.jumpFailures.addEventListener("click", () => {
    if (!live) return;
    live.setFilter("failed");
    view.imagesHead.scrollIntoView({ block: "start" });
  });

  for (const pager of view.pagers) {
    pager.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-page]");
      if (!button || !live) return;
      live.goTo(button.dataset.page);
      // Paging from below the table starts the reader at the top of the new page.
      if (pager === view.pagers[view.pagers.length - 1]) view.imagesHead.scrollIntoView({ block: "start" });
    });
  }

  // ---------------------------------------------------------------- routing: #/requests/<id>

  function requestIdFromHash() {
    const match = /^#\/requests\/([^/?#]+)$/.exec(window.location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return null;
    }
  }

  function navigateTo(requestId) {
    const hash = `#/requests/${encodeURIComponent(requestId)}`;
    if (window.location.hash === hash) openRequest(requestId);
    else window.location.hash = hash;
  }

  function route() {
    const requestId = requestIdFromHash();
    if (requestId) {
      if (!live || live.requestId !== requestId) openRequest(requestId);
      $("live").focus({ preventScroll: true });
    } else {
      closeRequest();
    }
  }

  window.addEventListener("hashchange", route);
  route();
  loadRecent();
})();
