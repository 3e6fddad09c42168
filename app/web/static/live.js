// The live tab: the camera and microphone recorded by MediaRecorder, sent to the /live WebSocket in 100 ms
// chunks (protocol: worker/core/live_protocol.py). By default the picture is delayed by the measured latency
// so that each mask lies on the frame it was computed from (frames kept as bitmaps by their time since the
// recording started, matched to the masks' pts_s); "newest picture" shows the camera as it is, the newest
// mask over it. After Stop the last picture and its mask stay; a recorded session becomes a job, listed.
import { liveUrl } from "./api.js";
import { clearError, showError } from "./errors.js";
import { addJob } from "./jobs.js";
import { MaskLayer } from "./mask_layer.js";
import { renderJobs } from "./upload.js";

const $ = (id) => document.getElementById(id);
const CHUNK_MS = 100; // MediaRecorder timeslice: what a mask waits for at most before its frame is even sent
// WebM first: the server reads Matroska/WebM and fragmented MP4; Chromium and Firefox record WebM.
const MIME_TYPES = ["video/webm;codecs=vp8,opus", "video/webm;codecs=vp9,opus", "video/webm", "video/mp4"];
const KEEP_S = 4; // camera frames kept for the delayed picture: latencies beyond this show the newest frame
const PICTURE_WIDTH = 640; // the kept frames' width (px): memory, not quality, is the limit

let session = null;
let layer = null;

/** The camera's frames of the last KEEP_S seconds, by time (s) since the recording started. */
class FrameRing {
  constructor() { this.frames = []; }

  push(t, bitmap) {
    this.frames.push({ t, bitmap });
    while (this.frames.length > 2 && t - this.frames[0].t > KEEP_S) this.frames.shift().bitmap.close();
  }

  /** The frame taken nearest to time `t` (s), or null with none kept. */
  nearest(t) {
    let best = null;
    for (const frame of this.frames) if (!best || Math.abs(frame.t - t) < Math.abs(best.t - t)) best = frame;
    return best;
  }

  /** The frame on screen at time `t`: the last one taken at or before it (the first one if none). */
  at(t) {
    let found = null;
    for (const frame of this.frames) {
      if (frame.t <= t + 1e-3) found = frame;
      else break;
    }
    return found || this.frames[0] || null;
  }

  clear() {
    for (const frame of this.frames) frame.bitmap.close();
    this.frames = [];
  }
}

class LiveSession {
  constructor() {
    this.stream = null;
    this.ws = null;
    this.recorder = null;
    this.masks = 0;
    this.lastIndex = -1;
    this.latencies = [];
    this.delays = []; // seconds from a frame's time to its mask's arrival, the last 30
    this.pending = []; // masks not yet shown in the delayed view, by pts_s
    this.ring = new FrameRing();
    this.t0 = null; // performance.now() (ms) when the recorder started: the masks' pts_s count from about here
    this.offset = null; // s from t0 to the recording's first frame (pts_s 0): frame time = pts_s + offset
    this.ended = false;
    this.running = false;
  }

