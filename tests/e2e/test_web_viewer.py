"""The web page's viewer in a real browser (Debian's Chromium through Playwright) on `avs serve` with an API key:
files the browser cannot play (AVI, MPEG-TS) played through the service's preview with the masks on it, the
upload form's threshold and frames/s and no double submission, the drawing styles and the legend, the sound
under the frame slider, every export downloaded from the page and checked, and /docs with the network to
anything but the service blocked.

Set AVS_WEB_SCREENSHOTS=DIR to keep the README's screenshots (exports) in DIR.
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from app.cli.demo import make_sample_clip
from worker.masks import decode_rle

from .conftest import Service, running_embedded
from .web_support import (
    assert_frames_drawn_where_truth_is,
    checked_page,
    clip_ground_truth,
    iou,
    keep_screenshot,
    launched_chromium,
    open_page,
    tint,
)

API_KEY = "web-viewer-key"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_clip(tmp_path_factory.mktemp("viewer-clip"))


@pytest.fixture(scope="module")
def ground_truth(clip: Path) -> list[np.ndarray]:
    return clip_ground_truth(clip)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("viewer-service")
    with running_embedded(root / "data", {"AVS_API_KEYS": API_KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def page_url(service: Service) -> str:
    return service.base_url + "/"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser) as page:
        yield page


def _api(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"X-API-Key": API_KEY}, timeout=60)


def _stream(service: Service, job_id: str) -> list[dict]:
    with _api(service) as http:
        lines = [json.loads(line) for line in http.get(f"/jobs/{job_id}/masks").text.splitlines() if line.strip()]
    return [line for line in lines if "frame_index" in line]


def _upload(page: Page, video: Path) -> str:
    """Choose `video`, press Segment, wait for success; the job's id."""
    page.set_input_files("#file", str(video))
    page.click("#submit")
    expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=120_000)
    return page.locator("body").get_attribute("data-job") or ""


_CONVERT = {  # containers and codecs Chromium does not play: file extension -> ffmpeg's output options
    "avi": ["-c:v", "mpeg4", "-q:v", "2", "-c:a", "pcm_s16le"],
    "ts": ["-c:v", "mpeg2video", "-q:v", "2", "-c:a", "mp2", "-f", "mpegts"],
    # a container Chromium claims (canPlayType says "maybe") with a codec it has no decoder for
    "mp4": ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "10", "-x265-params", "log-level=error",
            "-tag:v", "hvc1", "-c:a", "aac"],
}


