// The upload tab: choose or drop a video, upload it, follow the job, then watch the original (or the
// service's browser-safe preview of it) with the masks drawn over it, frame-accurate (each mask is matched
// to the video frame on screen by its pts_s), the sound under the frame slider, and the exports.
import { ApiError, download, getJson, request, streamMasks, submitVideo } from "./api.js";
import { clearError, showError } from "./errors.js";
import { ExportsPanel } from "./exports.js";
import { addJob, forgetJob, listJobs } from "./jobs.js";
import { Legend } from "./legend.js";
import { MaskLayer } from "./mask_layer.js";
import { currentModel } from "./model_card.js";
import { Player } from "./player.js";
import { Waveform } from "./waveform.js";

const $ = (id) => document.getElementById(id);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 500;

const files = new Map(); // job_id -> the File it was made from (this page load only: files are not stored)

/** The job on screen: its mask lines in frame order (dense: a live recording's stream skips the frames it
 * did not segment, so positions, not frame_index, index them), the stream and the status poll that fill them. */
class JobView {
  constructor(job, layer) {
    this.job = job;
    this.layer = layer;
    this.masks = [];
    this.t0 = null; // pts_s of frame 0: the browser's media time starts at 0
    this.record = null;
    this.stopped = false;
    this.abort = new AbortController();
  }

  stop() {
    this.stopped = true;
    this.abort.abort();
  }

  async follow() {
    await Promise.all([this.poll(), this.stream()]);
  }

  async poll() {
    while (!this.stopped) {
      try {
        this.record = await getJson(`jobs/${this.job.job_id}`);
      } catch (error) {
        if (this.stopped) return;
        if (error.code === "job_deleted") return this.gone();
        showError(error);
        return;
      }
      showProgress(this.record);
      refreshRow(this.record);
      player.update(this.record);
      exportsPanel.update(this.record);
      if (FINISHED.has(this.record.status)) {
        if (this.record.status === "succeeded" && !this.record.deleted) {
          waveform.load(this.job.job_id, files.get(this.job.job_id) || null, true);
        }
        if (this.record.status === "failed" && this.record.error) showError(this.record.error);
        const kept = !this.record.deleted;
        $("download-overlay").hidden = !(kept && this.record.status === "succeeded" && this.record.urls.overlay);
        $("download-masks").hidden = !kept;
        // the preview may be written after the masks: ask again a few times while one is awaited
        for (let i = 0; i < 30 && player.previewWanted && player.source !== "preview" && !this.stopped; i += 1) {
          await sleep(1000);
          try { player.update(await getJson(`jobs/${this.job.job_id}`)); } catch { return; }
        }
        return;
      }
      await sleep(POLL_MS);
    }
  }

  async stream() {
    let fromFrame = 0;
    while (!this.stopped) {
      try {
        const end = await streamMasks(this.job.job_id, (record) => this.add(record),
          { fromFrame, signal: this.abort.signal });
        if (end) return;
      } catch (error) {
        if (this.stopped) return;
        if (error.code === "job_deleted") return this.gone();
        if (error instanceof ApiError && error.code !== "network_error") return showError(error);
      }
      const last = this.masks[this.masks.length - 1]; // cut without its end line: resume after the last line
      fromFrame = last ? last.frame_index + 1 : 0;
      await sleep(1000);
    }
  }

  /** The job was deleted (410 job_deleted): say so, offer nothing of it. */
  gone() {
    this.stop();
    const was = this.record && !FINISHED.has(this.record.status) ? "cancelled and " : "";
    $("job-status").textContent = `${was}deleted: its masks and files are gone`;
    $("download-masks").hidden = true;
    $("download-overlay").hidden = true;
    exportsPanel.update({ job_id: this.job.job_id, status: "deleted", deleted: true });
  }

  add(record) {
    const last = this.masks[this.masks.length - 1];
    if (last && record.frame_index <= last.frame_index) return; // already here (a resumed stream)
    this.masks.push(record);
    if (record.confidence && !this.hasConfidence) {
      this.hasConfidence = true;
      const option = document.querySelector('#mask-style option[value="confidence"]');
      option.disabled = false;
      option.textContent = "confidence heat map";
    }
    if (!player.job || !player.job.video) player.fit(record.size[1] / record.size[0]);
    if (this.t0 === null) this.t0 = this.masks[0] ? this.masks[0].pts_s : record.pts_s;
    const scrubber = $("scrubber");
    scrubber.max = String(this.masks.length - 1);
    if (this.layer.record === null || this.masks.length - 1 === this.frameAt(currentTime())) drawFrameAt(currentTime());
    else setFrameLabel(Number(scrubber.value), currentTime()); // the count grows while the job runs
  }

