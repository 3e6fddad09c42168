// The upload tab: choose or drop a video, upload it, follow the job, then watch the original with the masks
// drawn over it, frame-accurate (each mask is matched to the video frame on screen by its pts_s).
import { ApiError, download, getJson, request, streamMasks, submitVideo } from "./api.js";
import { clearError, showError } from "./errors.js";
import { addJob, forgetJob, listJobs } from "./jobs.js";
import { MaskLayer } from "./mask_layer.js";

const $ = (id) => document.getElementById(id);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 500;

const files = new Map(); // job_id -> the File it was made from (this page load only: files are not stored)

/** The job on screen: its masks by frame_index, the stream and the status poll that fill them. */
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
        if (!this.stopped) showError(error);
        return;
      }
      showProgress(this.record);
      refreshRow(this.record);
      if (FINISHED.has(this.record.status)) {
        if (this.record.status === "failed" && this.record.error) showError(this.record.error);
        const kept = !this.record.deleted;
        $("download-overlay").hidden = !(kept && this.record.status === "succeeded" && this.record.urls.overlay);
        $("download-masks").hidden = !kept;
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
        if (error instanceof ApiError && error.code !== "network_error") return showError(error);
      }
      fromFrame = this.masks.length; // cut without its end line: resume after the last frame received
      await sleep(1000);
    }
  }

  add(record) {
    this.masks[record.frame_index] = record;
    if (this.t0 === null) this.t0 = this.masks[0] ? this.masks[0].pts_s : record.pts_s;
    const scrubber = $("scrubber");
    scrubber.max = String(this.masks.length - 1);
    if (this.layer.record === null || record.frame_index === this.frameAt(currentTime())) drawFrameAt(currentTime());
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const currentTime = () => $("video").currentTime;

function showProgress(record) {
  const { frames_done: done, frames_total: total } = record.progress;
  const bar = $("job-progress");
  bar.max = Math.max(1, total || done || 1);
  bar.value = done;
  const frames = total ? `${done} / ${total} frames` : `${done} frames`;
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
}

function setFrameLabel(i, t) {
  $("frame-label").textContent = `${i + 1} / ${view.masks.length} · ${t.toFixed(2)} s`;
}

/** Redraw on every frame the browser presents (its exact media time), not on the coarse timeupdate. */
function watchFrames(video) {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (_now, metadata) => {
      drawFrameAt(metadata.mediaTime);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    video.addEventListener("timeupdate", () => drawFrameAt(video.currentTime));
  }
  video.addEventListener("seeked", () => drawFrameAt(video.currentTime));
}

function setVideoFile(file) {
  const video = $("video");
  if (video.src) URL.revokeObjectURL(video.src);
  video.src = file ? URL.createObjectURL(file) : "";
  $("need-file").hidden = Boolean(file);
  $("upload-stage").hidden = !file;
}

/** Show a job: its video (when this page has the file), its masks as they arrive, its state. */
export function openJob(job) {
  if (view) view.stop();
  clearError();
  layer.clear();
  view = new JobView(job, layer);
  $("result").hidden = false;
  $("scrubber").max = "0";
  $("scrubber").value = "0";
  $("frame-label").textContent = "–";
  $("download-overlay").hidden = true;
  $("download-masks").hidden = false;
  setVideoFile(files.get(job.job_id) || null);
  view.follow();
}

async function onSubmit(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  clearError();
  $("submit").disabled = true;
  $("upload-progress").value = 0;
  $("job-status").textContent = "uploading…";
  try {
    const body = await submitVideo(file, { overlay: $("want-overlay").checked }, (sent, total) => {
      $("upload-progress").max = Math.max(1, total);
      $("upload-progress").value = sent;
    });
    const job = { job_id: body.job_id, filename: file.name, overlay: $("want-overlay").checked, created: Date.now() };
    files.set(job.job_id, file);
    addJob(job);
    renderJobs();
    openJob(job);
  } catch (error) {
    $("job-status").textContent = "";
    showError(error);
  } finally {
    $("submit").disabled = !$("file").files.length;
  }
}

// ---------------------------------------------------------------------------------------- the job list
function row(jobId) { return document.querySelector(`#jobs tr[data-job="${CSS.escape(jobId)}"]`); }

function stateText(record) {
  if (record.deleted) return `${record.status}, deleted`;
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

export function renderJobs() {
  const tbody = document.querySelector("#jobs tbody");
  const jobs = listJobs();
  $("no-jobs").hidden = jobs.length > 0;
  tbody.replaceChildren(...jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.job = job.job_id;
    const name = document.createElement("td");
    name.className = "file";
    name.textContent = job.filename;
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
      state.textContent = error.code === "not_found" ? "expired" : error.code;
    });
    return tr;
  }));
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
  watchFrames($("video"));
  const input = $("file");
  const chosen = () => {
    $("submit").disabled = !input.files.length;
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
      if (video.src) video.currentTime = view.timeOf(i);
      else drawFrameAt(view.masks[i].pts_s - view.t0); // no video (file not chosen again): the masks alone
    }
  });
  $("refile").addEventListener("change", (e) => {
    if (view && e.target.files.length) {
      files.set(view.job.job_id, e.target.files[0]);
      setVideoFile(e.target.files[0]);
    }
  });
  $("download-masks").addEventListener("click", () => view && download(`jobs/${view.job.job_id}/masks`,
    `${view.job.filename.replace(/\.[^.]*$/, "")}.masks.ndjson`).catch(showError));
  $("download-overlay").addEventListener("click", () => view && download(`jobs/${view.job.job_id}/overlay.mp4`,
    `${view.job.filename.replace(/\.[^.]*$/, "")}.overlay.mp4`).catch(showError));
  renderJobs();
}
