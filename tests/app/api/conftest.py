"""Fixtures for the API tests: real media files (made once per session), settings over a tmp data dir,
a recording task sender and a TestClient."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Recorder
from fastapi.testclient import TestClient

from app.api.main import create_app
from worker.core.settings import ServiceSettings
from worker.media.samples import make_audio, make_video


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ok (1 s, 64x48, with sound), no_audio, audio_only (.m4a), truncated (an mp4 cut short), text, long (3 s)."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg/ffprobe not installed")
    root = tmp_path_factory.mktemp("api-media")
    files = {
        "ok": make_video(root / "ok.mp4", duration_s=1.0, size=(64, 48)),
        "no_audio": make_video(root / "no_audio.mp4", duration_s=1.0, size=(64, 48), audio=False),
        "audio_only": make_audio(root / "audio_only.m4a", duration_s=1.0),
        "long": make_video(root / "long.mp4", duration_s=3.0, size=(64, 48)),
    }
    data = files["ok"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    files["truncated"] = root / "truncated.mp4"
    (root / "notes.txt").write_text("this is not a video\n" * 20)
    files["text"] = root / "notes.txt"
    return files


@pytest.fixture
def make_settings(tmp_path: Path, state_env: object) -> Callable[..., ServiceSettings]:
    """Settings over the test's data directory and its state Redis and prefix (`state_env`, tests/conftest.py)."""

    def make(**overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "broker_url": None, "api_keys": [],
                                  "max_upload_bytes": 8 << 20, "max_backlog": 100, "retry_after_s": 7,
                                  "heartbeat_s": 5.0, "cleanup_interval_s": 3600.0}
        values.update(overrides)
        return ServiceSettings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., ServiceSettings]) -> ServiceSettings:
    return make_settings()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(settings: ServiceSettings, recorder: Recorder) -> Iterator[TestClient]:
    with TestClient(create_app(settings, task_sender=recorder)) as test_client:
        yield test_client
