// The result's player: which picture to play (the user's own file when this browser can play it, else the
// browser-safe preview.mp4 the worker writes), the box fitted to the window at the video's display aspect
// ratio (so the frame slider stays in view and the mask canvas lies exactly over the picture), and its own
// play / mute buttons (no native control bar for the mask to cover).
import { apiKey, apiUrl, request } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The MIME type to ask canPlayType about: the File's own, else one guessed from the extension. */
export function guessType(file) {
  if (file.type) return file.type;
  const ext = (file.name.match(/\.([^.]+)$/) || [])[1] || "";
  return {
    mp4: "video/mp4", m4v: "video/mp4", mov: "video/quicktime", webm: "video/webm", mkv: "video/x-matroska",
    avi: "video/x-msvideo", ts: "video/mp2t", mts: "video/mp2t", m2ts: "video/mp2t", mpg: "video/mpeg",
    mpeg: "video/mpeg", flv: "video/x-flv", wmv: "video/x-ms-wmv", ogv: "video/ogg", "3gp": "video/3gpp",
  }[ext.toLowerCase()] || "";
}

/** "AVI" from "clip.avi": how the notice names the original's format. */
const formatOf = (name) => ((name.match(/\.([^.]+)$/) || [])[1] || "this").toUpperCase();

export class Player {
  constructor() {
    this.video = $("video");
    this.stage = $("upload-stage");
    this.objectUrl = null;
    this.source = "none"; // "original" | "preview" | "none" (masks alone)
    this.token = 0; // bumps on every load: answers for an older job are dropped
    this.previewWanted = false;
    this.previewLoading = false;
    this.job = null;
    this.base = 0; // the browser's media time of the first mask line's frame (s): masks count from there
    this.sought = false; // a seek was asked since the source was set: the next frame presented is not the first
    this.video.addEventListener("loadedmetadata", () => this.fit());
    window.addEventListener("resize", () => this.fit());
    $("play").addEventListener("click", () => (this.video.paused ? this.video.play() : this.video.pause()));
    $("mute").addEventListener("click", () => { this.video.muted = !this.video.muted; this.syncButtons(); });
    this.video.addEventListener("seeking", () => { this.sought = true; });
    for (const name of ["play", "pause", "volumechange", "emptied"]) {
      this.video.addEventListener(name, () => this.syncButtons());
    }
  }

  syncButtons() {
    $("play").textContent = this.video.paused ? "Play" : "Pause";
    $("play").disabled = this.source === "none";
    $("mute").textContent = this.video.muted ? "Sound on" : "Mute";
    $("mute").disabled = this.source === "none";
  }

  /** The box's aspect ratio: the playing video's own (rotation and pixel shape applied by the browser), else
   * the probed display aspect ratio of the job, else the masks'. */
  fit(fallback) {
    let ratio = 0;
    if (this.source !== "none" && this.video.videoWidth && this.video.videoHeight) {
      ratio = this.video.videoWidth / this.video.videoHeight;
    } else if (this.job && this.job.video && this.job.video.display_aspect_ratio) {
      ratio = this.job.video.display_aspect_ratio;
    } else if (fallback) {
      ratio = fallback;
    }
    if (ratio > 0) this.stage.style.setProperty("--ar", String(ratio));
  }

  reset() {
    this.token += 1;
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.source = "none";
    this.previewWanted = false;
    this.previewLoading = false;
    this.stage.dataset.source = "none";
    this.notice("");
    this.syncButtons();
  }

  notice(text) {
    $("play-notice").textContent = text;
    $("play-notice").hidden = !text;
  }

