// The legend under the player: a swatch and the model's name for every class the stream has shown so far
// (71 AVSS classes are too many to list up front), the ones on the current frame marked.
import { cssColour } from "./mask_layer.js";

export class Legend {
  /** @param {HTMLElement} list a <ul> */
  constructor(list) {
    this.list = list;
    this.names = [];
    this.seen = new Set();
    this.labels = new Map(); // class_id -> the name shown
    this.shown = null;
  }

  /** @param {string[]} names the model's class names, index = class_id ([] or one name: a binary model) */
  setNames(names) {
    this.names = Array.isArray(names) ? names : [];
    this.render(new Set());
  }

  reset() {
    this.seen.clear();
    this.labels.clear();
    this.render(new Set());
  }

  name(id, record) {
    const segment = record && record.segments && record.segments.find((s) => s.class_id === id);
    if (segment && segment.class_name) return segment.class_name; // the stream names its classes itself
    if (this.names.length > 1 && this.names[id]) return this.names[id];
    return "sounding object";
  }

  /** After a frame is drawn: remember its classes (names from the record's segments or the model). */
  update(record, classes) {
    let grew = false;
    for (const id of classes) {
      if (this.seen.has(id)) continue;
      this.seen.add(id);
      this.labels.set(id, this.name(id, record));
      grew = true;
    }
    if (grew || !this.shown || !sameSet(this.shown, classes)) this.render(classes);
  }

  render(current) {
    this.shown = new Set(current);
    const ids = [...this.seen].sort((a, b) => a - b);
    if (!ids.length && this.names.length <= 1) ids.push(1); // binary: the one class, even before a mask
    this.list.replaceChildren(...ids.map((id) => {
      const li = document.createElement("li");
      li.dataset.classId = String(id);
      if (current.has(id)) li.className = "now";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = cssColour(id);
      const label = this.labels.get(id) || this.name(id, null);
      li.append(swatch, label);
      if (current.has(id)) li.title = "on this frame";
      return li;
    }));
  }
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
