// The model the service runs (GET model): its card's title and input size, and the warning a user must see
// before trusting the masks (the shipped demo model knows only synthetic shapes).
import { getJson } from "./api.js";

const $ = (id) => document.getElementById(id);

export async function showModel() {
  let body;
  try {
    body = await getJson("model");
  } catch {
    return; // no warm worker yet: the page works without the card
  }
  const model = body.model;
  const card = model.card || {};
  $("model-title").textContent = card.title || model.variant || "unknown";
  const classes = model.num_classes > 1 ? `${model.num_classes} classes` : "sounding / silent";
  $("model-detail").textContent = `(${model.variant}, ${model.input_size}\u00d7${model.input_size} input, ${classes})`;
  $("model-warning").textContent = model.warning || "";
  $("model-warning").hidden = !model.warning;
  $("model-card").hidden = false;
  document.body.dataset.model = model.variant || "";
}
