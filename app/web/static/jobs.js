// The jobs this browser submitted, kept in localStorage (ids only; their state is asked from the API).
//
// The API has no "list every job" route on purpose: a job id is the capability to read its masks, and a
// listing would hand every client everyone's ids. So the page lists what it submitted itself.

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
