"""Which live sources a session may read, and how ffmpeg is told to open them.

A live session either receives its media from the client (pushed: the WebM/Matroska or fragmented-MP4 bytes
a browser's MediaRecorder produces, written to ffmpeg's stdin) or reads a stream URL (pulled). A URL fetched
on a client's behalf is a server-side request forgery hole (it can reach whatever the server can), so pulled
sources are refused unless their scheme and host are on `AVS_LIVE_SOURCES` (empty by default), and ffmpeg is
given the matching `-protocol_whitelist` and a demuxer allow-list, exactly as for uploads
(`worker.core.media.containers`). Torch-free: the API checks URLs before a session exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker.core.contracts import ServiceErrorCode

PUSHED_DEMUXERS = ("matroska", "mov")
"""What a client may push: WebM/Matroska and (fragmented) MP4, as MediaRecorder writes them."""

# scheme -> (ffmpeg protocols it needs, demuxers a stream on it may use)
PULLED: dict[str, tuple[str, tuple[str, ...]]] = {
    "udp": ("udp", ("mpegts",)),
    "rtp": ("rtp,udp", ("mpegts",)),
    "srt": ("srt", ("mpegts",)),
    "tcp": ("tcp", ("mpegts", "matroska", "flv")),
    "rtmp": ("rtmp,tcp", ("flv",)),
    "rtsp": ("rtsp,rtp,udp,tcp", ("rtsp",)),
    "http": ("http,tcp", ("mpegts", "matroska", "flv", "mov")),
    "https": ("https,tls,tcp", ("mpegts", "matroska", "flv", "mov")),
}


class SourceRefused(ValueError):
    """A live source that may not be opened; `code` is a stable error code."""

    def __init__(self, message: str, code: str = ServiceErrorCode.INVALID_REQUEST.value) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LiveSource:
    """How ffmpeg opens a session's input: `url` ("pipe:0" when pushed), `protocols`, `demuxers`."""

    url: str
    protocols: str
    demuxers: tuple[str, ...]

    @property
    def pushed(self) -> bool:
        return self.url == "pipe:0"

    @property
    def network(self) -> bool:
        """A stream URL pulled over the network (it may drop and come back: `worker.live.reconnect`); not pushed
        bytes, not a local file (whose end is the end)."""
        return not self.pushed and not self.url.startswith("file:")


PUSHED = LiveSource("pipe:0", "pipe", PUSHED_DEMUXERS)


def parse_allow_list(entries: list[str]) -> set[tuple[str, str, int | None]]:
    """`AVS_LIVE_SOURCES` entries -> {(scheme, host, port or None)}. "udp://127.0.0.1" allows any port of
    that host, "tcp://camera.lan:9000" that port only (a TCP port on a server's own host may be a database:
    name the port)."""
    allowed = set()
    for entry in entries:
        parts = urlsplit(entry if "://" in entry else f"{entry}://")
        if parts.scheme:
            allowed.add((parts.scheme.lower(), (parts.hostname or "").lower(), parts.port))
    return allowed


SAFE_QUERY_KEYS = frozenset({"pkt_size", "fifo_size", "buffer_size", "overrun_nonfatal", "latency", "mode",
                             "streamid", "passphrase", "pbkeylen", "listen"})
"""URL options a client may set on a udp/rtp/srt/tcp stream, whose query ffmpeg reads as protocol options
(sizes, SRT's latency and stream id, listen mode); any other (`localaddr`, `sources`, `connect`, ...) changes
where ffmpeg connects from or to, and `timeout` is ours (`with_read_timeout`). The query of an http(s),
rtmp or rtsp URL is the remote server's, not ffmpeg's, and passes unchanged."""
OPTION_QUERY_SCHEMES = frozenset({"udp", "rtp", "srt", "tcp"})


def pulled_source(url: str, allowed: set[tuple[str, str, int | None]]) -> LiveSource:
    """The `LiveSource` for a stream URL, or `SourceRefused`: its scheme must be one we speak; its scheme and
    host (and port, when the entry names one) allow-listed (`parse_allow_list`); no credentials, fragment or
    option outside `SAFE_QUERY_KEYS`."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:  # "udp://[127.0.0.1]:1", a bad port
        raise SourceRefused(f"not a stream URL: {url[:200]!r}") from None
    if scheme not in PULLED:
        raise SourceRefused(f"unsupported stream scheme {scheme!r} (known: {', '.join(sorted(PULLED))})")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise SourceRefused("a stream URL may not carry credentials or a fragment")
    keys = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if scheme in OPTION_QUERY_SCHEMES and keys - SAFE_QUERY_KEYS:
        raise SourceRefused(f"stream URL options not allowed: {', '.join(sorted(keys - SAFE_QUERY_KEYS))} "
                            f"(allowed: {', '.join(sorted(SAFE_QUERY_KEYS))})")
    if not host or not ((scheme, host, None) in allowed or (scheme, host, port) in allowed):
        raise SourceRefused(f"the source {scheme}://{host}{f':{port}' if port else ''} is not allowed here "
                            "(AVS_LIVE_SOURCES)", code=ServiceErrorCode.UNAUTHORIZED.value)
    protocols, demuxers = PULLED[scheme]
    return LiveSource(scheme + url[len(parts.scheme):], protocols, demuxers)  # ffmpeg's protocol names are lower case


def with_read_timeout(source: LiveSource, seconds: float) -> tuple[str, list[str]]:
    """(input URL, input options) that make ffmpeg treat `seconds` without data as the stream's end (it
    then flushes and exits 0, every received frame processed). UDP/RTP wait in a receive thread that only
    their `timeout` URL option interrupts; the others honour `-rw_timeout`. Both in microseconds."""
    micros = str(max(1, int(seconds * 1_000_000)))
    if source.pushed or source.url.startswith("file:"):
        return source.url, []
    parts = urlsplit(source.url)
    if parts.scheme.lower() in ("udp", "rtp"):
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "timeout"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("timeout", micros)]))), []
    return source.url, ["-rw_timeout", micros]


def file_source(path: str) -> LiveSource:
    """A local video file played as a live stream (`avs live FILE`): the upload allow-list of demuxers."""
    from pathlib import Path

    from worker.core.media.containers import VIDEO_DEMUXERS

    return LiveSource(f"file:{Path(path).resolve()}", "file", tuple(VIDEO_DEMUXERS))


def cli_source(text: str) -> LiveSource:
    """What `avs live SOURCE` reads: a stream URL of a scheme we speak (the command line's user chooses
    freely: no allow-list), else a local file. `SourceRefused` for another scheme."""
    try:
        parts = urlsplit(text)
    except ValueError:
        raise SourceRefused(f"not a stream URL: {text[:200]!r}") from None
    if parts.scheme and len(parts.scheme) > 1 and "://" in text:  # not "C:\\..." nor a plain path
        scheme = parts.scheme.lower()
        if scheme == "file":
            return file_source(parts.path)
        if scheme not in PULLED:
            raise SourceRefused(f"unsupported stream scheme {scheme!r} (known: {', '.join(sorted(PULLED))})")
        protocols, demuxers = PULLED[scheme]
        return LiveSource(scheme + text[len(parts.scheme):], protocols, demuxers)
    return file_source(text)
