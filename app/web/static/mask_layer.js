// A canvas laid over a <video>: draws one decoded mask, tinted, at the mask's own resolution (CSS stretches
// the canvas over the video box, which has the same aspect ratio).
import { decodeMask } from "./rle.js";

const TINT = [255, 0, 200]; // magenta: rare in natural video, so the tint is easy to see (and to measure)

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
      mask = decodeMask(record);
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
        px[o] = TINT[0]; px[o + 1] = TINT[1]; px[o + 2] = TINT[2]; px[o + 3] = alpha;
      }
    }
    this.ctx.putImageData(image, 0, 0);
    this.canvas.dataset.frame = String(record.frame_index); // which frame is on screen (tests wait for it)
  }
}
