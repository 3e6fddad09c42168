// The live tab: the camera and microphone recorded by MediaRecorder, sent to the /live WebSocket in 100 ms
// chunks, each mask drawn over the live picture as it comes back (protocol: worker/core/live_protocol.py).
import { liveUrl } from "./api.js";
import { clearError, showError } from "./errors.js";
import { MaskLayer } from "./mask_layer.js";

const $ = (id) => document.getElementById(id);
const CHUNK_MS = 100; // MediaRecorder timeslice: what a mask waits for at most before its frame is even sent
// WebM first: the server reads Matroska/WebM and fragmented MP4; Chromium and Firefox record WebM.
const MIME_TYPES = ["video/webm;codecs=vp8,opus", "video/webm;codecs=vp9,opus", "video/webm", "video/mp4"];

let session = null;
let layer = null;

class LiveSession {
  constructor() {
    this.stream = null;
    this.ws = null;
    this.recorder = null;
    this.masks = 0;
    this.lastIndex = -1;
    this.latencies = [];
    this.ended = false;
  }

  async start() {
    setState("opening the camera…");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 25 } }, audio: true });
    } catch (error) {
      throw { code: "camera_unavailable", message: `the camera and microphone could not be opened (${error.name}: ${error.message})` };
    }
    $("live-video").srcObject = this.stream;
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
      setState(`live · ${message.model}`);
      $("live-stop").disabled = false;
    } else if (message.type === "mask") {
      this.masks += 1;
      this.lastIndex = Math.max(this.lastIndex, message.frame_index);
      if (message.latency_ms != null) this.latencies.push(message.latency_ms);
      if (this.latencies.length > 200) this.latencies.shift();
      layer.draw(message);
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
        + `latency p50 ${fmt(message.latency_p50_ms)} ms, `
        + `p95 ${fmt(message.latency_p95_ms)} ms${message.job_id ? `; kept as job ${message.job_id}` : ""}`;
      const late = message.frames_dropped || 0;
      if (message.frames_received && late > 0.2 * message.frames_received) {
        $("live-summary").textContent += ". The server could not keep up with this rate: lower frames/s.";
      }
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
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    else if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
    for (const track of this.stream ? this.stream.getTracks() : []) track.stop();
  }

  release() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    for (const track of this.stream ? this.stream.getTracks() : []) track.stop();
    layer.clear(); // no mask over a picture that is gone
    $("live-video").srcObject = null;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    if (!this.ended) setState("closed");
    session = null;
  }
}

const fmt = (value) => (value == null ? "–" : value.toFixed(0));

function median(values) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function setState(text) { $("live-state").textContent = text; }

async function onStart() {
  clearError();
  $("live-start").disabled = true;
  $("live-summary").textContent = "";
  layer.clear();
  for (const id of ["live-masks", "live-dropped"]) $(id).textContent = "0";
  $("live-latency").textContent = "–";
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
  $("live-start").addEventListener("click", onStart);
  $("live-stop").addEventListener("click", () => session && session.stop());
  $("live-show-mask").addEventListener("change", (e) => layer.setVisible(e.target.checked));
  $("live-opacity").addEventListener("input", (e) => layer.setOpacity(e.target.value));
}
