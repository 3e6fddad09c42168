"""Fixtures for the worker tests: `clip("name")` gives a session-cached synthetic media file."""

from __future__ import annotations

import shutil

import pytest
from media_clips import Clips


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    """`clip("mp4")` -> Path of a session-cached synthetic file (see VIDEO_CLIPS and Clips._special)."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg/ffprobe not installed")
    return Clips(tmp_path_factory.mktemp("media"))
