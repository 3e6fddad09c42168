"""The embedded broker keeps every file it writes under the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.core.celery_app import create_celery
from worker.core.settings import ServiceSettings


def test_embedded_broker_writes_nothing_in_the_working_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path / "data", broker_url=None, api_keys=[])
    app = create_celery(settings)
    with app.connection_for_write() as conn:  # publishing declares and binds the exchange
        app.send_task("avs.segment", args=["job-1"], connection=conn)

    assert list(cwd.iterdir()) == []  # kombu's default control folder is ./control
    assert (settings.broker_dir / "control" / "celery.exchange").is_file()
    assert len(list((settings.broker_dir / "queue").iterdir())) == 1  # the message itself
