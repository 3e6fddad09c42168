"""`worker.exports.run_export` on a job the real runner made (ffmpeg decoding a real AVI; the model is the runner
tests' fake, whose ground truth is known: the left half of every frame sounds). Each export is checked against
that ground truth and against the mask stream it was made from."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from test_job_runner import FakePredictor, _frame_times, _streams, _submit

from worker.core.exports import EXPORTS, claim, export_path, export_state
from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state import open_store
from worker.exports import run_export
from worker.exports.videos import outline
from worker.job_runner import run_job
from worker.masks import decode_rle, read_mask_lines

W, H, FPS = 64, 48, 10


@pytest.fixture(scope="module")
def avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exports") / "clip.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate={FPS}:duration=1.2",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1.2", "-c:v", "mpeg4", "-q:v", "3",
                    "-c:a", "libmp3lame", str(path)], check=True, timeout=120)
    return path


@pytest.fixture
def settings(tmp_path: Path, state_env: object) -> ServiceSettings:
    return ServiceSettings(_env_file=None, data_dir=tmp_path / "data", batch_size=4, worker_metrics_port=0)


@pytest.fixture
def store(settings: ServiceSettings) -> JobStore:
    return open_store(settings)


@pytest.fixture
def job(store: JobStore, settings: ServiceSettings, avi: Path) -> str:
    job_id = _submit(store, avi)
    result = run_job(job_id, store=store, settings=settings, predictor_factory=FakePredictor)
    assert result["status"] == "succeeded"
    return job_id


def _export(store: JobStore, settings: ServiceSettings, job_id: str, name: str) -> Path:
    assert claim(store.job_dir(job_id), name)
    result = run_export(job_id, name, store=store, settings=settings)
    assert result["status"] == "ready", result
    assert export_state(store.job_dir(job_id), name) == ("ready", None)
    return export_path(store.job_dir(job_id), name)


def _truth() -> np.ndarray:
    truth = np.zeros((H, W), dtype=bool)
    truth[:, : W // 2] = True  # the fake model: the left half sounds
    return truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_png_zip_one_mask_per_frame_matching_the_truth(store: JobStore, settings: ServiceSettings, job: str) -> None:
    lines = list(read_mask_lines(store.masks_path(job)))
    with zipfile.ZipFile(_export(store, settings, job, "masks.zip")) as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        manifest = json.loads(archive.read("manifest.json"))
        assert pngs == [f"frame_{i:06d}.png" for i in range(len(lines))]
        assert len(pngs) == 12  # 1.2 s at 10 frames/s
        assert [f["pts_s"] for f in manifest["frames"]] == [line["pts_s"] for line in lines]
        assert (manifest["binary"], manifest["class_names"]) == (True, [])
        for name, line in zip(pngs, lines, strict=True):
            image = Image.open(io.BytesIO(archive.read(name)))
            assert (image.mode, image.size) == ("L", (W, H))
            pixels = np.asarray(image)
            assert set(np.unique(pixels)) <= {0, 255}
            assert _iou(pixels == 255, _truth()) == 1.0
            assert np.array_equal(pixels == 255, decode_rle(line["counts"], line["size"]) > 0)


def test_coco_json_loads_with_pycocotools_and_matches_the_stream(store: JobStore, settings: ServiceSettings,
                                                                 job: str) -> None:
    path = _export(store, settings, job, "coco.json")
    coco = COCO(str(path))
    lines = list(read_mask_lines(store.masks_path(job)))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "sounding object", "supercategory": "sound"}]
    assert sorted(coco.getImgIds()) == [line["frame_index"] + 1 for line in lines]
    for line in lines:
        image = coco.loadImgs(line["frame_index"] + 1)[0]
        assert (image["width"], image["height"], image["pts_s"]) == (W, H, line["pts_s"])
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert annotation["segmentation"] == {"size": line["size"], "counts": line["counts"]}
        assert np.array_equal(coco.annToMask(annotation), decode_rle(line["counts"], line["size"]))
        assert annotation["area"] == W // 2 * H
        assert annotation["bbox"] == [0.0, 0.0, W / 2, float(H)]
        assert annotation["iscrowd"] == 0


def test_waveform_peaks_and_frame_times(store: JobStore, settings: ServiceSettings, job: str) -> None:
    document = json.loads(_export(store, settings, job, "waveform.json").read_text())
    lines = list(read_mask_lines(store.masks_path(job)))
    assert document["frames_pts_s"] == [line["pts_s"] for line in lines]
    assert document["duration_s"] == pytest.approx(1.2, abs=0.1)
    assert len(document["peaks"]) == pytest.approx(document["duration_s"] * 50, abs=2)
    assert all(0.0 <= p <= 1.0 for p in document["peaks"])
    assert max(document["peaks"]) > 0.05  # the sine is heard


def _rgba_frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-c:v", "libvpx-vp9", "-i", str(path), "-fps_mode", "passthrough",
                          "-f", "rawvideo",
                          "-pix_fmt", "rgba", "-"], check=True, capture_output=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 4)


def test_video_exports_frame_exact_in_shape(store: JobStore, settings: ServiceSettings, job: str) -> None:
    lines = list(read_mask_lines(store.masks_path(job)))
    for name, width, codec in [("overlay-outline.mp4", W, "h264"), ("side-by-side.mp4", 2 * W, "h264"),
                               ("alpha.webm", W, "vp9")]:
        path = _export(store, settings, job, name)
        streams = _streams(path)
        assert (streams["video"]["codec_name"], streams["video"]["width"], streams["video"]["height"]) == (
            codec, width, H), name
        assert "audio" in streams, name
        times = _frame_times(path)
        assert len(times) == len(lines), name
        assert max(abs(t - line["pts_s"]) for t, line in zip(times, lines, strict=True)) < 0.5 / FPS, name
    alpha = _rgba_frames(export_path(store.job_dir(job), "alpha.webm"), W, H)[..., 3]
    assert len(alpha) == len(lines)
    assert alpha[:, :, : W // 2 - 2].min() > 200  # the sounding half is opaque
    assert alpha[:, :, W // 2 + 2:].max() < 55  # the rest is transparent


def test_outline_marks_the_border_of_each_region() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:4] = 1
    edge = outline(labels)
    assert edge[[1, 4, 2], [1, 3, 1]].all()  # corners and a side
    assert not edge[2, 2]  # inside
    assert not edge[0, 0]  # background


def test_too_large_an_export_fails_and_leaves_nothing(store: JobStore, settings: ServiceSettings, job: str) -> None:
    small = settings.model_copy(update={"max_export_bytes": 100})
    assert claim(store.job_dir(job), "coco.json")
    result = run_export(job, "coco.json", store=store, settings=small)
    assert result == {"job_id": job, "name": "coco.json", "status": "failed", "error": "export_too_large"}
    state, error = export_state(store.job_dir(job), "coco.json")
    assert state == "failed"
    assert error["code"] == "export_too_large"
    assert "AVS_MAX_EXPORT_BYTES=100" in error["message"]
    assert sorted(p.name for p in (store.job_dir(job) / "exports").iterdir()) == ["coco.json.error"]


def test_an_export_of_a_job_deleted_meanwhile_writes_nothing(store: JobStore, settings: ServiceSettings,
                                                             job: str) -> None:
    assert claim(store.job_dir(job), "masks.zip")
    store.set_fields(job, deleted=True)
    store.remove_files(job)
    assert run_export(job, "masks.zip", store=store, settings=settings)["status"] == "gone"
    assert sorted(p.name for p in store.job_dir(job).iterdir()) == []  # media gone; the record is in Redis
    assert set(EXPORTS) >= {"masks.zip"}


def test_multi_class_masks_give_class_ids_and_the_model_categories(tmp_path: Path) -> None:
    """A multi-class model's lines (`segments`): PNG pixels are class ids, COCO has one annotation per class
    present, categories are the model's class names without the background."""
    from worker.exports.coco import coco_document
    from worker.exports.png_zip import write_png_zip
    from worker.masks import MaskWriter, mask_records

    names = ["background", "dog", "guitar"]
    labels = np.zeros((2, 8, 10), np.uint8)
    labels[0, :4, :5] = 1
    labels[0, 4:, 5:] = 2
    labels[1, 2:6, 2:6] = 2
    writer = MaskWriter(tmp_path / "masks.ndjson")
    writer.write(mask_records(labels, start_index=0, pts_s=[0.0, 0.04], class_names=names))
    masks = writer.commit()

    document = coco_document(masks, class_names=names, job_id="x")
    assert [(c["id"], c["name"]) for c in document["categories"]] == [(1, "dog"), (2, "guitar")]
    assert [(a["image_id"], a["category_id"], a["area"]) for a in document["annotations"]] == [
        (1, 1, 20), (1, 2, 20), (2, 2, 16)]
    with zipfile.ZipFile(write_png_zip(masks, tmp_path / "masks.zip", class_names=names)) as archive:
        for i in range(2):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(archive.read(f"frame_{i:06d}.png")))), labels[i])
        assert json.loads(archive.read("manifest.json"))["class_names"] == names
