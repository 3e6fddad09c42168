// The model the service runs (GET model): its card (title, input size, classes, what it was trained on, how
// well it does, where it comes from) and the warning a user must see before trusting the masks (the shipped
// demo model knows only synthetic shapes). Its class names feed the legend.
import { getJson } from "./api.js";

const $ = (id) => document.getElementById(id);
let loaded = null;

/** The served model's summary (GET model's `model`), or null when no worker has reported one yet. */
export function currentModel() {
  if (!loaded) loaded = getJson("model").then((body) => body.model).catch(() => { loaded = null; return null; });
  return loaded;
}

function cardValue(value) {
  if (value == null) return "";
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === "number" ? +v.toFixed(4) : v}`).join(", ");
  }
  return String(value);
}

export async function showModel() {
  const model = await currentModel();
  if (!model) return; // no warm worker yet: the page works without the card
  const card = model.card || {};
  $("model-title").textContent = card.title || model.variant || "unknown";
  const classes = model.num_classes > 1 ? `${model.num_classes} classes` : "sounding / silent";
  $("model-detail").textContent = `(${model.variant}, ${model.input_size}\u00d7${model.input_size} input, ${classes})`;
  $("model-warning").textContent = model.warning || "";
  $("model-warning").hidden = !model.warning;
  const list = $("model-facts");
  list.replaceChildren();
  for (const key of ["trained_on", "metrics", "source", "licence", "intended_use"]) {
    const text = cardValue(card[key]);
    if (!text) continue;
    const dt = document.createElement("dt");
    dt.textContent = key.replace("_", " ");
    const dd = document.createElement("dd");
    dd.textContent = text;
    list.append(dt, dd);
  }
  if (model.checkpoint) {
    const dt = document.createElement("dt");
    dt.textContent = "checkpoint";
    const dd = document.createElement("dd");
    dd.textContent = model.checkpoint;
    list.append(dt, dd);
  }
  $("model-more").hidden = !list.children.length;
  $("model-card").hidden = false;
  document.body.dataset.model = model.variant || "";
}
