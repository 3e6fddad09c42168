// The page's entry: the two tabs (#upload, #live), the API key field, and the wiring of each tab.
import { apiKey, setApiKey } from "./api.js";
import { initLive, leaveLive } from "./live.js";
import { showModel } from "./model_card.js";
import { initUpload, renderJobs } from "./upload.js";

const $ = (id) => document.getElementById(id);
const PAGES = ["upload", "live"];

function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "upload";
  for (const name of PAGES) {
    $(`page-${name}`).hidden = name !== page;
    if (name === page) $(`tab-${name}`).setAttribute("aria-current", "page");
    else $(`tab-${name}`).removeAttribute("aria-current");
  }
  if (page !== "live") leaveLive();
}

function initKey() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    document.querySelector("details.settings").open = false;
    renderJobs();
  });
}

initKey();
showModel();
initUpload();
initLive();
window.addEventListener("hashchange", route);
route();
document.body.dataset.ready = "true"; // for tests and scripts: the modules have loaded and wired the page
