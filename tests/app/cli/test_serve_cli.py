"""`avs serve` options."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("given", "env", "expected"), [
    (None, "", ""), ("/avs", "", "/avs"), ("avs/", "", "/avs"), ("/", "", ""), (None, "/x/y/", "/x/y"),
    ("", "/ignored", ""),
])
def test_serve_root_path_is_normalised(given: str | None, env: str, expected: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli.service_commands import _root_path

    monkeypatch.setenv("AVS_ROOT_PATH", env)
    assert _root_path(given) == expected
