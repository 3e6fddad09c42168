"""Previews and exports end to end: `avs serve` (API + a real Celery worker on the embedded broker, the shipped
model), ffmpeg, real uploads of containers a browser cannot play (AVI with MPEG-4 Part 2, MPEG-TS)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from worker.mask_scoring import frame_iou
from worker.masks import decode_rle, read_mask_lines

from .conftest import Service

AVS = str(Path(sys.executable).with_name("avs"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A synthetic S4 clip with its ground truth, remuxed/re-encoded as AVI (mpeg4 + mp3) and MPEG-TS."""
    root = tmp_path_factory.mktemp("clip")
    subprocess.run([AVS, "synth", "--out", str(root), "--subset", "s4", "--videos", "1", "--seed", "77",
                    "--split", "test", "--size", "96"], check=True, capture_output=True, timeout=300)
    mp4 = next((root / "mp4").glob("*.mp4"))
    out = {"gt": mp4.with_suffix(".gt.ndjson"), "avi": root / "clip.avi", "ts": root / "clip.ts"}
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-c:v", "mpeg4", "-q:v", "2", "-c:a", "libmp3lame",
                    str(out["avi"])], check=True, timeout=120)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-c", "copy", "-f", "mpegts", str(out["ts"])],
                   check=True, timeout=120)
    return out


def _submit_and_wait(service: Service, video: Path, timeout: float = 240) -> dict:
    with service.client() as http:
        with video.open("rb") as fh:
            response = http.post("/segment", files={"file": (video.name, fh)})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = http.get(f"/jobs/{job_id}").json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                assert view["status"] == "succeeded", view
                return view
            time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def _mask_lines(service: Service, job_id: str, path: Path) -> list[dict]:
    with service.client() as http:
        text = http.get(f"/jobs/{job_id}/masks").text
    *frames, end = [json.loads(line) for line in text.splitlines()]
    assert end["end"] is True
    assert end["frames"] == len(frames)
    path.write_text("".join(json.dumps(f) + "\n" for f in frames))
    return frames


def _frame_times(path: Path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=best_effort_timestamp_time:stream=codec_name,width,height", "-of", "json",
                          str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    return [float(f["best_effort_timestamp_time"]) for f in json.loads(out)["frames"]]


def test_preview_of_avi_and_mpegts_is_frame_exact(embedded_service: Service, clips: dict[str, Path],
                                                  tmp_path: Path) -> None:
    for kind in ("avi", "ts"):
        view = _submit_and_wait(embedded_service, clips[kind])
        job_id = view["job_id"]
        assert view["media"] == {"browser_playable": False, "preview_url": f"/jobs/{job_id}/preview.mp4",
                                 "preview_start_s": 0.0}, kind
        lines = _mask_lines(embedded_service, job_id, tmp_path / f"{kind}.ndjson")
        with embedded_service.client() as http:
            response = http.get(view["media"]["preview_url"])
            assert (response.status_code, response.headers["content-type"]) == (200, "video/mp4"), kind
            ranged = http.get(view["media"]["preview_url"], headers={"Range": "bytes=0-99"})
            assert (ranged.status_code, len(ranged.content)) == (206, 100)  # seekable in a <video>
        preview = tmp_path / f"{kind}.mp4"
        preview.write_bytes(response.content)
        times = _frame_times(preview)
        assert len(times) == len(lines), kind
        # the first frame at 0 s, mask N's frame at pts_s N - pts_s 0: what the page maps media time by (1e-4 s)
        t0 = lines[0]["pts_s"]
        assert times[0] == 0.0, kind
        assert max(abs(t - (line["pts_s"] - t0)) for t, line in zip(times, lines, strict=True)) < 1e-4, kind


def _fetch_export(service: Service, job_id: str, name: str, timeout: float = 120) -> bytes:
    with service.client() as http:
        assert http.post(f"/jobs/{job_id}/exports/{name}").status_code == 202
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = http.get(f"/jobs/{job_id}/exports/{name}")
            if response.status_code == 200:
                return response.content
            assert response.status_code == 202, response.text
            time.sleep(float(response.headers["retry-after"]) / 4)
    raise AssertionError(f"{name} of job {job_id} not ready after {timeout} s")


def test_exports_match_the_stream_and_the_ground_truth(embedded_service: Service, clips: dict[str, Path],
                                                       tmp_path: Path) -> None:
    view = _submit_and_wait(embedded_service, clips["avi"])
    job_id = view["job_id"]
    lines = _mask_lines(embedded_service, job_id, tmp_path / "stream.ndjson")
    truth = {r["frame_index"]: decode_rle(r["counts"], r["size"]) for r in read_mask_lines(clips["gt"])}

    with zipfile.ZipFile(io.BytesIO(_fetch_export(embedded_service, job_id, "masks.zip"))) as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        assert len(pngs) == len(lines)
        manifest = json.loads(archive.read("manifest.json"))
        for name, line in zip(pngs, lines, strict=True):
            mask = np.asarray(Image.open(io.BytesIO(archive.read(name)))) == 255
            streamed = decode_rle(line["counts"], line["size"])
            assert np.array_equal(mask, streamed > 0), name
            # the PNG scores against the ground truth exactly as the stream does
            assert frame_iou(mask, truth[line["frame_index"]]) == frame_iou(streamed, truth[line["frame_index"]])
        assert [f["pts_s"] for f in manifest["frames"]] == [line["pts_s"] for line in lines]

    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(_fetch_export(embedded_service, job_id, "coco.json"))
    coco = COCO(str(coco_path))
    model = embedded_service.client().get("/model").json()["model"]
    names = model["class_names"][1:] if len(model["class_names"]) > 1 else ["sounding object"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == names
    assert len(coco.getImgIds()) == len(lines)
    for line in lines:
        streamed = decode_rle(line["counts"], line["size"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=line["frame_index"] + 1))
        union = np.zeros_like(streamed)
        for annotation in annotations:
            union |= coco.annToMask(annotation)
        assert np.array_equal(union, streamed), line["frame_index"]

    listed = {e["name"]: e for e in embedded_service.client().get(f"/jobs/{job_id}/exports").json()["exports"]}
    assert (listed["masks.zip"]["status"], listed["coco.json"]["status"]) == ("ready", "ready")
    assert listed["coco.json"]["size_bytes"] == coco_path.stat().st_size

    # deleted with the job: every route of it says so
    with embedded_service.client() as http:
        assert http.delete(f"/jobs/{job_id}").status_code == 200
        assert not (embedded_service.data_dir / "jobs" / job_id / "exports").exists()
        response = http.get(f"/jobs/{job_id}/exports/coco.json")
        assert (response.status_code, response.json()["error"]["code"]) == (410, "job_deleted")
