// A canvas laid over a <video>: draws one decoded mask at the mask's own resolution (CSS stretches the canvas
// over the video box, which is given the video's display aspect ratio), each class in its colour, filled at
// the chosen opacity and/or outlined; or, where the stream carries it, the model's confidence as a heat map.
import { decodeLabels } from "./rle.js";

const TINT = [255, 0, 200]; // magenta: rare in natural video, so the tint is easy to see (and to measure)

/** A colour per class id (AVSS's 71 classes): hues a golden angle apart, as the overlay video's palette. */
export function classColour(id) {
  if (id <= 1) return TINT;
  const h = (id * 0.618033988749895) % 1;
  const f = (n) => { const k = (n + h * 6) % 6; return Math.round(255 * (1 - 0.85 * Math.max(0, Math.min(k, 4 - k, 1)))); };
  return [f(5), f(3), f(1)];
}

/** CSS colour of a class id. */
export const cssColour = (id) => `rgb(${classColour(id).join(", ")})`;

/**
 * The confidence map of a record (`confidence: {size: [h, w], data: base64 of uint8 0..255, row-major}`), or
 * null when the line carries none. @returns {{h: number, w: number, data: Uint8Array} | null}
 */
export function decodeConfidence(record) {
  const c = record && record.confidence;
  if (!c || typeof c.data !== "string" || !Array.isArray(c.size)) return null;
  const raw = atob(c.data);
  const data = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) data[i] = raw.charCodeAt(i);
  const [h, w] = c.size;
  return data.length === h * w ? { h, w, data } : null;
}

/** A perceptual-ish ramp for 0..255: dark blue -> cyan -> yellow -> red (a heat map's usual order). */
function heat(v) {
  const t = v / 255;
  const r = Math.round(255 * Math.min(1, Math.max(0, 2 * t - 0.4)));
  const g = Math.round(255 * Math.min(1, Math.max(0, t < 0.7 ? 1.6 * t : 2.8 - 2.6 * t)));
  const b = Math.round(255 * Math.min(1, Math.max(0, 0.9 - 1.4 * t)));
  return [r, g, b];
}

export class MaskLayer {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.opacity = 0.55;
    this.visible = true;
    this.fill = true; // the region tinted at `opacity`
    this.outline = false; // its border drawn opaque
    this.confidence = false; // the confidence heat map instead of the mask (when the line carries one)
    this.record = null; // the record drawn now
    this.cache = new Map(); // frame_index -> decoded mask (the last few, for scrubbing back and forth)
    this.onDrawn = null; // (record, classIds: Set<number>) => void, after each draw
  }

  setOpacity(value) { this.opacity = Number(value); this.redraw(); }

  setVisible(on) { this.visible = on; this.canvas.style.visibility = on ? "visible" : "hidden"; }

  /** @param {{fill?: boolean, outline?: boolean, confidence?: boolean}} style */
  setStyle(style) { Object.assign(this, style); this.redraw(); }

  clear() {
    this.record = null;
    this.cache.clear();
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    delete this.canvas.dataset.frame;
    delete this.canvas.dataset.classes;
  }

  /** Draw the mask of `record` (a mask line of the API: frame_index, size [h, w], counts, segments?). */
  draw(record) {
    if (!record) return;
    this.record = record;
    this.redraw();
  }

  labels(record) {
    let mask = this.cache.get(record.frame_index);
    if (!mask) {
      mask = decodeLabels(record); // 0/1, or class ids for a semantic (AVSS) record
      this.cache.set(record.frame_index, mask);
      if (this.cache.size > 64) this.cache.delete(this.cache.keys().next().value);
    }
    return mask;
  }

  redraw() {
    const record = this.record;
    if (!record) return;
    const [h, w] = record.size;
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    const confidence = this.confidence ? decodeConfidence(record) : null;
    const classes = new Set();
    if (confidence) this.drawConfidence(confidence, w, h);
    else this.drawMask(this.labels(record), w, h, classes);
    this.canvas.dataset.frame = String(record.frame_index); // which frame is on screen (tests wait for it)
    if (typeof record.pts_s === "number") this.canvas.dataset.pts = String(record.pts_s);
    this.canvas.dataset.view = confidence ? "confidence" : "mask";
    this.canvas.dataset.classes = [...classes].sort((a, b) => a - b).join(" ");
    if (this.onDrawn) this.onDrawn(record, classes);
  }

  drawMask(mask, w, h, classes) {
    const image = this.ctx.createImageData(w, h);
    const px = image.data;
    const fillAlpha = this.fill ? Math.round(255 * this.opacity) : 0;
    const lineAlpha = this.opacity > 0 ? 255 : 0; // opacity 0 hides everything, outline included
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        const i = y * w + x;
        const id = mask[i];
        if (!id) continue;
        classes.add(id);
        // a border pixel: one of its 4 neighbours is another class (or the frame's edge is not a border)
        const edge = this.outline && ((x > 0 && mask[i - 1] !== id) || (x < w - 1 && mask[i + 1] !== id)
          || (y > 0 && mask[i - w] !== id) || (y < h - 1 && mask[i + w] !== id));
        const alpha = edge ? lineAlpha : fillAlpha;
        if (!alpha) continue;
        const colour = classColour(id);
        const o = i * 4;
        px[o] = colour[0]; px[o + 1] = colour[1]; px[o + 2] = colour[2]; px[o + 3] = alpha;
      }
    }
    this.ctx.putImageData(image, 0, 0);
  }

  drawConfidence(confidence, w, h) {
    const small = document.createElement("canvas");
    small.width = confidence.w;
    small.height = confidence.h;
    const sctx = small.getContext("2d");
    const image = sctx.createImageData(confidence.w, confidence.h);
    const alpha = Math.round(255 * this.opacity);
    for (let i = 0; i < confidence.data.length; i += 1) {
      const [r, g, b] = heat(confidence.data[i]);
      const o = i * 4;
      image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = b; image.data[o + 3] = alpha;
    }
    sctx.putImageData(image, 0, 0);
    this.ctx.clearRect(0, 0, w, h);
    this.ctx.imageSmoothingEnabled = true;
    this.ctx.drawImage(small, 0, 0, w, h);
  }
}
