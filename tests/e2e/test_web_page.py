"""The web page in a real browser (Debian's Chromium through Playwright), on `avs serve` behind nginx under a
path prefix, with an API key: upload a synthetic clip whose ground truth is known and measure where the tint
lands on screen, the errors, cancel, downloads, the live page on Chromium's fake camera and microphone, the
phone layout and the labels.

Set AVS_WEB_SCREENSHOTS=DIR to keep the README's screenshots (upload result, live page) in DIR.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from app.cli.demo import make_sample_clip
from worker.media.samples import make_video

from .conftest import Service, running_embedded
from .web_support import (
    assert_frames_drawn_where_truth_is,
    checked_page,
    chromium_path,
    clip_ground_truth,
    keep_screenshot,
    open_page,
    prefix_proxy,
    tint,
)

API_KEY = "web-page-key"
PREFIX = "/avs"
MAX_UPLOAD = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_clip(tmp_path_factory.mktemp("web-clip"))


@pytest.fixture(scope="module")
def ground_truth(clip: Path) -> list[np.ndarray]:
    return clip_ground_truth(clip)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("web-service")
    env = {"AVS_API_KEYS": API_KEY, "AVS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
    with running_embedded(root / "data", env, ("--root-path", PREFIX)) as running:
        yield running


@pytest.fixture(scope="module")
def page_url(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefix_proxy(service.base_url, PREFIX, tmp_path_factory.mktemp("nginx")) as url:
        yield url


@pytest.fixture(scope="module")
def fake_media(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The clip as Chromium's fake camera (y4m) and microphone (wav) read them."""
    out = tmp_path_factory.mktemp("fake-media")
    camera, microphone = out / "camera.y4m", out / "microphone.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-pix_fmt", "yuv420p", str(camera)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-vn", "-ac", "1", "-ar", "48000",
                    "-c:a", "pcm_s16le", str(microphone)], check=True)
    return camera, microphone


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:  # one per module: the live test launches a second browser from it
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path())
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser) as page:
        yield page


def _open(page: Page, url: str, *, key: str | None = API_KEY) -> None:
    open_page(page, url, key=key)


def test_an_uploaded_clip_is_drawn_frame_by_frame_where_its_sounding_object_is(
        page: Page, page_url: str, clip: Path, ground_truth: list[np.ndarray], tmp_path: Path) -> None:
    _open(page, page_url, key=None)
    page.set_input_files("#file", str(clip))
    page.click("#submit")  # no key yet: the API's refusal is shown as its code, and the key field opens
    expect(page.locator("#error")).to_contain_text("unauthorized")
    expect(page.locator("#api-key")).to_be_focused()
    page.fill("#api-key", API_KEY)
    page.keyboard.press("Enter")
    page.click("#submit")
    expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=120_000)
    expect(page.locator("#error")).to_be_hidden()
    frames = len(ground_truth)
    expect(page.locator("#job-status")).to_contain_text(f"{frames} / {frames} frames")
    expect(page.locator("#scrubber")).to_have_attribute("max", str(frames - 1))
    expect(page.locator("#frame-label")).to_contain_text(f" / {frames} · ")  # the count followed the stream

    assert_frames_drawn_where_truth_is(page, ground_truth, (3, 17, 31, 46))
    page.fill("#opacity", "0")  # opacity 0: nothing tinted
    assert tint(page).sum() == 0
    page.fill("#opacity", "0.55")
    page.fill("#scrubber", "17")
    expect(page.locator("#mask-canvas")).to_have_attribute("data-frame", "17")
    keep_screenshot(page, "web-upload.jpg")

    with page.expect_download() as download:
        page.click("#download-masks")
    lines = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [line["frame_index"] for line in lines if "frame_index" in line] == list(range(frames))
    row = page.locator("#jobs tbody tr").first
    expect(row).to_contain_text(clip.name)
    expect(row).to_contain_text("succeeded")

    # after a reload the job is still listed; the page has no file any more, so it plays the video the service
    # keeps with the job (media.preview_url), and the masks go on it as before
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.locator("#jobs tbody tr", has_text=clip.name).first.locator("button.view").click()
    expect(page.locator("#upload-stage")).to_have_attribute("data-source", "preview")
    expect(page.locator("#need-file")).to_be_hidden()
    expect(page.locator("#scrubber")).to_have_attribute("max", str(frames - 1))
    page.fill("#scrubber", "31")
    expect(page.locator("#mask-canvas")).to_have_attribute("data-frame", "31")

    # Delete: the row says so and offers nothing more to delete; viewing it says its results are gone
    row = page.locator("#jobs tbody tr", has_text=clip.name).first
    row.locator("button.cancel").click()
    expect(row.locator(".state")).to_have_text("succeeded, deleted")
    expect(row.locator("button.cancel")).to_be_hidden()
    row.locator("button.view").click()
    expect(page.locator("#job-status")).to_contain_text("deleted")
    expect(page.locator("#download-masks")).to_be_hidden()


