// The API as the page uses it: every URL relative to the page (so a path prefix is kept), the API key from
// this tab's sessionStorage, errors as the API's {"error": {"code", "message"}}.

const KEY_STORE = "avs.apiKey";

export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

/** An absolute URL for an API path ("jobs/<id>") next to the page, whatever prefix the page is served under. */
export function apiUrl(path) { return new URL(path, document.baseURI); }

/** The WebSocket URL of /live next to the page, the key in the query (a browser's WebSocket sends no headers). */
export function liveUrl() {
  const url = apiUrl("live");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey()) url.searchParams.set("api_key", apiKey());
  return url;
}

export function authHeaders() { return apiKey() ? { "X-API-Key": apiKey() } : {}; }

/** The API's error out of a response body (JSON or not). */
export async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: a proxy's page */ }
  const error = body && body.error;
  if (error && error.code) return new ApiError(error.code, error.message || "", response.status);
  return new ApiError(`http_${response.status}`, response.statusText || "request failed", response.status);
}

/** fetch() an API path with the key; throws ApiError for any answer that is not 2xx. */
export async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (exc) {
    throw new ApiError("network_error", `the service did not answer (${exc.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path) { return (await request(path)).json(); }

/**
 * POST /segment with upload progress (fetch has none): resolves to the 202 body, rejects with ApiError.
 * @param {File} file
 * @param {{overlay: boolean, threshold?: string, fps?: string, confidence?: boolean}} options the form's fields @param {(sent: number, total: number) => void} onProgress
 */
export function submitVideo(file, options, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl("segment"));
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError("network_error", "the upload was interrupted"));
    xhr.onload = () => {
      const body = xhr.response;
      if (xhr.status === 202 && body) return resolve(body);
      const error = body && body.error;
      reject(error ? new ApiError(error.code, error.message, xhr.status)
        : new ApiError(`http_${xhr.status}`, xhr.statusText || "upload refused", xhr.status));
    };
    const form = new FormData();
    if (options.overlay) form.append("overlay", "true");
    for (const name of ["threshold", "fps"]) if (options[name] != null && options[name] !== "") form.append(name, String(options[name]));
    if (options.confidence) form.append("confidence", "true"); // sent only when asked: older services refuse it
    form.append("file", file, file.name); // the options first: the API checks them before reading the file
    xhr.send(form);
  });
}

/**
 * GET /jobs/<id>/masks, read as it arrives: onLine(record) for each frame line, resolves with the end line
 * ({"end": true, "status", "frames", "error"}), or null when the stream was cut without one.
 */
export async function streamMasks(jobId, onLine, { fromFrame = 0, signal } = {}) {
  const response = await request(`jobs/${jobId}/masks?from_frame=${fromFrame}`, { signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let end = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      if (!line.trim()) continue;
      const record = JSON.parse(line);
      if (record.end) end = record;
      else onLine(record);
    }
  }
  return end;
}

/** Download an API path (sent with the key, which a plain link cannot do) as `filename`. */
export async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
