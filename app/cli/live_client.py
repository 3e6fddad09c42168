"""A live-session client (`worker.core.live_protocol`): streams a video file in real time over `/live` and
collects the mask records. Used by `avs live --server`, `avs bench live` and the tests; also the README's
example of what a client does. Torch-free.

The media is what a browser's MediaRecorder would send: WebM, produced by ffmpeg at the file's own rate
(`-re`), stream-copied when the file is already VP8/VP9 + Opus/Vorbis WebM (as a browser encodes on the
client machine, the bench then measures the server, not our encoder), else encoded with libvpx in its
real-time mode.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 64 * 1024


class LiveRefused(RuntimeError):
    """The server refused or failed the session; `code` is its stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def webm_producer(path: Path, *, copy: bool, realtime: bool = True) -> list[str]:
    """ffmpeg writing `path` as a live WebM stream to stdout (clusters of at most 100 ms, as MediaRecorder's
    short timeslices; `-re`: at the file's own rate)."""
    codecs = (["-c", "copy"] if copy else
              ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M", "-g", "50",
               "-c:a", "libopus", "-b:a", "64k"])
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *(["-re"] if realtime else []),
            "-i", str(path), "-map", "0:v:0", "-map", "0:a:0?", *codecs,
            "-f", "webm", "-cluster_time_limit", "100", "-cluster_size_limit", "262144", "pipe:1"]


def is_webm_ready(path: Path) -> bool:
    """True when `path` can be stream-copied into WebM (VP8/VP9 video; Opus/Vorbis sound or none)."""
    import subprocess

    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json",
                            str(path)], capture_output=True, text=True, timeout=60)
    try:
        streams = json.loads(probe.stdout).get("streams", [])
    except ValueError:
        return False
    video = [s["codec_name"] for s in streams if s.get("codec_type") == "video"]
    audio = [s["codec_name"] for s in streams if s.get("codec_type") == "audio"]
    return bool(video) and video[0] in ("vp8", "vp9") and all(a in ("opus", "vorbis") for a in audio[:1])


async def stream_file(url: str, path: Path | None, start: dict[str, Any], *, api_key: str | None = None,
                      on_message: Callable[[dict[str, Any]], None] | None = None,
                      stop_after_s: float | None = None, timeout_s: float = 3600.0,
                      sent_copy: Path | None = None, realtime: bool = True) -> dict[str, Any]:
    """Run one session: send `start` (`{"type": "start", ...}` is added), push `path` as a live WebM stream
    (None: a pulled session, `start["source"]`; it is ended after `stop_after_s`), receive every message.

    Returns the server's end message plus the client's view: `masks` (records received, in order),
    `received_at` (monotonic seconds per mask), `first_send_at`. Raises `LiveRefused` on an error message
    (a refusal, or a session that failed) and `ConnectionError` when the server closes without an end.
    `sent_copy`: also write the bytes sent there (to check what the server saw against what was sent).
    `realtime=False`: push the file as fast as the server takes it (not at its own rate).
    """
    from websockets.asyncio.client import connect

    headers = {"X-API-Key": api_key} if api_key else {}
    async with connect(url, additional_headers=headers, max_size=16 << 20, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", **start}))
        started = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if started.get("type") == "error":
            raise LiveRefused(started.get("code", "unknown"), started.get("message", ""))
        view: dict[str, Any] = {"started": started, "masks": [], "received_at": [], "first_send_at": None}

        async def push() -> None:
            if path is None:
                if stop_after_s is not None:
                    await asyncio.sleep(stop_after_s)
                    await ws.send(json.dumps({"type": "end"}))
                return
            producer = await asyncio.create_subprocess_exec(
                *webm_producer(path, copy=await asyncio.to_thread(is_webm_ready, path), realtime=realtime),
                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            assert producer.stdout is not None
            copy = sent_copy.open("wb") if sent_copy is not None else None
            try:
                while chunk := await producer.stdout.read(CHUNK_BYTES):
                    if view["first_send_at"] is None:
                        view["first_send_at"] = time.monotonic()
                    await ws.send(chunk)
                    if copy is not None:
                        copy.write(chunk)
            finally:
                if copy is not None:
                    copy.close()
                if producer.returncode is None:
                    producer.kill()
                await producer.wait()
            await ws.send(json.dumps({"type": "end"}))

        pusher = asyncio.ensure_future(push())
        end: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(timeout_s):
                async for raw in ws:
                    message = json.loads(raw)
                    if on_message is not None:
                        on_message(message)
                    if message.get("type") == "mask":
                        view["masks"].append(message)
                        view["received_at"].append(time.monotonic())
                    elif message.get("type") in ("end", "error"):
                        end = message
                        break
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
    if end is None:
        raise ConnectionError("the server closed the session without an end message")
    if end.get("type") == "error":
        raise LiveRefused(end.get("code", "unknown"), end.get("message", ""))
    return {**end, **view}
