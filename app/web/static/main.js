// The page's entry: the two tabs (#upload, #live; #job=<id> opens a job), the API key field, the wiring of each tab.
import { apiKey, setApiKey } from "./api.js";
import { initLive, leaveLive } from "./live.js";
import { showModel } from "./model_card.js";
import { initUpload, openJobById, renderJobs } from "./upload.js";

const $ = (id) => document.getElementById(id);
const PAGES = ["upload", "live"];

function route() {
  const hash = location.hash.slice(1);
  const job = hash.startsWith("job=") ? decodeURIComponent(hash.slice(4)) : null; // #job=<id>: open that job
  const page = PAGES.includes(hash) ? hash : "upload";
  for (const name of PAGES) {
    $(`page-${name}`).hidden = name !== page;
    if (name === page) $(`tab-${name}`).setAttribute("aria-current", "page");
    else $(`tab-${name}`).removeAttribute("aria-current");
  }
  if (page !== "live") leaveLive();
  if (job) openJobById(job);
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
