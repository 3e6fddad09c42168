"""`avs bench live`: live sessions through the whole service, in real time, in one run.

Starts the service as `avs serve` does (embedded broker, one worker), makes a `fps` `width`x`height` WebM
clip with sound (VP9 + Opus: what a browser's MediaRecorder sends), and streams it in real time (`ffmpeg
-re`, stream copy) over `/live` from `sessions` clients at once. Reported: frames sent (per the clip) and
received / processed / skipped by the sessions' fps cap / dropped late (per the server's end messages), the
frames lost in transit (sent but never received), the server's frame-to-mask latency (from the frame's
arrival, decoded, to its mask being sent) over every mask, and the client's view: how long after its frame
was due (stream start + pts) each mask came back. The drop target counts the frames that were wanted (not
skipped by the cap) and got no mask: dropped late or lost in transit.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from app.cli.client import local_service
from app.cli.live_client import stream_file

TARGET_DROPPED = 0.05
TARGET_P95_MS = 250.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _sessions(url: str, clip: Path, sessions: int, start: dict[str, Any]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(stream_file(url, clip, start) for _ in range(sessions))))


def bench_live(*, duration_s: float = 20.0, sessions: int = 1, size: tuple[int, int] = (640, 360), fps: float = 25.0,
               window: int = 2, variant: str | None = None, work_dir: str | None = None,
               max_fps: float | None = None, mode: str = "drop_oldest") -> dict[str, Any]:
    """One run (see the module docstring); JSON-ready."""
    from worker.core.media.probe import count_frames
    from worker.media.samples import make_video

    with contextlib.ExitStack() as stack:
        root = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        clip = make_video(root / "live-source.webm", duration_s=duration_s, size=size, fps=fps, container="webm",
                          timeout_s=max(120.0, duration_s * 10))
        frames_per_session = count_frames(clip)
        env = {"AVS_LIVE_MAX_SESSIONS": str(max(4, sessions)), "AVS_JOBS_PER_WORKER": str(max(4, sessions))}
        if variant:
            env["AVS_VARIANT"] = variant
        with local_service(root / "service", env=env) as client:
            worker = client.get_json("/readyz")["workers"][0]
            url = client.base_url.replace("http://", "ws://", 1) + "/live"
            start = {"window": window, "mode": mode, **({"fps": max_fps} if max_fps else {})}
            results = asyncio.run(_sessions(url, clip, sessions, start))
    latencies = [m["latency_ms"] for r in results for m in r["masks"] if m.get("latency_ms") is not None]
    lags = []
    for r in results:
        first_pts = r["masks"][0]["pts_s"] if r["masks"] else 0.0
        for mask, at in zip(r["masks"], r["received_at"], strict=True):
            lags.append((at - r["first_send_at"] - (mask["pts_s"] - first_pts)) * 1000)
    received = sum(r["frames_received"] for r in results)
    processed = sum(r["frames_processed"] for r in results)
    skipped = sum(r["frames_skipped_by_rate"] for r in results)
    dropped = sum(r["frames_dropped"] for r in results)
    sent = frames_per_session * sessions
    unsegmented = dropped + (sent - received)  # wanted (not skipped by the cap), and no mask came back
    wanted = max(1, sent - skipped)
    in_order = all([m["frame_index"] for m in r["masks"]] == sorted({m["frame_index"] for m in r["masks"]})
                   for r in results)
    p95 = _percentile(latencies, 0.95)
    by_reason: dict[str, int] = {}
    for r in results:
        for reason, n in r["dropped"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    return {
        "model": worker.get("variant"), "device": worker.get("device"), "sessions": sessions,
        "source": {"width": size[0], "height": size[1], "fps": fps, "duration_s": duration_s, "codec": "vp9+opus"},
        "window": window, "mode": mode, "max_fps": max_fps, "frames_sent": sent, "frames_received": received,
        "frames_processed": processed, "frames_skipped_by_rate": skipped, "frames_dropped": dropped,
        "dropped_by_reason": by_reason, "frames_lost_in_transit": sent - received,
        "dropped_fraction": round(unsegmented / wanted, 4),
        "latency_p50_ms": _percentile(latencies, 0.5), "latency_p95_ms": p95,
        "latency_max_ms": _percentile(latencies, 1.0),
        "client_lag_p50_ms": _percentile(lags, 0.5), "client_lag_p95_ms": _percentile(lags, 0.95),
        "masks_in_order_once": in_order,
        "targets": {"dropped_fraction_max": TARGET_DROPPED, "latency_p95_ms_max": TARGET_P95_MS},
        "targets_met": unsegmented / wanted <= TARGET_DROPPED and p95 is not None and p95 <= TARGET_P95_MS,
    }