  async start() {
    setState("opening the camera…");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: cameraConstraints(), audio: true });
    } catch (error) {
      throw { code: "camera_unavailable", message: `the camera and microphone could not be opened (${error.name}: ${error.message})` };
    }
    listCameras();
    const video = $("live-video");
    video.srcObject = this.stream;
    this.running = true;
    this.capture();
    this.loop();
    setState("connecting…");
    this.ws = new WebSocket(liveUrl());
    this.ws.onopen = () => {
      const fps = Number($("live-fps").value);
      this.ws.send(JSON.stringify({ type: "start", record: $("live-record").checked, ...(fps > 0 ? { fps } : {}) }));
    };
    this.ws.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.ws.onclose = (event) => {
      if (!this.ended) {
        showError({ code: event.code === 1013 ? "too_many_sessions" : "connection_closed",
          message: `the live connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""})` });
      }
      this.release();
    };
  }

  /** Keep every camera frame the browser presents, by its time since the recording started. */
  capture() {
    const video = $("live-video");
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
    const onFrame = (now, metadata) => {
      if (!this.running) return;
      if (this.t0 !== null && video.videoWidth) {
        const taken = metadata.captureTime || now; // the camera's own timestamp where the browser gives it
        const t = (taken - this.t0) / 1000;
        const width = Math.min(PICTURE_WIDTH, video.videoWidth);
        const height = Math.round((width * video.videoHeight) / video.videoWidth);
        // the recording's first frame (pts 0 in what the server decodes) is the first one taken after start()
        if (this.offset === null && t >= 0) this.offset = t;
        createImageBitmap(video, { resizeWidth: width, resizeHeight: height })
          .then((bitmap) => { if (this.running) this.ring.push(t, bitmap); else bitmap.close(); })
          .catch(() => { /* a frame gone before it was copied */ });
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  /** A mask with `at`: the time of the kept frame it belongs to, the one taken nearest to its pts_s (the
   * estimate of where pts 0 is can be off by part of a frame: snapping puts the mask on its own frame). */
  placed(message) {
    const want = message.pts_s + (this.offset || 0);
    const frame = this.ring.nearest(want);
    return { ...message, at: frame && Math.abs(frame.t - want) < 0.1 ? frame.t : want };
  }

  /** The delay (s) the picture is shown with: the median of the recent frame-to-mask delays. */
  delay() { return this.delays.length ? median(this.delays) : null; }

  /** Each animation frame, in the synced view: the frame of (now - delay) and the mask of that frame. */
  loop() {
    const tick = () => {
      if (!this.running) return;
      if (!newest() && this.t0 !== null) this.showDelayed((performance.now() - this.t0) / 1000);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  showDelayed(now) {
    const delay = this.delay();
    if (delay === null) return; // no mask yet: nothing to sync to (the camera's picture is shown as it is)
    const t = now - delay;
    const frame = this.ring.at(t);
    if (frame && frame !== this.shownFrame) {
      drawPicture(frame.bitmap);
      // the frame's time in the recording (s): what the pts_s of its mask is
      $("live-picture").dataset.pts = (frame.t - (this.offset || 0)).toFixed(3);
      this.shownFrame = frame;
    }
    // the newest mask whose frame is on screen now; older ones are done with
    // the newest mask of a frame at or before the one on screen (its own frame shows it first)
    const shown = this.shownFrame ? this.shownFrame.t : t;
    let mask = null;
    while (this.pending.length && this.pending[0].at <= shown + 1e-6) mask = this.pending.shift();
    if (mask) layer.draw(mask);
    $("live-delay").textContent = `${(delay * 1000).toFixed(0)} ms`;
  }

  onMessage(message) {
    if (message.type === "started") {
      const mimeType = MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
      this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : {});
      this.recorder.ondataavailable = (e) => {
        if (e.data.size && this.ws.readyState === WebSocket.OPEN) this.ws.send(e.data);
      };
      this.recorder.onstop = () => { // after the last chunk: the end goes behind it
        if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
      };
      this.recorder.start(CHUNK_MS);
      this.t0 = performance.now();
      setState(`live · ${message.model}`);
      $("live-stop").disabled = false;
      setView();
    } else if (message.type === "mask") {
      this.masks += 1;
      this.lastIndex = Math.max(this.lastIndex, message.frame_index);
      if (message.latency_ms != null) this.latencies.push(message.latency_ms);
      if (this.latencies.length > 200) this.latencies.shift();
      if (this.t0 !== null && typeof message.pts_s === "number") {
        this.delays.push((performance.now() - this.t0) / 1000 - (message.pts_s + (this.offset || 0)));
        if (this.delays.length > 30) this.delays.shift();
      }
      if (newest() || typeof message.pts_s !== "number") layer.draw(message);
      else this.pending.push(this.placed(message));
      if (this.pending.length > 200) this.pending.shift();
      $("live-masks").textContent = String(this.masks);
      $("live-dropped").textContent = String(this.lastIndex + 1 - this.masks); // frames with no mask: late or over the fps cap
      if (message.latency_ms != null) { // null for a frame whose arrival was not timed (the stream's last)
        $("live-latency").textContent = `${message.latency_ms.toFixed(0)} / ${median(this.latencies).toFixed(0)} ms`;
      }
    } else if (message.type === "end") {
      this.ended = true;
      const skipped = message.frames_skipped_by_rate || 0; // over the fps cap asked for: not the server's doing
      $("live-dropped").textContent = String(message.frames_dropped + skipped);
      $("live-summary").textContent = `${message.status}: ${message.frames_processed} of ${message.frames_received} `
        + `frames segmented (${message.frames_dropped} dropped late, ${skipped} skipped by the fps cap), `
        + `latency p50 ${fmt(message.latency_p50_ms)} ms, p95 ${fmt(message.latency_p95_ms)} ms`;
      const late = message.frames_dropped || 0;
      if (message.frames_received && late > 0.2 * message.frames_received) {
        $("live-summary").textContent += ". The server could not keep up with this rate: lower frames/s.";
      }
      if (message.job_id) keepAsJob(message.job_id);
      if (message.error) showError(message.error);
      setState("ended");
      this.ws.close(1000);
    } else if (message.type === "error") {
      this.ended = true;
      showError(message);
      setState("refused");
    }
  }

  stop() {
    setState("ending…");
    $("live-stop").disabled = true;
    this.freeze();
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    else if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
    for (const track of this.stream ? this.stream.getTracks() : []) track.stop();
  }

  /** The picture stops where it is: the frame on screen stays (with the mask drawn for it), not a black box. */
  freeze() {
    const video = $("live-video");
    if (newest() && video.videoWidth) drawPicture(video); // the camera's last frame, before it is stopped
    showPicture(true);
    this.running = false;
  }

  release() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    for (const track of this.stream ? this.stream.getTracks() : []) track.stop();
    if (this.running) this.freeze();
    this.ring.clear();
    this.shownFrame = null;
    $("live-video").srcObject = null;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    if (!this.ended) setState("closed");
    session = null;
  }
}

const fmt = (value) => (value == null ? "–" : value.toFixed(0));
const newest = () => $("live-newest").checked;

function median(values) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function setState(text) { $("live-state").textContent = text; }

/** Draw a picture (a kept frame, or the video element itself) on the picture canvas, at its own size. */
function drawPicture(source) {
  const canvas = $("live-picture");
  const width = source.videoWidth || source.width;
  const height = source.videoHeight || source.height;
  if (!width || !height) return;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
    $("live-stage").style.setProperty("--ar", String(width / height));
  }
  canvas.getContext("2d").drawImage(source, 0, 0, width, height);
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
}

/** The picture canvas (delayed frames, or the frozen last one) in front of the camera's own video, or not. */
function showPicture(on) {
  $("live-picture").hidden = !on;
  $("live-stage").dataset.view = on ? "picture" : "camera";
}

/** The view the toggle asks for: the delayed picture (synced) or the camera itself (newest). */
function setView() {
  const live = session && session.running;
  showPicture(live ? !newest() : !$("live-picture").hidden);
  if (live && newest()) { // flush the masks held for the delayed picture: the newest goes on now
    const last = session.pending[session.pending.length - 1];
    session.pending = [];
    if (last) layer.draw(last);
    $("live-delay").textContent = "0 ms (newest)";
  }
}

/** The camera the picker names: a facing mode (front/back: phones) or a device id (computers with several). */
function cameraConstraints() {
  const choice = $("live-camera").value;
  const size = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 25 } };
  if (choice.startsWith("device:")) return { ...size, deviceId: { exact: choice.slice(7) } };
  return { ...size, facingMode: { ideal: choice } };
}