  /** The frame on screen at media time `t` (s): the last mask whose pts (from frame 0's) is <= t. */
  frameAt(t) {
    const masks = this.masks;
    if (!masks.length || this.t0 === null) return -1;
    let lo = 0;
    let hi = masks.length - 1;
    const eps = 1e-4; // pts_s is rounded to 1 µs... and media times to whatever the browser keeps
    if (!masks[0] || masks[0].pts_s - this.t0 > t + eps) return 0;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (masks[mid] && masks[mid].pts_s - this.t0 <= t + eps) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Media time (s) at which frame `i` is on screen: a little after its start, never into the next frame. */
  timeOf(i) {
    const here = this.masks[i].pts_s - this.t0;
    const next = this.masks[i + 1] ? this.masks[i + 1].pts_s - this.t0 : here + 0.04;
    return here + Math.min(0.25 * (next - here), 0.01);
  }
}

let view = null;
let layer = null;
let player = null;
let legend = null;
let waveform = null;
let exportsPanel = null;
let busy = false; // an upload is under way: the form sends nothing more until it is answered

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** The media time of the frame on screen, counted from the first frame (a file whose first frame is not
 * at 0 s in the browser's timeline is shifted by it). */
const currentTime = () => $("video").currentTime - player.base;

function showProgress(record) {
  const { frames_done: done, frames_total: total } = record.progress;
  const bar = $("job-progress");
  bar.max = Math.max(1, total || done || 1);
  bar.value = done;
  const eta = record.eta_s != null && record.status === "running" ? ` · about ${Math.ceil(record.eta_s)} s left` : "";
  const frames = (total ? `${done} / ${total} frames` : `${done} frames`) + eta;
  $("job-status").textContent = record.deleted ? `${record.status} · deleted: its masks and files are gone`
    : `${record.status} · ${frames}`;
}

function drawFrameAt(t) {
  if (!view) return;
  const i = view.frameAt(t);
  if (i < 0 || !view.masks[i]) return;
  layer.draw(view.masks[i]);
  $("scrubber").value = String(i);
  setFrameLabel(i, t);
  waveform.mark(view.masks[i].pts_s - view.t0);
}

function setFrameLabel(i, t) {
  $("frame-label").textContent = `${i + 1} / ${view.masks.length} · ${t.toFixed(2)} s`;
}

/** Redraw on every frame the browser presents (its exact media time), not on the coarse timeupdate. */
function watchFrames(video) {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (_now, metadata) => {
      drawFrameAt(metadata.mediaTime - player.base);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    video.addEventListener("timeupdate", () => drawFrameAt(currentTime()));
  }
  video.addEventListener("seeked", () => drawFrameAt(currentTime()));
}

/** Show a job: its video (the file, or the service's preview), its masks as they arrive, its state. */
export function openJob(job) {
  if (view) view.stop();
  clearError();
  layer.clear();
  legend.reset();
  waveform.reset();
  view = new JobView(job, layer);
  $("result").hidden = false;
  $("scrubber").max = "0";
  $("scrubber").value = "0";
  $("frame-label").textContent = "–";
  $("download-overlay").hidden = true;
  $("download-masks").hidden = false;
  $("need-file").hidden = true;
  const option = document.querySelector('#mask-style option[value="confidence"]');
  option.disabled = true;
  option.textContent = "confidence (not in this stream)";
  if ($("mask-style").value === "confidence") { $("mask-style").value = "fill"; applyStyle(); }
  const file = files.get(job.job_id) || null;
  exportsPanel.open(job);
  document.body.dataset.job = job.job_id;
  // the record first (a preview, the display aspect ratio), then the masks
  getJson(`jobs/${job.job_id}`).then((record) => {
    if (view && view.job === job) player.load(file, record);
  }).catch(() => { if (view && view.job === job) player.load(file, null); });
  if (file) waveform.load(job.job_id, file, false); // the browser's own decoding, until the service's
  view.follow();
  $("result").scrollIntoView({ block: "start" });
}

function applyStyle() {
  const style = $("mask-style").value;
  layer.setStyle({ fill: style !== "outline", outline: style === "both" || style === "outline",
    confidence: style === "confidence" });
}

/** The form's options as the API's form fields (an empty number field: absent, the service's default). */
function formOptions() {
  const options = { overlay: $("want-overlay").checked };
  for (const name of ["threshold", "fps"]) {
    const value = $(name).value.trim();
    if (value) options[name] = value;
  }
  if ($("want-confidence").checked) options.confidence = true;
  return options;
}

async function onSubmit(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file || busy) return; // a second click, Enter or submit while the first upload runs sends nothing
  for (const name of ["threshold", "fps"]) {
    if (!$(name).checkValidity()) {
      showError({ code: "invalid_request", message: `${name}: ${$(name).validationMessage}` });
      $(name).focus();
      return;
    }
  }
  busy = true;
  clearError();
  $("submit").disabled = true;
  $("submit").textContent = "Uploading…";
  $("upload-progress").value = 0;
  $("job-status").textContent = "uploading…";
  try {
    const options = formOptions();
    const body = await submitVideo(file, options, (sent, total) => {
      $("upload-progress").max = Math.max(1, total);
      $("upload-progress").value = sent;
    });
    const job = { job_id: body.job_id, filename: file.name, overlay: options.overlay, created: Date.now() };
    files.set(job.job_id, file);
    addJob(job);
    renderJobs();
    openJob(job);
  } catch (error) {
    $("job-status").textContent = "";
    showError(error);
  } finally {
    busy = false;
    $("submit").textContent = "Segment";
    $("submit").disabled = !$("file").files.length;
  }
}

// ---------------------------------------------------------------------------------------- the job list
function row(jobId) { return document.querySelector(`#jobs tr[data-job="${CSS.escape(jobId)}"]`); }

function stateText(record) {
  // a running job deleted is stopped by its worker within a batch; after that every route of it answers 410
  if (record.deleted) return FINISHED.has(record.status) ? `${record.status}, deleted` : "cancelled, deleted";
  return record.error ? `${record.status} (${record.error.code})` : record.status;
}

function refreshRow(record) {
  const tr = row(record.job_id);
  if (!tr) return;
  tr.querySelector(".state").textContent = stateText(record);
  const { frames_done: done, frames_total: total } = record.progress;
  tr.querySelector(".frames").textContent = total ? `${done} / ${total}` : String(done);
  const cancel = tr.querySelector(".cancel");
  cancel.textContent = FINISHED.has(record.status) ? "Delete" : "Cancel";
  cancel.hidden = record.deleted; // nothing left to delete
  cancel.setAttribute("aria-label", `${cancel.textContent} ${tr.querySelector("td").textContent}`);
}

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `secondary ${className}`;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

/** A job the API listed but this browser did not submit (another tab, a live recording): its row's entry. */
function fromApi(record) {
  const upload = record.upload || {};
  const live = record.source === "live" || record.kind === "live";
  const when = record.created_at ? new Date(record.created_at * 1000) : null;
  const stamp = when ? when.toISOString().slice(0, 16).replace("T", " ") : "";
  return {
    job_id: record.job_id,
    // a live recording has no file name: the kind, when, and the id's start tell the rows apart
    filename: upload.filename || record.filename
      || `${live ? "live recording" : "upload"} ${stamp} · ${record.job_id.slice(0, 8)}`.replace("  ", " "),
    overlay: Boolean(record.options && record.options.overlay),
    created: when ? when.getTime() : 0,
    source: live ? "live" : record.source || "upload",
  };
}

let listing = 0;

/** The jobs table: this browser's jobs (localStorage) and, where the service lists them (GET jobs), the key's. */
export function renderJobs() {
  const local = listJobs();
  fill(local);
  const generation = ++listing;
  getJson("jobs?limit=50").then((body) => {
    if (generation !== listing || !body || !Array.isArray(body.jobs)) return;
    const known = new Set(local.map((job) => job.job_id));
    const extra = body.jobs.filter((record) => record && !known.has(record.job_id)).map(fromApi);
    if (extra.length) fill([...local, ...extra].sort((a, b) => (b.created || 0) - (a.created || 0)));
  }).catch(() => { /* a service without the listing: this browser's own jobs only */ });
}

function fill(jobs) {
  const tbody = document.querySelector("#jobs tbody");
  $("no-jobs").hidden = jobs.length > 0;
  tbody.replaceChildren(...jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.job = job.job_id;
    if (job.source) tr.dataset.source = job.source;
    const name = document.createElement("td");
    name.className = "file";
    const link = document.createElement("a");
    link.href = `#job=${encodeURIComponent(job.job_id)}`;
    link.textContent = job.filename;
    name.append(link);
    const state = document.createElement("td");
    state.className = "state";
    state.textContent = "…";
    const frames = document.createElement("td");
    frames.className = "frames";
    const actions = document.createElement("td");
    actions.append(
      button("View", "view", () => openJob(job)),
      button("Cancel", "cancel", () => cancelJob(job)),
      button("Forget", "forget", () => { forgetJob(job.job_id); renderJobs(); }),
    );
    for (const b of actions.querySelectorAll("button")) b.setAttribute("aria-label", `${b.textContent} ${job.filename}`);
    tr.append(name, state, frames, actions);
    getJson(`jobs/${job.job_id}`).then(refreshRow).catch((error) => {
      state.textContent = { not_found: "expired", job_deleted: "deleted" }[error.code] || error.code;
      if (error.code === "job_deleted") tr.querySelector(".cancel").hidden = true;
    });
    return tr;
  }));
}