@pytest.mark.parametrize("container", ["avi", "ts", "mp4"], ids=["avi", "mpeg-ts", "mp4-hevc"])
def test_a_file_the_browser_cannot_play_is_shown_through_the_preview_with_its_masks_on_it(
        page: Page, page_url: str, clip: Path, ground_truth: list[np.ndarray], tmp_path: Path,
        container: str) -> None:
    video = tmp_path / f"{clip.stem}-{container}.{container}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), *_CONVERT[container], str(video)], check=True)
    open_page(page, page_url, key=API_KEY)
    _upload(page, video)
    expect(page.locator("#upload-stage")).to_have_attribute("data-source", "preview", timeout=60_000)
    notice = page.locator("#play-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(f"cannot play the original {container.upper()}")
    expect(notice).to_contain_text("preview")
    for _ in range(50):  # the picture decodes (the issue: a black, squashed player)
        if page.evaluate("document.getElementById('video').videoWidth"):
            break
        page.wait_for_timeout(100)
    width, height = page.evaluate("[document.getElementById('video').videoWidth, "
                                  "document.getElementById('video').videoHeight]")
    assert (height, width) == ground_truth[0].shape
    box = page.locator("#upload-stage").bounding_box()
    assert box is not None
    assert abs(box["width"] / box["height"] - width / height) < 0.02, "the player is not at the video's shape"
    assert_frames_drawn_where_truth_is(page, ground_truth, (3, 17, 31, 46))
    # the picture is the video, not a black box: its pixels vary like the clip's
    page.click("#show-mask")
    from .web_support import png_pixels

    picture = png_pixels(page.locator("#upload-stage").screenshot())
    page.click("#show-mask")
    assert picture.std() > 10


def test_the_form_sends_threshold_and_fps_once_however_often_it_is_submitted(
        page: Page, page_url: str, service: Service, clip: Path) -> None:
    open_page(page, page_url, key=API_KEY)
    with _api(service) as http:
        before = {job["job_id"] for job in http.get("/jobs").json()["jobs"]}
    page.set_input_files("#file", str(clip))
    page.fill("#threshold", "1.5")  # out of range: the browser's rule, said as the API would
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("invalid_request")
    expect(page.locator("#error")).to_contain_text("threshold")
    page.fill("#threshold", "0.4")
    page.fill("#fps", "5")
    # a double click, Enter and a script's submit while the first upload is under way: one job
    page.evaluate("""() => { const form = document.getElementById('upload-form');
        document.getElementById('submit').click(); form.requestSubmit(); form.requestSubmit(); }""")
    expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=120_000)
    with _api(service) as http:
        jobs = http.get("/jobs").json()["jobs"]
    new = [job for job in jobs if job["job_id"] not in before]
    assert len(new) == 1, f"{len(new)} jobs made by one upload"
    record = new[0]
    assert record["options"]["threshold"] == 0.4
    assert record["options"]["fps"] == 5
    assert record["effective_threshold"] == 0.4
    lines = _stream(service, record["job_id"])
    duration = record["video"]["duration_s"]
    assert abs(len(lines) - duration * 5) <= 2, f"{len(lines)} frames at 5 frames/s of {duration} s"
    expect(page.locator("#scrubber")).to_have_attribute("max", str(len(lines) - 1))
    expect(page.locator("#jobs tbody tr")).to_have_count(len(jobs))  # the service's list, this job once


def test_the_drawing_styles_the_legend_and_the_sound_under_the_slider(
        page: Page, page_url: str, clip: Path, ground_truth: list[np.ndarray]) -> None:
    open_page(page, page_url, key=API_KEY)
    _upload(page, clip)
    page.fill("#scrubber", "17")
    expect(page.locator("#mask-canvas")).to_have_attribute("data-frame", "17")
    page.wait_for_timeout(150)
    filled = tint(page)
    # the legend: the binary model's one class, in the colour drawn
    legend = page.locator("#legend li")
    expect(legend).to_have_count(1)
    expect(legend.first).to_have_text("sounding object")
    expect(legend.first).to_have_class("now")
    swatch = page.evaluate("getComputedStyle(document.querySelector('#legend .swatch')).backgroundColor")
    assert swatch == "rgb(255, 0, 200)"
    # outline only: a thin border around the same region
    page.select_option("#mask-style", "outline")
    page.wait_for_timeout(150)
    outline = tint(page)
    assert 0 < outline.sum() < 0.6 * filled.sum()
    ys, xs = np.nonzero(filled)
    oy, ox = np.nonzero(outline)
    assert abs(np.median(oy) - np.median(ys)) < 4
    assert abs(np.median(ox) - np.median(xs)) < 4
    page.select_option("#mask-style", "both")
    page.wait_for_timeout(150)
    assert iou(tint(page), filled) > 0.9
    page.fill("#opacity", "0")  # opacity 0: nothing at all, outline included
    assert tint(page).sum() == 0
    page.fill("#opacity", "0.55")
    page.select_option("#mask-style", "fill")
    # the stream carries no confidence (not asked for): the view says so and cannot be chosen
    expect(page.locator('#mask-style option[value="confidence"]')).to_be_disabled()
    # the sound: the service's waveform.json under the slider, the line at the frame on screen
    expect(page.locator("#sound")).to_have_attribute("data-source", "service", timeout=60_000)
    marks = []
    for frame in (5, 40):
        page.fill("#scrubber", str(frame))
        expect(page.locator("#mask-canvas")).to_have_attribute("data-frame", str(frame))
        page.wait_for_timeout(100)
        marks.append(float(page.locator("#waveform").get_attribute("data-marker") or -1))
    frames = len(ground_truth)
    assert abs(marks[0] - 5 / frames) < 0.05, marks
    assert abs(marks[1] - 40 / frames) < 0.05, marks
    slider = page.locator("#scrubber").bounding_box()
    wave = page.locator("#waveform").bounding_box()
    assert slider
    assert wave
    assert abs(slider["x"] - wave["x"]) < 2
    assert abs(slider["width"] - wave["width"]) < 2
    assert 0 <= wave["y"] - (slider["y"] + slider["height"]) < 40, "the waveform is not right under the slider"
    # fitted to the window: the slider and the waveform are in view without scrolling
    page.locator("#result").scroll_into_view_if_needed()
    viewport = page.viewport_size or {"height": 1000}
    stage = page.locator("#upload-stage").bounding_box()
    assert stage
    assert stage["height"] <= viewport["height"] - 100