  /**
   * Play `file` (the user's, this page load only) for job record `job` (GET jobs/<id>, possibly without a
   * `media` field on a service from before the preview): the original when this browser can play it, else the
   * preview once the service has it; neither: the masks alone, and the user is asked for the file.
   */
  load(file, job) {
    this.reset();
    this.job = job;
    this.fit();
    const token = this.token;
    if (file) {
      const type = guessType(file);
      const media = job && job.media;
      const refused = (type && !this.video.canPlayType(type)) || (media && media.browser_playable === false);
      if (refused) {
        this.wantPreview(file.name, type);
        return;
      }
      this.objectUrl = URL.createObjectURL(file);
      this.play(this.objectUrl, "original");
      // a container the browser claims but a codec it cannot decode: an error, or metadata with no picture
      const fail = () => { if (token === this.token && this.source === "original") this.wantPreview(file.name, type); };
      this.video.addEventListener("error", fail, { once: true });
      this.video.addEventListener("loadedmetadata", () => { if (!this.video.videoWidth) fail(); }, { once: true });
    } else if (job && ((job.media && job.media.preview_url) || job.source === "live")) {
      this.wantPreview(null, ""); // a live recording has no file on this computer: the service's video or nothing
    } else {
      $("need-file").hidden = false;
    }
  }

  /** Play `url` (`source`: "original" | "preview"). `start`: the media time of the first mask line's frame
   * when the service states it (its preview is made so: `media.preview_start_s`, 0); otherwise (the user's
   * own file, an upload served as it is) it is read from the first frame the browser presents, unless a seek
   * came first (that frame is then not the first: the timeline stays at 0 until a later load). */
  play(url, source, start = null) {
    this.source = source;
    this.stage.dataset.source = source;
    this.base = typeof start === "number" ? start : 0;
    this.sought = false;
    this.video.src = url;
    const token = this.token;
    if (typeof start !== "number" && "requestVideoFrameCallback" in this.video) {
      this.video.requestVideoFrameCallback((_now, metadata) => {
        if (token === this.token && !this.video.played.length && !this.sought) this.base = metadata.mediaTime;
      });
    }
    $("need-file").hidden = true;
    this.syncButtons();
  }

  /** Switch to the preview: now if the job record names it, else when `update` sees it appear. */
  wantPreview(name, type) {
    this.source = "none";
    this.stage.dataset.source = "none";
    this.video.removeAttribute("src");
    this.video.load();
    this.previewWanted = true;
    this.previewFor = name ? `${formatOf(name)}${type ? ` (${type})` : ""}` : null;
    this.syncButtons();
    this.update(this.job);
  }

  /** A newer job record (the status poll): the preview may exist now. */
  update(job) {
    if (job) this.job = job;
    this.fit();
    if (!this.previewWanted || this.previewLoading || this.source === "preview") return;
    const media = this.job && this.job.media;
    const live = this.job && this.job.source === "live";
    const why = this.previewFor ? `This browser cannot play the original ${this.previewFor}`
      : live ? "This is a live recording" : "The original video is not in this page";
    if (media && media.preview_url) {
      this.loadPreview(media.preview_url, why);
    } else if (this.job && !["succeeded", "failed", "cancelled"].includes(this.job.status)) {
      this.notice(`${why}: waiting for the browser-safe preview the service makes… (the masks are drawn alone until then)`);
    } else {
      this.notice(`${why}, and the service has no video of it to play: the masks are drawn alone.`);
    }
  }

  async loadPreview(previewUrl, why) {
    const token = this.token;
    this.previewLoading = true;
    try {
      let url;
      // a <video> cannot send the X-API-Key header: with a key, fetch the file and play it from memory
      if (apiKey()) {
        const blob = await (await request(previewUrl.replace(/^\//, "").replace(/^.*?jobs\//, "jobs/"))).blob();
        if (token !== this.token) return;
        this.objectUrl = URL.createObjectURL(blob);
        url = this.objectUrl;
      } else {
        url = apiUrl(previewUrl.replace(/^.*?jobs\//, "jobs/")).href;
      }
      const start = this.job && this.job.media ? this.job.media.preview_start_s : null;
      this.play(url, "preview", typeof start === "number" ? start : null);
      const kept = !this.previewFor && this.job && this.job.media && this.job.media.browser_playable;
      const live = this.job && this.job.source === "live";
      this.notice(live ? "Playing the recording as the service keeps it with the job."
        : kept ? "Playing the video as the service keeps it with the job (your file is not in this page)."
        : `${why}: playing the browser-safe preview (H.264 MP4) the service made of it, frame for frame.`);
    } catch (error) {
      if (token === this.token) this.notice(`${why}, and its preview could not be loaded (${error.code || ""} ${error.message}).`);
    } finally {
      if (token === this.token) this.previewLoading = false;
    }
  }
}