def test_errors_show_the_api_code_and_a_running_job_is_cancelled_from_the_list(
        page: Page, page_url: str, tmp_path: Path) -> None:
    _open(page, page_url)
    junk = tmp_path / "holiday.mp4"
    junk.write_bytes(b"this is not a video at all " * 200)
    page.set_input_files("#file", str(junk))
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("not_media")

    long_clip = make_video(tmp_path / "long.mp4", duration_s=40.0, size=(96, 64), fps=25)
    page.set_input_files("#file", str(long_clip))
    page.click("#submit")
    expect(page.locator("#error")).to_be_hidden()
    row = page.locator("#jobs tbody tr", has_text="long.mp4").first
    expect(row.locator(".state")).to_have_text("running", timeout=60_000)
    row.locator("button.cancel").click()
    expect(row.locator(".state")).to_contain_text("cancel", timeout=30_000)
    expect(page.locator("#job-status")).to_contain_text("cancelled and deleted", timeout=30_000)
    done = int(page.locator("#job-progress").get_attribute("value") or 0)
    assert done < 1000, "the job ran to its end despite the cancel"


_LIVE_SAMPLE = """() => {
    const picture = document.getElementById('live-picture'), mask = document.getElementById('live-canvas');
    return { t: Number(picture.dataset.pts), pts: Number(mask.dataset.pts), picture: picture.toDataURL(),
             mask: mask.width ? mask.toDataURL() : null };
}"""
"""The delayed picture and the mask on screen at one moment (one JS turn): their pts_s and their pixels."""


