"""Issue #20 end to end with real processes: real models through `avs serve`, their cards everywhere.

* An AVSS checkpoint (71 classes, the AVSBench names; random weights of the tiny AVSegFormer) served by
  `avs serve`: `GET /model` names its classes, the mask stream carries one RLE per present class with its
  AVSBench name, and the overlay colours each class.
* A checkpoint in the official AVSegFormer layout (ResNet-50, S4; random weights built from the committed
  manifest), imported with `avs weights import-avsegformer` and served at its own input size (512) (slow).
* The demo model's "synthetic shapes only" notice in `avs serve`'s start-up output and `GET /model`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from worker.media.samples import make_video

from .conftest import Service, running_embedded


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("real-models") / "clip.mp4", duration_s=0.5, size=(96, 72), fps=10)


def _segment(service: Service, video: Path, **fields: str) -> tuple[list[dict], dict]:
    with service.client() as http, video.open("rb") as f:
        response = http.post("/segment", files={"file": (video.name, f, "video/mp4")}, data=fields)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        lines = [json.loads(line) for line in http.get(f"/jobs/{job_id}/masks", timeout=600).text.splitlines()]
        deadline = time.monotonic() + 600
        while (record := http.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    return lines, record


def test_the_demo_model_says_it_knows_only_synthetic_shapes(tmp_path: Path) -> None:
    with running_embedded(tmp_path / "data") as service:
        with service.client() as http:
            body = http.get("/model").json()
        startup = service.procs[0].tail(100_000)
    assert "synthetic shapes only, not for real video" in body["model"]["warning"]
    assert "avs weights import-avsegformer" in body["model"]["warning"]
    assert body["model"]["card"]["title"].startswith("AVESFormer-tiny trained on synthetic S4 scenes")
    assert body["workers"]
    assert "model avesformer-tiny" in startup
    assert "synthetic shapes only, not for real video" in startup


def test_a_71_class_checkpoint_streams_the_avsbench_class_names(tmp_path: Path, clip: Path) -> None:
    import torch

    from model.build import build_model
    from model.checkpoint import save_checkpoint
    from model.class_names import AVSS_CLASS_NAMES
    from model.variants import get_config

    cfg = get_config("avsegformer-tiny").replace(num_classes=71, class_names=tuple(AVSS_CLASS_NAMES))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model(cfg), cfg, tmp_path / "avss-tiny.safetensors",
                                 card={"title": "AVSegFormer-tiny, 71 AVSS classes, random weights (a test)"})
    with running_embedded(tmp_path / "data", {"AVS_CHECKPOINT": str(checkpoint)}) as service:
        with service.client() as http:
            model = http.get("/model").json()["model"]
        lines, record = _segment(service, clip, overlay="true")
        with service.client() as http:
            overlay = http.get(f"/jobs/{record['job_id']}/overlay.mp4")
    assert (model["num_classes"], model["class_names"]) == (71, list(AVSS_CLASS_NAMES))
    assert model["warning"] is None  # it has a card (the test's), which warns of nothing
    assert record["status"] == "succeeded", record
    frames = [line for line in lines if "frame_index" in line]
    assert frames
    assert lines[-1]["end"] is True
    segments = [segment for line in frames for segment in line["segments"]]
    assert segments, "random weights light up some classes"
    for segment in segments:
        assert 1 <= segment["class_id"] <= 70
        assert segment["class_name"] == AVSS_CLASS_NAMES[segment["class_id"]]
    assert overlay.status_code == 200
    assert overlay.content[4:8] == b"ftyp"


@pytest.mark.slow
def test_an_official_r50_s4_checkpoint_imported_and_served_at_512(tmp_path: Path, clip: Path) -> None:
    import subprocess
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
    from test_avsegformer_import import official_state

    official = tmp_path / "S4_best.pth"
    torch.save(official_state("r50", "s4", device="cpu"), official)
    imported = tmp_path / "r50-s4.safetensors"
    done = subprocess.run([sys.executable, "-m", "app.cli", "weights", "import-avsegformer", str(official),
                           "--out", str(imported), "--json"], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["setting"], report["backbone"]) == ("s4", "r50")
    with running_embedded(tmp_path / "data", {"AVS_CHECKPOINT": str(imported), "AVS_BATCH_SIZE": "2"}) as service:
        with service.client() as http:
            model = http.get("/model").json()["model"]
        lines, record = _segment(service, clip)
    assert model["input_size"] == 512
    assert model["card"]["metrics"]["mIoU"] == 76.38
    assert record["status"] == "succeeded", record
    frames = [line for line in lines if "frame_index" in line]
    assert len(frames) == record["progress"]["frames_total"]
    assert all(frame["size"] == [72, 96] for frame in frames)  # masks at the video's size, from 512 x 512 input