/** Open a job by id (the #job=<id> link of a row or of a live recording): its entry from the lists, or a bare one. */
export function openJobById(jobId) {
  const job = listJobs().find((j) => j.job_id === jobId) || { job_id: jobId, filename: jobId.slice(0, 8), created: 0 };
  if (view && view.job.job_id === jobId) return;
  getJson(`jobs/${jobId}`).then((record) => {
    const named = job.filename === jobId.slice(0, 8) ? { ...job, ...fromApi(record) } : job;
    openJob(named);
  }).catch(showError);
}

async function cancelJob(job) {
  clearError();
  try {
    const record = await (await request(`jobs/${job.job_id}`, { method: "DELETE" })).json();
    refreshRow(record);
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------------------------------------- wiring
export function initUpload() {
  layer = new MaskLayer($("mask-canvas"));
  layer.setOpacity($("opacity").value);
  player = new Player();
  legend = new Legend($("legend"));
  waveform = new Waveform();
  exportsPanel = new ExportsPanel();
  layer.onDrawn = (record, classes) => legend.update(record, classes);
  currentModel().then((model) => legend.setNames(model ? model.class_names : []));
  $("mask-style").addEventListener("change", applyStyle);
  watchFrames($("video"));
  const input = $("file");
  const chosen = () => {
    $("submit").disabled = busy || !input.files.length;
    $("file-name").textContent = input.files.length ? input.files[0].name : "MP4, WebM, MOV, MKV… with sound";
  };
  input.addEventListener("change", chosen);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      chosen();
    }
  });
  $("upload-form").addEventListener("submit", onSubmit);
  $("show-mask").addEventListener("change", (e) => layer.setVisible(e.target.checked));
  $("opacity").addEventListener("input", (e) => layer.setOpacity(e.target.value));
  $("scrubber").addEventListener("input", (e) => {
    if (!view || !view.masks.length) return;
    const video = $("video");
    video.pause();
    const i = Number(e.target.value);
    if (view.masks[i]) {
      if (player.source !== "none") video.currentTime = player.base + view.timeOf(i);
      else drawFrameAt(view.masks[i].pts_s - view.t0); // no video (file not chosen again): the masks alone
    }
  });
  $("refile").addEventListener("change", (e) => {
    if (view && e.target.files.length) {
      files.set(view.job.job_id, e.target.files[0]);
      player.load(e.target.files[0], player.job);
      waveform.load(view.job.job_id, e.target.files[0], false);
    }
  });
  $("download-masks").addEventListener("click", () => view && download(`jobs/${view.job.job_id}/masks`,
    `${view.job.filename.replace(/\.[^.]*$/, "")}.masks.ndjson`).catch(showError));
  $("download-overlay").addEventListener("click", () => view && download(`jobs/${view.job.job_id}/overlay.mp4`,
    `${view.job.filename.replace(/\.[^.]*$/, "")}.overlay.mp4`).catch(showError));
  renderJobs();
}