def _data_url_pixels(url: str) -> np.ndarray:
    import base64

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def _clip_frames(clip: Path, size: tuple[int, int]) -> np.ndarray:
    """[n, h, w, 3] uint8: the clip's frames at `size` (w, h), as the fake camera shows them."""
    w, h = size
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-vf", f"scale={w}:{h}", "-pix_fmt", "rgb24",
                          "-f", "rawvideo", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def test_the_live_page_shows_each_mask_on_its_own_frame_and_keeps_the_recording_as_a_job(
        playwright: Playwright, page_url: str, clip: Path, fake_media: tuple[Path, Path],
        ground_truth: list[np.ndarray]) -> None:
    """By default the picture is delayed by the measured latency, so the mask on screen is the one of the frame
    on screen: each sample's picture is matched to the clip's frame it shows (the fake camera loops the clip)
    and the drawn mask is measured against that frame's ground truth. After Stop the last picture and its mask
    stay; the recording is a job in the list, opened from the link, its masks drawn over its video."""
    camera, microphone = fake_media
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=[
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}", f"--use-file-for-fake-audio-capture={microphone}"])
    try:
        context = browser.new_context(viewport={"width": 1000, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        _open(page, page_url + "#live")
        expect(page.locator("#page-live")).to_be_visible()
        page.fill("#live-fps", "5")
        page.check("#live-record")
        page.click("#live-start")
        expect(page.locator("#live-state")).to_contain_text("live · avesformer-tiny", timeout=30_000)
        for _ in range(150):  # ten masks or more (the page's CSP forbids eval, so no wait_for_function)
            if int(page.locator("#live-masks").text_content() or 0) >= 10:
                break
            page.wait_for_timeout(200)
        assert int(page.locator("#live-masks").text_content() or 0) >= 10
        assert page.locator("#live-latency").text_content().endswith("ms")
        expect(page.locator("#live-delay")).to_contain_text("ms")
        expect(page.locator("#live-stage")).to_have_attribute("data-view", "picture")
        frames = objects = None
        scores: list[float] = []
        own: list[bool] = []
        seen: list[tuple[float, float]] = []
        # sample until 8 moments with a mask's own frame on screen, for 45 s at most: a mask's frame is on screen
        # for one camera frame (0.1 s), and a loaded machine drops frames (masks then come seconds apart)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            sample = page.evaluate(_LIVE_SAMPLE)
            seen.append((sample["t"], sample["pts"]))
            if sample["mask"] and abs(sample["t"] - sample["pts"]) < 0.04:  # the mask's own frame (10 frames/s)
                picture = _data_url_pixels(sample["picture"])[..., :3].astype(int)
                if frames is None:
                    frames = _clip_frames(clip, (picture.shape[1], picture.shape[0])).astype(int)
                    # the objects of each frame: what differs from the scene's background (the median frame)
                    objects = np.abs(frames - np.median(frames, axis=0)[None]).sum(axis=3) > 40
                shown = int(np.argmin(np.abs(frames - picture[None]).mean(axis=(1, 2, 3))))
                drawn = _data_url_pixels(sample["mask"])[..., 3] > 0
                if drawn.any():
                    # the share of the mask lying on objects, on the frame shown and on its neighbours: with the
                    # mask on its own frame, no neighbour fits it better (the objects move)
                    near = range(max(0, shown - 3), min(len(frames), shown + 4))
                    fits = {j: float((drawn & objects[j]).sum() / drawn.sum()) for j in near}
                    scores.append(fits[shown])
                    own.append(fits[shown] >= max(fits.values()) - 0.005)
            if len(scores) >= 8:
                break
            page.wait_for_timeout(100)
        print(f"live sync: share of the mask on the shown frame's objects {np.round(scores, 2).tolist()}, "
              f"that frame the best fit {own}")
        assert len(scores) >= 3, f"too few samples with the mask's own frame on screen: (t, pts) {seen[-20:]}"
        assert float(np.median(scores)) >= 0.6, f"the masks do not lie on the objects of their frames: {scores}"
        assert sum(own) >= 0.6 * len(own), f"the masks fit other frames better than the one shown: {scores} {own}"
        keep_screenshot(page, "web-live.jpg")
        # the camera picker names the cameras once the first was opened (front/back stay for phones)
        expect(page.locator('#live-camera option[value^="device:"]').first).to_be_attached()
        expect(page.locator('#live-camera option[value="environment"]')).to_be_attached()
        # "newest picture": the camera itself, undelayed, the newest mask over it; and back
        page.check("#live-newest")
        expect(page.locator("#live-stage")).to_have_attribute("data-view", "camera")
        expect(page.locator("#live-delay")).to_contain_text("newest")
        page.uncheck("#live-newest")
        expect(page.locator("#live-stage")).to_have_attribute("data-view", "picture")
        page.click("#live-stop")
        expect(page.locator("#live-state")).to_have_text("ended", timeout=30_000)
        expect(page.locator("#live-summary")).to_contain_text("succeeded")
        expect(page.locator("#error")).to_be_hidden()
        # the last picture stays, with its mask (not a black bar)
        expect(page.locator("#live-picture")).to_be_visible()
        last = _data_url_pixels(page.evaluate(_LIVE_SAMPLE)["picture"])[..., :3]
        assert last.reshape(-1, 3).mean(axis=0).max() > 40, "the picture went black"
        expect(page.locator("#live-canvas")).to_have_attribute("data-frame", re.compile(r"\d+"))
        # the recording is a job: linked, listed, opened with its masks over its own video
        link = page.locator("#live-job-link")
        expect(link).to_be_visible()
        job_id = (page.locator("#live-job").text_content() or "").split("job ")[1].split(":")[0]
        link.click()
        expect(page.locator("#page-upload")).to_be_visible()
        row = page.locator(f'#jobs tbody tr[data-job="{job_id}"]')
        expect(row).to_contain_text("live recording")
        expect(row.locator(".state")).to_have_text("succeeded", timeout=30_000)
        expect(page.locator("body")).to_have_attribute("data-job", job_id)
        expect(page.locator("#upload-stage")).to_have_attribute("data-source", "preview", timeout=30_000)
        expect(page.locator("#scrubber")).not_to_have_attribute("max", "0")
        page.fill("#scrubber", "3")  # the 4th mask line (frames over the fps cap have none)
        expect(page.locator("#frame-label")).to_contain_text("4 / ")
        expect(page.locator("#mask-canvas")).not_to_have_attribute("data-frame", "0")
        assert page.evaluate("document.getElementById('video').videoWidth") > 0
        # and its overlay, made from the page like any job's
        item = page.locator('#exports li[data-export="overlay-outline.mp4"]')
        item.locator("button.make").click()
        expect(item).to_have_attribute("data-ready", "true", timeout=60_000)
        expect(item.locator("a.download")).to_contain_text("Save overlay-outline.mp4")
        context.close()
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        browser.close()


def test_the_page_fits_a_phone_every_control_is_labelled_and_text_has_contrast(
        browser: Browser, page_url: str) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        for tab in ("#upload", "#live"):
            _open(page, page_url + tab, key=None)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{tab}: the page is {overflow}px wider than the phone"
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(el => el.type !== 'hidden')
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !(el.tagName === 'BUTTON' && el.textContent.trim()))
            .map(el => el.id || el.outerHTML)""")
        assert unlabelled == []
        ratios = page.evaluate("""() => {
            const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
            const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
                : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
            const background = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el)
                .backgroundColor; if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return rgb(c); }
                return [255, 255, 255]; };
            const out = {};
            for (const sel of ['h1', '.tagline', '#tab-live', 'button#submit', '.hint', 'label[for=opacity]',
                               '#live-start', '.stats dt']) {
                const el = document.querySelector(sel);
                const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
                out[sel] = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
            }
            return out; }""")
        low = {selector: round(ratio, 2) for selector, ratio in ratios.items() if ratio < 4.5}
        assert not low, f"text below WCAG AA contrast (4.5:1): {low}"
        # keyboard: the tabs are links, the file chooser is reachable and shows where the focus is
        page.goto(page_url + "#upload")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        for _ in range(15):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "file":
                break
        assert page.evaluate("document.activeElement.id") == "file", "the file chooser is not reachable by Tab"
        outline = page.evaluate("getComputedStyle(document.querySelector('#drop')).outlineStyle")
        assert outline != "none"
    finally:
        context.close()


def test_the_page_says_which_model_runs_and_that_the_demo_knows_only_synthetic_shapes(page: Page,
                                                                                      page_url: str) -> None:
    """Issue #20: the shipped demo model's notice wherever a user meets it, here the page."""
    _open(page, page_url, key=None)
    expect(page.locator("#model-card")).to_be_visible()
    expect(page.locator("#model-title")).to_contain_text("synthetic S4 scenes")
    expect(page.locator("#model-warning")).to_contain_text("synthetic shapes only, not for real video")
    expect(page.locator("#model-warning")).to_contain_text("avs weights import-avsegformer")