def test_every_export_is_made_from_the_page_downloaded_and_matches_the_stream(
        page: Page, page_url: str, service: Service, clip: Path, ground_truth: list[np.ndarray]) -> None:
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    open_page(page, page_url, key=API_KEY)
    job_id = _upload(page, clip)
    lines = _stream(service, job_id)
    stream = [decode_rle(line["counts"], line["size"]) for line in lines]
    height, width = stream[0].shape
    files: dict[str, Path] = {}
    for name in ("masks.zip", "coco.json", "overlay-outline.mp4", "alpha.webm", "side-by-side.mp4"):
        item = page.locator(f'#exports li[data-export="{name}"]')
        item.locator("button.make").click()
        expect(item).to_have_attribute("data-ready", "true", timeout=120_000)
        with page.expect_download() as download:
            item.locator("a.download").click()
        assert download.value.suggested_filename == f"{clip.stem}.{name}"
        files[name] = Path(download.value.path())
    keep_screenshot(page, "web-exports.jpg")

    with zipfile.ZipFile(files["masks.zip"]) as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        assert len(pngs) == len(lines)
        from PIL import Image

        masks = [np.asarray(Image.open(io.BytesIO(archive.read(n)))) > 0 for n in pngs]
        manifest = json.loads(archive.read("manifest.json"))
    assert all(np.array_equal(m, s.astype(bool)) for m, s in zip(masks, stream, strict=True))
    scores = [iou(m, t) for m, t in zip(masks, ground_truth, strict=True) if t.any()]
    assert np.mean(scores) >= 0.6, f"the PNG masks' mean IoU with the ground truth is {np.mean(scores):.3f}"
    assert len(manifest["frames"] if isinstance(manifest, dict) and "frames" in manifest else manifest) > 0

    coco = COCO(str(files["coco.json"]))
    assert len(coco.getImgIds()) == len(lines)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["sounding object"]
    for i, line in enumerate(lines):
        image = coco.loadImgs(i + 1)[0]
        assert (image["height"], image["width"]) == (height, width)
        assert abs(image["pts_s"] - line["pts_s"]) < 1e-6
        drawn = np.zeros((height, width), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=i + 1)):
            drawn |= coco.annToMask(ann).astype(bool)
            assert ann["area"] == int(coco_mask.area(ann["segmentation"]))
        assert np.array_equal(drawn, stream[i].astype(bool)), f"frame {i}: COCO differs from the stream"

    def probe(path: Path) -> dict:
        out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
                             check=True, capture_output=True, text=True).stdout
        return next(s for s in json.loads(out)["streams"] if s["codec_type"] == "video")

    outline = probe(files["overlay-outline.mp4"])
    assert (outline["codec_name"], outline["width"], outline["height"]) == ("h264", width, height)
    assert int(outline["nb_read_frames"]) == len(lines)
    side = probe(files["side-by-side.mp4"])
    assert (side["width"], side["height"]) == (2 * width, height)
    assert int(side["nb_read_frames"]) == len(lines)
    alpha = probe(files["alpha.webm"])
    assert alpha["codec_name"] == "vp9"
    assert (alpha["width"], alpha["height"]) == (width, height)
    assert str(alpha.get("tags", {}).get("alpha_mode", alpha.get("tags", {}).get("ALPHA_MODE"))) == "1"