/** After the first permission the cameras have names: add each to the picker (front/back stay first). */
async function listCameras() {
  if (!navigator.mediaDevices.enumerateDevices) return;
  const select = $("live-camera");
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  for (const option of [...select.options]) if (option.value.startsWith("device:")) option.remove();
  devices.forEach((device, i) => {
    if (!device.deviceId) return;
    const option = document.createElement("option");
    option.value = `device:${device.deviceId}`;
    option.textContent = device.label || `camera ${i + 1}`;
    select.append(option);
  });
}

/** A recorded session is a job: listed with the uploads, and a link that opens it (overlay, exports...). */
function keepAsJob(jobId) {
  const when = new Date();
  addJob({ job_id: jobId, filename: `live recording ${when.toISOString().slice(0, 19).replace("T", " ")}`,
    overlay: false, created: when.getTime(), source: "live" });
  renderJobs();
  const line = $("live-job");
  const link = document.createElement("a");
  link.href = `#job=${encodeURIComponent(jobId)}`;
  link.id = "live-job-link";
  link.textContent = "open the recording";
  line.replaceChildren(`Kept as job ${jobId}: `, link, " (masks, overlay and exports; also in the jobs list).");
  line.hidden = false;
}

async function onStart() {
  clearError();
  $("live-start").disabled = true;
  $("live-summary").textContent = "";
  $("live-job").hidden = true;
  layer.clear();
  for (const id of ["live-masks", "live-dropped"]) $(id).textContent = "0";
  $("live-latency").textContent = "–";
  $("live-delay").textContent = "–";
  const picture = $("live-picture"); // the last session's frozen frame goes
  picture.getContext("2d").clearRect(0, 0, picture.width, picture.height);
  delete picture.dataset.pts;
  showPicture(false);
  session = new LiveSession();
  try {
    await session.start();
  } catch (error) {
    showError(error);
    session.release();
  }
}

/** Stop the camera when the tab is left (a hidden page keeps recording otherwise). */
export function leaveLive() { if (session) session.stop(); }

export function initLive() {
  layer = new MaskLayer($("live-canvas"));
  layer.setOpacity($("live-opacity").value);
  showPicture(false);
  $("live-video").addEventListener("loadedmetadata", (e) => {
    const video = e.target;
    if (video.videoWidth) $("live-stage").style.setProperty("--ar", String(video.videoWidth / video.videoHeight));
  });
  $("live-start").addEventListener("click", onStart);
  $("live-stop").addEventListener("click", () => session && session.stop());
  $("live-show-mask").addEventListener("change", (e) => layer.setVisible(e.target.checked));
  $("live-opacity").addEventListener("input", (e) => layer.setOpacity(e.target.value));
  $("live-newest").addEventListener("change", setView);
}
