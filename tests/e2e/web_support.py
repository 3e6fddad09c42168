"""What the web page's browser tests run on: Debian's Chromium driven by Playwright, nginx in front of the API
under a path prefix (as a reverse proxy that strips it would serve it), and the page's screenshots read back
as pixels."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from worker.masks import decode_rle

from .conftest import free_port

CHROMIUM = os.environ.get("AVS_CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> str:
    """Debian's Chromium (nothing is downloaded at run time); a clear failure when it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash scripts/install-test-deps.sh` installs Debian's chromium")
    return CHROMIUM


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright, closed afterwards (a module's browser fixture)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def checked_page(browser: Browser) -> Iterator[Page]:
    """A fresh 1000x1000 page (downloads accepted); an uncaught error in the page fails the test afterwards."""
    context = browser.new_context(viewport={"width": 1000, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def clip_ground_truth(clip: Path) -> list[np.ndarray]:
    """The sample clip's true masks ([H, W] bool per frame), from the `.gt.ndjson` beside it."""
    lines = [json.loads(line) for line in clip.with_suffix(".gt.ndjson").read_text().splitlines() if line.strip()]
    return [decode_rle(line["counts"], line["size"]).astype(bool) for line in lines]


def nginx_path() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        pytest.fail("nginx is missing: `bash scripts/install-test-deps.sh` installs it")
    return path


@contextlib.contextmanager
def prefix_proxy(upstream: str, prefix: str, work_dir: Path) -> Iterator[str]:
    """nginx on a free 127.0.0.1 port serving `upstream` (http://127.0.0.1:PORT) under `prefix` (stripped on
    the way in, WebSocket upgrades passed through, bodies streamed). Yields the page's URL, `.../prefix/`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers as root only where the master is root
    temp = "".join(f"  {name}_temp_path {work_dir / name};\n"
                   for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (work_dir / "nginx.conf").write_text(f"""{user}worker_processes 1;
daemon off;
pid {work_dir / 'nginx.pid'};
error_log {work_dir / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp}  client_max_body_size 0;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location = {prefix} {{ return 301 {prefix}/; }}
    location {prefix}/ {{
      proxy_pass {upstream}/;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
""")
    proc = subprocess.Popen([nginx_path(), "-p", str(work_dir), "-e", str(work_dir / "error.log"),
                             "-c", str(work_dir / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{prefix}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def png_pixels(png: bytes) -> np.ndarray:
    """[H, W, 3] uint8 of a screenshot."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`mask` [h, w] resampled to `size` (rows, cols) by nearest neighbour."""
    rows = (np.arange(size[0]) * mask.shape[0] / size[0]).astype(int)
    cols = (np.arange(size[1]) * mask.shape[1] / size[1]).astype(int)
    return mask[rows][:, cols]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def open_page(page: Page, url: str, *, key: str | None) -> None:
    """Load the page, wait for its modules, and (unless `key` is None) save the API key in its field."""
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if key is not None:
        page.click("details.settings summary")
        page.fill("#api-key", key)
        page.click("#key-form button")


def keep_screenshot(page: Page, name: str) -> None:
    """With AVS_WEB_SCREENSHOTS=DIR, the whole page as DIR/name (JPEG): the README's pictures."""
    folder = os.environ.get("AVS_WEB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), type="jpeg", quality=80, full_page=True)


CANVAS_ALPHA = """id => {
    const c = document.getElementById(id);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const alpha = new Array(c.width * c.height);
    for (let i = 0; i < alpha.length; i += 1) alpha[i] = d[4 * i + 3] > 0 ? 1 : 0;
    return alpha;
}"""
"""JS for page.evaluate(CANVAS_ALPHA, id): 1 where the canvas has any paint, row-major."""


def tint(page: Page) -> np.ndarray:
    """[H, W] bool: where the mask is drawn on screen, the player's box with the mask shown minus the same box
    with it hidden."""
    stage = page.locator("#upload-stage")
    shown = png_pixels(stage.screenshot()).astype(int)
    page.click("#show-mask")
    hidden = png_pixels(stage.screenshot()).astype(int)
    page.click("#show-mask")
    return np.abs(shown - hidden).sum(axis=2) > 60


def assert_frames_drawn_where_truth_is(page: Page, ground_truth: list[np.ndarray], frames: tuple[int, ...],
                                       min_iou: float = 0.7) -> None:
    """Scrub to each of `frames` and measure the tint on screen against that frame's ground truth: IoU at least
    `min_iou`, and no other frame fits better than it or a neighbour (the picture and mask are frame-accurate)."""
    for frame in frames:
        page.fill("#scrubber", str(frame))
        expect(page.locator("#mask-canvas")).to_have_attribute("data-frame", str(frame))
        page.wait_for_timeout(150)  # the canvas paints with the next frame
        drawn = tint(page)
        scores = [iou(drawn, resize_nearest(truth, drawn.shape)) for truth in ground_truth]
        assert scores[frame] >= min_iou, f"frame {frame}: IoU {scores[frame]:.3f} with its ground truth"
        assert abs(int(np.argmax(scores)) - frame) <= 1, f"frame {frame} drawn like frame {np.argmax(scores)}"
