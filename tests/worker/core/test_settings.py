"""Settings are validated when a process starts, with messages that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.core.media.media_info import MediaLimits
from worker.core.settings import ServiceSettings, SettingsError, get_settings

AVS = str(Path(sys.executable).with_name("avs"))


def test_defaults_come_from_the_media_limits() -> None:
    settings = ServiceSettings(_env_file=None)
    assert settings.media_limits() == MediaLimits()
    assert ServiceSettings(_env_file=None, max_duration_s=12.5).media_limits().max_duration_s == 12.5


@pytest.mark.parametrize(("variable", "value"), [("AVS_BATCH_SIZE", "0"), ("AVS_MAX_DURATION_S", "-1"),
                                                 ("AVS_DEVICE", "gpu0"), ("AVS_MAX_BACKLOG", "0"),
                                                 ("AVS_WORKER_METRICS_PORT", "70000")])
def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=variable):
            get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_serve_and_worker_refuse_bad_settings_at_start(tmp_path: Path, command: list[str]) -> None:
    env = {**os.environ, "AVS_BATCH_SIZE": "0", "AVS_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([AVS, *command], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "avs: error [invalid_settings]" in proc.stderr
    assert "AVS_BATCH_SIZE" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was started or created


@pytest.mark.parametrize("value", ["files", "memory"])
def test_a_left_over_state_backend_other_than_redis_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                     value: str) -> None:
    """Issue #24: Redis is the only state store; an environment still saying `AVS_STATE_BACKEND=files` must not
    start a service that silently ignores the job.json files it expects."""
    monkeypatch.setenv("AVS_STATE_BACKEND", value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=r"AVS_STATE_BACKEND.*only state backend"):
            get_settings()
    finally:
        get_settings.cache_clear()
    assert ServiceSettings(_env_file=None, state_backend="redis").state_prefix == "avs:state:"
