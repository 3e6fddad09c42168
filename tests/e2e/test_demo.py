"""The README's main command, `avs demo` (what `make demo` runs), works and reports a sane summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker.core.media.probe import count_frames
from worker.masks import read_mask_lines

AVS = str(Path(sys.executable).with_name("avs"))


def test_avs_demo_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVS_", "PROMETHEUS_"))}
    result = subprocess.run([AVS, "demo", "--out", str(tmp_path), "--json"], capture_output=True, text=True,
                            timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    video = Path(summary["video"])
    assert summary["frames"] == count_frames(video) == len(list(read_mask_lines(Path(summary["masks"]))))
    assert 0.0 <= summary["miou_vs_ground_truth"] <= 1.0
    assert summary["seconds_to_first_mask"] <= summary["seconds_total"]
    assert count_frames(Path(summary["overlay"])) == summary["frames"]
