"""Issue #10 over HTTP: the API probes uploads with the same rules as the CLI, so limits, durations, expected
frames, containers, the `fps` option and the audio track come out the same before a job exists."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from api_support import Recorder, job_dirs
from fastapi.testclient import TestClient

from app.api.main import create_app
from worker.core.settings import ServiceSettings
from worker.core.state import open_store

FF = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]
SINE = "sine=frequency=440:sample_rate"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-real-world")

    def run(name: str, *args: str, pipe: bool = False) -> None:
        out = subprocess.run([*FF, *args, *(["pipe:1"] if pipe else [str(root / name)])], check=True,
                             capture_output=True, timeout=120)
        if pipe:
            (root / name).write_bytes(out.stdout)

    # the reproducers (kinds 2 and 3), a second container of kind 5, a sound file, two audio tracks
    run("nodur.webm", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4", "-f", "lavfi", "-i",
        f"{SINE}=48000:duration=4", "-c:v", "libvpx", "-b:v", "200k", "-c:a", "libopus", "-f", "webm", pipe=True)
    run("clip.mp4", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=2", "-f", "lavfi", "-i",
        f"{SINE}=48000:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    run("offset.mkv", "-i", str(root / "clip.mp4"), "-c", "copy", "-output_ts_offset", "20")
    run("x.ogv", "-i", str(root / "clip.mp4"), "-c:v", "libtheora", "-c:a", "libvorbis")
    run("sound.wav", "-f", "lavfi", "-i", f"{SINE}=44100:duration=1")
    run("two.mkv", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=1", "-f", "lavfi", "-i",
        "sine=frequency=220:duration=1", "-f", "lavfi", "-i", "sine=frequency=1760:duration=1", "-map", "0:v",
        "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
        "-disposition:a:0", "0", "-disposition:a:1", "default")
    return {p.name: p for p in root.iterdir()}


def _post(client: TestClient, path: Path, **fields: str):
    with open(path, "rb") as fh:
        return client.post("/segment", files={"file": (path.name, fh, "application/octet-stream")}, data=fields)


def _record(settings: ServiceSettings, job_id: str) -> dict:
    return open_store(settings).get(job_id).model_dump(mode="json")


def test_a_file_without_recorded_duration_is_refused_when_too_long(make_settings: Callable[..., ServiceSettings],
                                                                    files: dict[str, Path]) -> None:
    settings = make_settings(max_duration_s=2.0)
    recorder = Recorder()
    with TestClient(create_app(settings, task_sender=recorder)) as client:
        response = _post(client, files["nodur.webm"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "too_long"
    assert job_dirs(settings) == []
    assert recorder.calls == []


def test_a_start_offset_counts_neither_as_duration_nor_as_frames(make_settings: Callable[..., ServiceSettings],
                                                                  files: dict[str, Path]) -> None:
    settings = make_settings(max_duration_s=10.0)
    with TestClient(create_app(settings, task_sender=Recorder())) as client:
        response = _post(client, files["offset.mkv"])
        assert response.status_code == 202, response.text
        view = client.get(f"/jobs/{response.json()['job_id']}").json()
    assert view["video"]["duration_s"] == pytest.approx(2.0, abs=0.02)
    assert view["video"]["frames"] == view["progress"]["frames_total"] == 50  # not 550


def test_a_tiny_fps_is_accepted_and_expects_one_frame(client: TestClient, settings: ServiceSettings,
                                                      files: dict[str, Path]) -> None:
    response = _post(client, files["clip.mp4"], fps="0.01")
    assert response.status_code == 202, response.text
    assert _record(settings, response.json()["job_id"])["progress"]["frames_total"] == 1


def test_everyday_containers_and_sound_files(client: TestClient, files: dict[str, Path]) -> None:
    response = _post(client, files["x.ogv"])
    assert response.status_code == 202, response.text
    assert client.get(f"/jobs/{response.json()['job_id']}").json()["video"]["container"] == "ogg"
    response = _post(client, files["sound.wav"])
    assert (response.status_code, response.json()["error"]["code"]) == (422, "no_video_stream")


def test_the_heard_audio_track_is_in_the_job(client: TestClient, files: dict[str, Path]) -> None:
    response = _post(client, files["two.mkv"])
    assert response.status_code == 202, response.text
    audio = client.get(f"/jobs/{response.json()['job_id']}").json()["video"]["audio"]
    assert (audio["stream_index"], audio["tracks"]) == (2, 2)
