"""The web page with a 71-class (AVSS) model, in Chromium: each class drawn in its own colour, a legend that
names the classes on screen with the model's class names and the same colours, outlines per class.

The checkpoint is the tiny AVSegFormer with 71 classes and random weights (as tests/e2e/test_real_models.py
makes it): random weights light up some classes, which is all the page needs to be checked against.
Set AVS_WEB_SCREENSHOTS=DIR to keep the README's screenshot of the legend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from app.cli.demo import make_sample_clip
from worker.masks import record_labels

from .conftest import Service, running_embedded
from .web_support import checked_page, keep_screenshot, launched_chromium, open_page

_PIXELS = """() => {
    const c = document.getElementById('mask-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return { w: c.width, h: c.height, rgba: Array.from(d) };
}"""


@pytest.fixture(scope="module")
def avss_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import torch

    from model.build import build_model
    from model.checkpoint import save_checkpoint
    from model.class_names import AVSS_CLASS_NAMES
    from model.variants import get_config

    root = tmp_path_factory.mktemp("avss-web")
    cfg = get_config("avsegformer-tiny").replace(num_classes=71, class_names=tuple(AVSS_CLASS_NAMES))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model(cfg), cfg, root / "avss-tiny.safetensors",
                                 card={"title": "AVSegFormer-tiny, 71 AVSS classes, random weights (a test)",
                                       "trained_on": "nothing (random weights)"})
    with running_embedded(root / "data", {"AVS_CHECKPOINT": str(checkpoint)}) as service:
        yield service


@pytest.fixture
def page(avss_service: Service) -> Iterator[Page]:
    with launched_chromium() as browser, checked_page(browser) as page:
        yield page


def test_a_71_class_stream_is_drawn_in_class_colours_with_a_legend_of_the_model_names(
        page: Page, avss_service: Service, tmp_path: Path) -> None:
    from model.class_names import AVSS_CLASS_NAMES

    clip = make_sample_clip(tmp_path / "clip")
    open_page(page, avss_service.base_url + "/", key=None)
    expect(page.locator("#model-detail")).to_contain_text("71 classes")
    page.click("#model-more summary")  # the model card's facts
    expect(page.locator("#model-facts")).to_contain_text("random weights")
    page.set_input_files("#file", str(clip))
    page.click("#submit")
    expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=120_000)
    job_id = page.locator("body").get_attribute("data-job")
    with httpx.Client(base_url=avss_service.base_url, timeout=60) as http:
        lines = [json.loads(line) for line in http.get(f"/jobs/{job_id}/masks").text.splitlines() if line.strip()]
    lines = [line for line in lines if "frame_index" in line]
    # the frame with the most classes on it
    frame = max(range(len(lines)), key=lambda i: len({s["class_id"] for s in lines[i]["segments"]}))
    labels = record_labels(lines[frame])
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert len(ids) >= 2, "random weights light up several classes"
    page.fill("#scrubber", str(frame))
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_have_attribute("data-frame", str(frame))
    expect(canvas).to_have_attribute("data-classes", " ".join(map(str, ids)))

    # the legend names every class on this frame (marked) with the model's name, and its swatch has the colour
    # the canvas uses for exactly that class's pixels
    drawn = page.evaluate(_PIXELS)
    rgba = np.array(drawn["rgba"], dtype=np.uint8).reshape(drawn["h"], drawn["w"], 4)
    colours = set()
    for class_id in ids:
        item = page.locator(f'#legend li[data-class-id="{class_id}"]')
        expect(item).to_have_text(AVSS_CLASS_NAMES[class_id])
        expect(item).to_have_class("now")
        swatch = item.locator(".swatch").evaluate("el => getComputedStyle(el).backgroundColor")
        rgb = tuple(int(v) for v in swatch[4:-1].split(","))
        pixels = rgba[labels == class_id]
        assert (pixels[:, 3] > 0).all()
        # (a canvas keeps colours premultiplied by alpha: read back, they may be 1 or 2 off)
        off = np.abs(pixels[:, :3].astype(int) - np.array(rgb)[None]).max()
        assert off <= 2, f"class {class_id}: canvas colours differ from the legend's {rgb} by {off}"
        colours.add(rgb)
    assert len(colours) == len(ids), "two classes share a colour"
    assert (rgba[labels == 0][:, 3] == 0).all(), "background drawn"
    keep_screenshot(page, "web-classes.jpg")

    # outlines per class: opaque border pixels in the class's colour, the inside at the fill opacity
    page.select_option("#mask-style", "both")
    expect(canvas).to_have_attribute("data-frame", str(frame))
    drawn = page.evaluate(_PIXELS)
    alpha = np.array(drawn["rgba"], dtype=np.uint8).reshape(drawn["h"], drawn["w"], 4)[..., 3]
    assert (alpha == 255).any()
    assert ((alpha > 0) == (labels > 0)).all()
    assert (alpha[labels > 0] == 255).sum() < (labels > 0).sum()
