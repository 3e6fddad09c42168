"""Live sources: which stream URLs a session may pull (an allow-list, or the URL is refused), how ffmpeg is told
to open them, what `avs live SOURCE` reads, and the start message's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.core.contracts import ServiceErrorCode
from worker.core.live_protocol import LiveStart
from worker.core.live_sources import (
    PULLED,
    PUSHED,
    SourceRefused,
    cli_source,
    file_source,
    parse_allow_list,
    pulled_source,
    with_read_timeout,
)
from worker.core.media.containers import VIDEO_DEMUXERS

INVALID = ServiceErrorCode.INVALID_REQUEST.value
UNAUTHORIZED = ServiceErrorCode.UNAUTHORIZED.value

ALLOWED = parse_allow_list(["udp://127.0.0.1", "SRT://Camera.LAN:9000", "https://cams.example.org/some/path"])


# ------------------------------------------------------------------------------------------- allow-list
def test_parse_allow_list_keeps_scheme_host_and_port_lower_cased_without_path() -> None:
    assert {("udp", "127.0.0.1", None), ("srt", "camera.lan", 9000), ("https", "cams.example.org", None)} == ALLOWED


def test_parse_allow_list_reads_ipv6_hosts_and_bare_schemes() -> None:
    assert parse_allow_list(["http://[::1]:8080"]) == {("http", "::1", 8080)}
    assert parse_allow_list(["rtsp"]) == {("rtsp", "", None)}  # a scheme alone names no host ...
    with pytest.raises(SourceRefused) as refused:  # ... so it allows nothing
        pulled_source("rtsp://10.0.0.1/stream", parse_allow_list(["rtsp"]))
    assert refused.value.code == UNAUTHORIZED
    assert parse_allow_list([]) == set()


# --------------------------------------------------------------------------------------- pulled sources
@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "file:/etc/passwd",
    "concat:udp://127.0.0.1:1234|file:/etc/passwd",
    "subfile,,start,0,end,10,,:udp://127.0.0.1:1234",
    "gopher://127.0.0.1/",
    "data:text/plain;base64,AAAA",
    "pipe:0",
    "/etc/passwd",
    "",
])
def test_unknown_schemes_are_invalid_requests(url: str) -> None:
    allowed = ALLOWED | {("file", "", None), ("concat", "", None), ("gopher", "127.0.0.1", None)}
    with pytest.raises(SourceRefused) as refused:
        pulled_source(url, allowed)
    assert refused.value.code == INVALID
    assert "unsupported stream scheme" in str(refused.value)


@pytest.mark.parametrize("url", [
    "udp://127.0.0.1.evil.com:1234",  # the allowed host as a prefix of another
    "udp://127.0.0.2:1234",
    "udp://localhost:1234",  # the same machine by another name is not on the list
    "udp://%31%32%37.0.0.1:1234",  # percent-encoded host
    "udp:127.0.0.1:1234",  # no authority: no host at all
    "udp://",
    "tcp://127.0.0.1:1234",  # an allowed host with a scheme not allowed for it
    "rtmp://127.0.0.1/live",
    "srt://camera.lan.evil.com:9000",
    "srt://camera.lan:9001",  # the entry names a port: only that one
    "srt://camera.lan",
    "http://cams.example.org/stream.ts",  # https is allowed for this host, http is not
    "http://[::1]:80/",  # IPv6 loopback when only 127.0.0.1 is allowed
    "udp://[::1]:1234",
])
def test_sources_off_the_allow_list_are_unauthorized(url: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        pulled_source(url, ALLOWED)
    assert refused.value.code == UNAUTHORIZED
    assert "AVS_LIVE_SOURCES" in str(refused.value)


@pytest.mark.parametrize("url", [
    "udp://user@127.0.0.1@10.0.0.1:5",  # userinfo: whichever "@" a parser picks, it is refused
    "udp://10.0.0.1@127.0.0.1:5",
    "udp://@127.0.0.1:5",
    "udp://:pw@127.0.0.1:5",
    "udp://127.0.0.1 @evil:1",
    "udp://127.0.0.1:1234#@10.0.0.1",  # a fragment
    "udp://127.0.0.1:1234?localaddr=10.0.0.1",  # options that change where ffmpeg connects from or to
    "udp://127.0.0.1:1234?pkt_size=1316&connect=1&sources=10.0.0.1",
    "udp://127.0.0.1:1234?PKT_SIZE=1316",  # option names are exact
    "udp://127.0.0.1:abc",  # a port that is not one
    "udp://127.0.0.1:99999",
])
def test_credentials_fragments_unknown_options_and_bad_ports_are_invalid_requests(url: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        pulled_source(url, ALLOWED | {("udp", "10.0.0.1", None)})
    assert refused.value.code == INVALID


def test_nothing_is_pulled_with_an_empty_allow_list() -> None:
    for scheme in PULLED:
        with pytest.raises(SourceRefused) as refused:
            pulled_source(f"{scheme}://127.0.0.1:1234/x", set())
        assert refused.value.code == UNAUTHORIZED


@pytest.mark.parametrize(("url", "protocols", "demuxers"), [
    ("udp://127.0.0.1:1234", "udp", ("mpegts",)),
    ("UDP://127.0.0.1:1234", "udp", ("mpegts",)),  # scheme case does not matter
    ("udp://127.0.0.1:5000?pkt_size=1316&fifo_size=50000", "udp", ("mpegts",)),  # any port, safe options
    ("srt://CAMERA.lan:9000?mode=caller&latency=200", "srt", ("mpegts",)),  # nor does the host's
    ("SRT://camera.LAN:9000", "srt", ("mpegts",)),
    ("https://cams.example.org/any/other/path.m2ts", "https,tls,tcp", ("mpegts", "matroska", "flv", "mov")),
])
def test_allow_listed_sources_get_their_protocols_and_demuxers(url: str, protocols: str,
                                                               demuxers: tuple[str, ...]) -> None:
    source = pulled_source(url, ALLOWED)
    assert source.url.lower() == url.lower()
    assert source.protocols == protocols
    assert source.demuxers == demuxers
    assert not source.pushed


def test_every_scheme_has_its_own_protocol_and_no_file_access() -> None:
    for scheme, (protocols, demuxers) in PULLED.items():
        source = pulled_source(f"{scheme}://cam.lan:1/x", {(scheme, "cam.lan", None)})
        assert (source.protocols, source.demuxers) == (protocols, demuxers)
        allowed = set(protocols.split(","))
        assert scheme in allowed
        assert not allowed & {"file", "pipe", "concat", "subfile", "data", "crypto"}
        assert set(demuxers) <= set(VIDEO_DEMUXERS) | {"rtsp"}


def test_an_allowed_ipv6_host_is_matched() -> None:
    allowed = parse_allow_list(["http://[::1]"])
    assert pulled_source("http://[::1]:8080/live.ts", allowed).protocols == "http,tcp"
    with pytest.raises(SourceRefused) as refused:
        pulled_source("http://127.0.0.1:8080/live.ts", allowed)
    assert refused.value.code == UNAUTHORIZED


@pytest.mark.parametrize("url", ["udp://[127.0.0.1]:1234", "http://[::1:80/"])
def test_a_malformed_url_is_an_invalid_request(url: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        pulled_source(url, ALLOWED)
    assert refused.value.code == INVALID


@pytest.mark.parametrize("opener", [lambda url: pulled_source(url, ALLOWED), cli_source])
def test_the_url_given_to_ffmpeg_has_a_lower_case_scheme(opener) -> None:
    assert opener("UDP://127.0.0.1:1234").url.startswith("udp://")


def test_pushed_media_is_read_from_stdin_with_the_recorder_containers() -> None:
    assert PUSHED.pushed
    assert PUSHED.url == "pipe:0"
    assert PUSHED.protocols == "pipe"
    assert set(PUSHED.demuxers) == {"matroska", "mov"}


def test_a_pulled_stream_gets_a_read_timeout_a_pushed_or_file_one_none() -> None:
    assert with_read_timeout(PUSHED, 2.5) == ("pipe:0", [])
    assert with_read_timeout(file_source("/tmp/c.mp4"), 2.5) == ("file:/tmp/c.mp4", [])
    udp = pulled_source("udp://127.0.0.1:1234", ALLOWED)  # UDP: only its URL option interrupts a read
    assert with_read_timeout(udp, 2.5) == ("udp://127.0.0.1:1234?timeout=2500000", [])
    udp = pulled_source("udp://127.0.0.1:1234?pkt_size=1316", ALLOWED)
    assert with_read_timeout(udp, 0.5) == ("udp://127.0.0.1:1234?pkt_size=1316&timeout=500000", [])
    srt = pulled_source("srt://camera.lan:9000", ALLOWED)
    assert with_read_timeout(srt, 10) == ("srt://camera.lan:9000", ["-rw_timeout", "10000000"])


# ----------------------------------------------------------------------------------------- avs live SOURCE
def test_cli_source_reads_a_path_as_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = cli_source("clip.webm")
    assert source == file_source(str(tmp_path / "clip.webm"))
    assert source.url == f"file:{tmp_path / 'clip.webm'}"  # absolute
    assert source.protocols == "file"
    assert source.demuxers == tuple(VIDEO_DEMUXERS)
    assert not source.pushed
    # a colon in a name is still a file name, not a protocol ffmpeg would interpret
    assert cli_source("concat:a.mp4|b.mp4").url == f"file:{tmp_path / 'concat:a.mp4|b.mp4'}"
    assert cli_source("C:\\video.mp4").protocols == "file"


def test_cli_source_reads_file_urls_as_files(tmp_path: Path) -> None:
    assert cli_source(f"file://{tmp_path}/c.mp4") == file_source(str(tmp_path / "c.mp4"))


@pytest.mark.parametrize("url", ["udp://10.1.2.3:1234", "srt://anywhere.example:9000", "RTSP://cam/stream"])
def test_cli_source_pulls_any_host_of_a_known_scheme(url: str) -> None:
    source = cli_source(url)
    scheme, rest = url.split("://", 1)
    assert source.url == f"{scheme.lower()}://{rest}"  # ffmpeg's protocol names are lower case
    assert (source.protocols, source.demuxers) == PULLED[scheme.lower()]


@pytest.mark.parametrize("url", ["ftp://host/file.ts", "gopher://127.0.0.1/", "hls+http://x/y.m3u8"])
def test_cli_source_refuses_unknown_schemes(url: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        cli_source(url)
    assert refused.value.code == INVALID


# ------------------------------------------------------------------------------------------ start message
def test_start_message_defaults() -> None:
    start = LiveStart.model_validate({"type": "start"})
    assert (start.source, start.threshold, start.fps, start.window, start.mode, start.record, start.overlay) == \
        (None, None, None, 2, "drop_oldest", False, False)


def test_overlay_needs_record() -> None:
    with pytest.raises(ValidationError, match="overlay needs record"):
        LiveStart.model_validate({"type": "start", "overlay": True})
    assert LiveStart.model_validate({"type": "start", "overlay": True, "record": True}).overlay


@pytest.mark.parametrize("message", [
    {"type": "start", "sauce": "udp://127.0.0.1:1"},  # extra fields are refused, not ignored
    {"type": "start", "api_key": "x"},
    {"type": "begin"},
    {},
    {"type": "start", "threshold": 0},
    {"type": "start", "threshold": 1},
    {"type": "start", "threshold": -0.5},
    {"type": "start", "window": 0},
    {"type": "start", "window": 65},
    {"type": "start", "fps": 0},
    {"type": "start", "fps": 241},
    {"type": "start", "source": "udp://127.0.0.1:1/" + "x" * 2048},
    {"type": "start", "mode": "drop_newest"},  # only the two modes
    {"type": "start", "mode": None},
    {"type": "start", "drop": False},
])
def test_bad_start_messages_are_refused(message: dict) -> None:
    with pytest.raises(ValidationError):
        LiveStart.model_validate(message)


@pytest.mark.parametrize("fields", [
    {"threshold": 0.001}, {"threshold": 0.999}, {"window": 1}, {"window": 64}, {"fps": 240}, {"fps": 0.5},
    {"source": "srt://camera.lan:9000"}, {"record": True}, {"mode": "no_drop"}, {"mode": "drop_oldest"},
])
def test_start_messages_at_the_bounds_are_accepted(fields: dict) -> None:
    start = LiveStart.model_validate({"type": "start", **fields})
    for name, value in fields.items():
        assert getattr(start, name) == value


def test_start_message_from_json() -> None:
    start = LiveStart.model_validate_json('{"type": "start", "window": 4, "record": true, "overlay": true}')
    assert (start.window, start.record, start.overlay) == (4, True, True)
    with pytest.raises(ValidationError):
        LiveStart.model_validate_json('{"type": "start", "window": "lots"}')


def test_the_read_timeout_is_always_ours() -> None:
    # a client's own `timeout` is not an allowed option; one hidden in another option's value changes nothing
    with pytest.raises(SourceRefused):
        pulled_source("udp://127.0.0.1:1234?timeout=999999999999", ALLOWED)
    tricky = pulled_source("udp://127.0.0.1:1234?mode=xtimeout%3D1", ALLOWED)
    url, options = with_read_timeout(tricky, 2.0)
    assert url.endswith("&timeout=2000000")
    assert options == []


def test_an_http_query_belongs_to_the_remote_server() -> None:
    allowed = parse_allow_list(["https://cam.example"])
    source = pulled_source("https://cam.example/live.ts?token=abc&localaddr=1", allowed)
    assert source.url == "https://cam.example/live.ts?token=abc&localaddr=1"
    with pytest.raises(SourceRefused):  # the same option on a protocol whose query ffmpeg reads: refused
        pulled_source("udp://127.0.0.1:5000?localaddr=10.0.0.1", ALLOWED)
