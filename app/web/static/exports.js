// The result's exports (GET/POST jobs/<id>/exports/<name>): each made on request by a worker, polled until it
// is ready, then offered as a download link (fetched with the API key, which a plain link cannot send).
import { ApiError, request } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The exports the page offers, in the order shown: [name, label]. */
export const EXPORTS = [
  ["masks.zip", "PNG masks (ZIP)"],
  ["coco.json", "COCO JSON"],
  ["overlay-outline.mp4", "outline overlay, class colours (MP4)"],
  ["alpha.webm", "sounding object on transparent (WebM, alpha)"],
  ["side-by-side.mp4", "original | overlay (MP4)"],
];
const POLL_MS = 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function size(bytes) {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * GET jobs/<id>/exports/<name> until it is a file (202: being made, Retry-After), as a Blob.
 * @param {AbortSignal} signal stops the wait @returns {Promise<Blob>} @throws ApiError (export_failed, ...)
 */
export async function fetchExport(jobId, name, signal) {
  for (;;) {
    const response = await request(`jobs/${jobId}/exports/${name}`, { signal });
    if (response.status !== 202) return response.blob();
    const wait = Number(response.headers.get("Retry-After")) || POLL_MS / 1000;
    await sleep(Math.min(5, Math.max(0.25, wait)) * 1000);
    if (signal && signal.aborted) throw new ApiError("aborted", "stopped");
  }
}

export class ExportsPanel {
  constructor() {
    this.list = $("exports");
    this.jobId = null;
    this.base = "job";
    this.abort = new AbortController();
    this.urls = [];
    this.rows = new Map();
  }

  /** Show the panel for a job: buttons (enabled once it succeeded), states from GET jobs/<id>/exports. */
  open(job) {
    this.close();
    this.jobId = job.job_id;
    this.listed = null;
    this.base = (job.filename || "job").replace(/\.[^.]*$/, "");
    this.abort = new AbortController();
    this.list.replaceChildren(...EXPORTS.map(([name, label]) => this.row(name, label)));
    $("exports-note").textContent = "";
  }

  close() {
    this.abort.abort();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    this.rows.clear();
    this.jobId = null;
  }

  row(name, label) {
    const li = document.createElement("li");
    li.dataset.export = name;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary make";
    button.textContent = name;
    button.disabled = true;
    button.setAttribute("aria-label", `Make ${name}: ${label}`);
    button.addEventListener("click", () => this.make(name));
    const text = document.createElement("span");
    text.className = "hint";
    text.textContent = label;
    const state = document.createElement("span");
    state.className = "state";
    li.append(button, " ", text, " ", state);
    this.rows.set(name, { li, button, state });
    return li;
  }

  setState(name, text) {
    const row = this.rows.get(name);
    if (row) row.state.textContent = text;
  }

  /** The job's record changed (status poll): exports can be made once it succeeded. */
  async update(record) {
    if (record.job_id !== this.jobId) return;
    const done = record.status === "succeeded" && !record.deleted;
    for (const { button } of this.rows.values()) button.disabled = !done;
    if (!done) {
      $("exports-note").textContent = record.deleted ? "Deleted: nothing left to export."
        : FINISHED_BAD.has(record.status) ? `No exports: the job ${record.status}.` : "Exports can be made once the job has succeeded.";
      return;
    }
    if (this.listed === this.jobId) return;
    this.listed = this.jobId;
    $("exports-note").textContent = "";
    try {
      const body = await (await request(`jobs/${this.jobId}/exports`, { signal: this.abort.signal })).json();
      for (const item of body.exports || []) {
        if (item.status === "ready") this.make(item.name, item.size_bytes);
        else if (item.status === "pending") this.make(item.name);
        else if (item.status === "failed") this.setState(item.name, "failed (try again)");
      }
    } catch (error) {
      if (error.code === "not_found" || error.status === 404 || error.status === 405) {
        for (const { button } of this.rows.values()) button.disabled = true;
        $("exports-note").textContent = "This service makes no exports (it has no jobs/<id>/exports route).";
      }
    }
  }

  /** Ask for one export (POST, idempotent), wait for it, then offer the file. */
  async make(name, knownSize) {
    const row = this.rows.get(name);
    if (!row || row.busy) return;
    row.busy = true;
    row.button.disabled = true;
    const jobId = this.jobId;
    const signal = this.abort.signal;
    this.setState(name, knownSize != null ? "fetching…" : "being made…");
    try {
      if (knownSize == null) await request(`jobs/${jobId}/exports/${name}`, { method: "POST", signal });
      const blob = await fetchExport(jobId, name, signal);
      if (signal.aborted) return;
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      const link = document.createElement("a");
      link.href = url;
      link.download = `${this.base}.${name}`;
      link.className = "download";
      link.textContent = `Save ${name} (${size(blob.size)})`;
      row.state.replaceChildren(link);
      row.li.dataset.ready = "true";
    } catch (error) {
      if (signal.aborted) return;
      row.state.replaceChildren();
      const code = document.createElement("code");
      code.textContent = error.code || "error";
      row.state.append(code, `: ${error.message}`);
      row.button.disabled = false;
    } finally {
      row.busy = false;
    }
  }
}

const FINISHED_BAD = new Set(["failed", "cancelled"]);
