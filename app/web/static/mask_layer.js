// A canvas laid over a <video>: draws one decoded mask, tinted, at the mask's own resolution (CSS stretches
// the canvas over the video box, which has the same aspect ratio).
import { decodeLabels } from "./rle.js";

const TINT = [255, 0, 200]; // magenta: rare in natural video, so the tint is easy to see (and to measure)

/** A colour per class id (AVSS's 71 classes): hues a golden angle apart, as the overlay video's palette. */
export function classColour(id) {
  if (id <= 1) return TINT;
  const h = (id * 0.618033988749895) % 1;
  const f = (n) => { const k = (n + h * 6) % 6; return Math.round(255 * (1 - 0.85 * Math.max(0, Math.min(k, 4 - k, 1)))); };
  return [f(5), f(3), f(1)];
}

export class MaskLayer {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.opacity = 0.55;
    this.visible = true;
    this.record = null; // the record drawn now
    this.cache = new Map(); // frame_index -> decoded mask (the last few, for scrubbing back and forth)
  }

  setOpacity(value) { this.opacity = Number(value); this.redraw(); }

  setVisible(on) { this.visible = on; this.canvas.style.visibility = on ? "visible" : "hidden"; }

  clear() {
    this.record = null;
    this.cache.clear();
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    delete this.canvas.dataset.frame;
  }

  /** Draw the mask of `record` (a mask line of the API: frame_index, size [h, w], counts). */
  draw(record) {
    if (!record) return;
    this.record = record;
    this.redraw();
  }

  redraw() {
    const record = this.record;
    if (!record) return;
    const [h, w] = record.size;
    let mask = this.cache.get(record.frame_index);
    if (!mask) {
      mask = decodeLabels(record); // 0/1, or class ids for a semantic (AVSS) record
      this.cache.set(record.frame_index, mask);
      if (this.cache.size > 64) this.cache.delete(this.cache.keys().next().value);
    }
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    const image = this.ctx.createImageData(w, h);
    const px = image.data;
    const alpha = Math.round(255 * this.opacity);
    for (let i = 0; i < mask.length; i += 1) {
      if (mask[i]) {
        const o = i * 4;
        const colour = mask[i] === 1 ? TINT : classColour(mask[i]);
        px[o] = colour[0]; px[o + 1] = colour[1]; px[o + 2] = colour[2]; px[o + 3] = alpha;
      }
    }
    this.ctx.putImageData(image, 0, 0);
    this.canvas.dataset.frame = String(record.frame_index); // which frame is on screen (tests wait for it)
  }
}
