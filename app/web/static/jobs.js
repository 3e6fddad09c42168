// The jobs this browser submitted (and live recordings it kept), in localStorage (ids and names only; their
// state is asked from the API). The service also lists the jobs of the caller's API key (GET jobs); the page
// shows both, so a service without keys or without that route still has this browser's own list.

const STORE = "avs.jobs";
const MAX_KEPT = 50;

/** @returns {{job_id: string, filename: string, overlay: boolean, created: number}[]} newest first */
export function listJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(jobs) ? jobs.filter((j) => j && typeof j.job_id === "string") : [];
  } catch {
    return [];
  }
}

export function addJob(job) {
  const jobs = [job, ...listJobs().filter((j) => j.job_id !== job.job_id)].slice(0, MAX_KEPT);
  localStorage.setItem(STORE, JSON.stringify(jobs));
}

export function forgetJob(jobId) {
  localStorage.setItem(STORE, JSON.stringify(listJobs().filter((j) => j.job_id !== jobId)));
}