def test_the_browser_decodes_rle_exactly_as_pycocotools(page: Page, page_url: str) -> None:
    from worker.masks import encode_rle

    rng = np.random.default_rng(7)
    masks = [np.zeros((5, 7), np.uint8), np.ones((6, 4), np.uint8), np.eye(9, dtype=np.uint8)[:, :8],
             (rng.random((37, 53)) > 0.5).astype(np.uint8), (rng.random((360, 640)) > 0.97).astype(np.uint8)]
    blob = np.zeros((120, 200), np.uint8)
    blob[30:90, 40:170] = 1
    masks.append(blob)
    records = [{"size": list(m.shape), "counts": encode_rle(m[None])[0]} for m in masks]
    _open(page, page_url, key=None)
    decoded = page.evaluate("""async records => {
        const { decodeMask } = await import('./static/rle.js');
        return records.map(r => Array.from(decodeMask(r)));
    }""", records)
    for mask, pixels in zip(masks, decoded, strict=True):
        assert np.array_equal(np.array(pixels, dtype=np.uint8).reshape(mask.shape), mask)
    # a semantic (AVSS) record: each pixel's class id from its segments, as worker.masks.record_labels gives it
    from worker.masks import mask_records, record_labels

    labels = np.zeros((24, 40), np.uint8)
    labels[2:10, 3:20], labels[12:22, 25:39], labels[15:20, 5:9] = 17, 70, 3
    (record,) = mask_records(labels[None], start_index=0, pts_s=[0.0], class_names=[f"c{i}" for i in range(71)])
    decoded = page.evaluate("""async record => {
        const { decodeLabels } = await import('./static/rle.js');
        return Array.from(decodeLabels(record));
    }""", record)
    assert np.array_equal(np.array(decoded, dtype=np.uint8).reshape(labels.shape), labels)
    assert np.array_equal(record_labels(record), labels)


@pytest.mark.parametrize(("headers", "fields", "size", "status", "code"), [
    ({"X-API-Key": "wrong"}, {}, 16 * 1024 * 1024, 401, "unauthorized"),  # refused before the body is read
    ({"X-API-Key": API_KEY}, {"fps": "-3"}, 16 * 1024 * 1024, 422, "invalid_request"),  # a bad field ahead of the file
    ({"X-API-Key": API_KEY}, {}, 40 * 1024 * 1024, 413, "too_large"),  # the declared size is over the cap
])
def test_an_upload_refused_early_reaches_the_client_through_the_proxy_with_its_code(
        page_url: str, headers: dict[str, str], fields: dict[str, str], size: int, status: int, code: str) -> None:
    """A refusal sent while the body is still arriving is read by nginx, not turned into a 502 (the API reads
    the rest of the body before it answers, `app.api.body_drain`)."""
    import httpx

    response = httpx.post(page_url + "segment", headers=headers, data=fields,
                          files={"file": ("big.mp4", os.urandom(size), "video/mp4")}, timeout=60)
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["code"] == code


def test_job_urls_carry_the_path_prefix(page_url: str, clip: Path) -> None:
    import httpx

    with clip.open("rb") as f:
        response = httpx.post(page_url + "segment", headers={"X-API-Key": API_KEY},
                              files={"file": (clip.name, f, "video/mp4")}, timeout=60)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status_url"] == f"{PREFIX}/jobs/{body['job_id']}"
    status = httpx.get(page_url.removesuffix(f"{PREFIX}/") + body["status_url"], headers={"X-API-Key": API_KEY})
    assert status.status_code == 200
    assert status.json()["urls"]["masks"] == f"{PREFIX}/jobs/{body['job_id']}/masks"
