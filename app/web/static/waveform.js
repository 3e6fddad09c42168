// The sound under the frame slider: the peaks of the job's audio (waveform.json, an export the worker makes;
// else decoded here from the user's own file with Web Audio), drawn as bars aligned with the slider, with a
// line at the frame on screen.
import { fetchExport } from "./exports.js";

const $ = (id) => document.getElementById(id);
const PEAKS_PER_S = 50;

/** Peaks (0..1) of decoded audio, `perSecond` a second: the largest |sample| of each slice, all channels. */
export function peaksOf(buffer, perSecond = PEAKS_PER_S) {
  const n = Math.max(1, Math.round(buffer.duration * perSecond));
  const peaks = new Array(n).fill(0);
  for (let c = 0; c < buffer.numberOfChannels; c += 1) {
    const data = buffer.getChannelData(c);
    const step = data.length / n;
    for (let i = 0; i < n; i += 1) {
      let max = peaks[i];
      const end = Math.min(data.length, Math.floor((i + 1) * step));
      for (let j = Math.floor(i * step); j < end; j += 1) max = Math.max(max, Math.abs(data[j]));
      peaks[i] = Math.min(1, max);
    }
  }
  return peaks;
}

export class Waveform {
  constructor() {
    this.canvas = $("waveform");
    this.box = $("sound");
    this.data = null; // {duration_s, peaks}
    this.at = 0; // media time (s) marked
    this.abort = new AbortController();
    window.addEventListener("resize", () => this.draw());
  }

  reset() {
    this.abort.abort();
    this.abort = new AbortController();
    this.data = null;
    this.box.hidden = true;
    delete this.box.dataset.source;
    $("sound-note").textContent = "";
  }

  /** Load the job's waveform once it succeeded; meanwhile (or without one) decode `file` if there is one. */
  async load(jobId, file, succeeded) {
    const signal = this.abort.signal;
    if (succeeded) {
      try {
        const blob = await fetchExport(jobId, "waveform.json", signal);
        const body = JSON.parse(await blob.text());
        if (signal.aborted) return;
        if (Array.isArray(body.peaks) && body.duration_s > 0) {
          this.show({ duration_s: body.duration_s, peaks: body.peaks }, "service");
          return;
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error.code === "no_audio") return this.silent();
      }
    }
    if (file && !this.data) await this.decode(file, signal);
  }

  async decode(file, signal) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    const context = new Context();
    try {
      const buffer = await context.decodeAudioData(await file.arrayBuffer());
      if (!signal.aborted) this.show({ duration_s: buffer.duration, peaks: peaksOf(buffer) }, "browser");
    } catch {
      // a container Web Audio cannot read (AVI, MPEG-TS): no waveform until the service's
    } finally {
      context.close();
    }
  }

  silent() {
    this.box.hidden = false;
    $("sound-note").textContent = "This video has no sound.";
  }

  show(data, source) {
    if (source === "browser" && this.box.dataset.source === "service") return; // the service's came first
    this.data = data;
    this.box.hidden = false;
    this.box.dataset.source = source;
    $("sound-note").textContent = source === "service" ? "" : "Sound decoded by this browser from your file.";
    this.draw();
  }

  /** Mark media time `t` (s). */
  mark(t) {
    this.at = t;
    this.draw();
  }

  draw() {
    if (!this.data || this.box.hidden) return;
    const slider = $("scrubber");
    // the canvas spans exactly the slider's track, so the line is under the slider's thumb
    const left = slider.offsetLeft - this.box.offsetLeft;
    this.canvas.style.marginLeft = `${Math.max(0, left)}px`;
    const cssWidth = Math.max(50, slider.offsetWidth);
    this.canvas.style.width = `${cssWidth}px`;
    const scale = window.devicePixelRatio || 1;
    const width = Math.round(cssWidth * scale);
    const height = Math.round(48 * scale);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const { peaks, duration_s: duration } = this.data;
    const mid = height / 2;
    ctx.fillStyle = "#4a5360";
    for (let x = 0; x < width; x += 1) {
      const i = Math.floor((x / width) * peaks.length);
      const h = Math.max(1, peaks[i] * (height - 2));
      ctx.fillRect(x, mid - h / 2, 1, h);
    }
    const x = Math.round(Math.min(1, Math.max(0, this.at / duration)) * (width - 1));
    ctx.fillStyle = "#b3261e";
    ctx.fillRect(x - scale, 0, 2 * scale, height);
    this.canvas.dataset.marker = String(x / width);
  }
}