def test_docs_render_with_the_network_to_anything_but_the_service_blocked(browser: Browser, service: Service) -> None:
    context = browser.new_context()
    blocked: list[str] = []

    def only_the_service(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(service.base_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    page = context.new_page()
    try:
        page.goto(service.base_url + "/docs")
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible(timeout=30_000)
        assert operations.count() >= 5
        expect(page.locator(".opblock-summary-path", has_text="/segment").first).to_be_visible()
        assert not blocked, f"/docs asked for outside resources: {blocked}"
    finally:
        context.close()


def test_the_confidence_view_draws_the_streams_probabilities_as_a_heat_map(
        page: Page, page_url: str, service: Service, clip: Path) -> None:
    import base64

    open_page(page, page_url, key=API_KEY)
    page.check("#want-confidence")
    job_id = _upload(page, clip)
    option = page.locator('#mask-style option[value="confidence"]')
    expect(option).to_be_enabled()
    page.select_option("#mask-style", "confidence")
    page.fill("#scrubber", "20")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_have_attribute("data-frame", "20")
    expect(canvas).to_have_attribute("data-view", "confidence")
    line = _stream(service, job_id)[20]
    h, w = line["confidence"]["size"]
    probability = np.frombuffer(base64.b64decode(line["confidence"]["data"]), np.uint8).reshape(h, w)
    drawn = page.evaluate("""() => { const c = document.getElementById('mask-canvas');
        return { w: c.width, h: c.height, rgba: Array.from(c.getContext('2d').getImageData(0, 0, c.width,
                 c.height).data) }; }""")
    rgba = np.array(drawn["rgba"], dtype=np.uint8).reshape(drawn["h"], drawn["w"], 4)
    assert (rgba[..., 3] > 0).all(), "the heat map covers the frame"
    # hot where the model is sure (red up, blue down), cold where it is not: measured at the map's own cells
    rows = (np.arange(h) + 0.5) * drawn["h"] / h
    cols = (np.arange(w) + 0.5) * drawn["w"] / w
    cells = rgba[rows.astype(int)][:, cols.astype(int)].astype(int)
    hot, cold = probability > 200, probability < 50
    assert hot.any()
    assert cold.any()
    assert cells[hot][:, 0].mean() > cells[cold][:, 0].mean() + 80
    assert cells[hot][:, 2].mean() < cells[cold][:, 2].mean() - 80
    page.select_option("#mask-style", "fill")
    expect(canvas).to_have_attribute("data-view", "mask")


def test_a_tall_video_fits_the_window_with_the_frame_slider_in_view(browser: Browser, page_url: str,
                                                                  tmp_path: Path) -> None:
    """The issue: a tall video pushed the frame slider below the fold. The player's box keeps the video's shape
    and leaves room for the slider and the waveform under it."""
    from worker.media.samples import make_video

    tall = make_video(tmp_path / "tall.mp4", duration_s=1.0, size=(96, 320), fps=10)
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    try:
        open_page(page, page_url, key=API_KEY)
        _upload(page, tall)
        for _ in range(50):
            if page.evaluate("document.getElementById('video').videoWidth"):
                break
            page.wait_for_timeout(100)
        page.locator("#result").evaluate("el => el.scrollIntoView({block: 'start'})")
        stage = page.locator("#upload-stage").bounding_box()
        slider = page.locator("#scrubber").bounding_box()
        assert stage is not None
        assert slider is not None
        assert abs(stage["width"] / stage["height"] - 96 / 320) < 0.02, stage
        assert slider["y"] + slider["height"] <= 720, f"the slider is below the fold: {slider}"
    finally:
        context.close()
