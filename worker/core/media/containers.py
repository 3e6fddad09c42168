"""Which containers we open, and how to recognise one from its first bytes.

Uploads are hostile input to libavformat. The dangerous demuxers are not the complicated ones but the ones
that make ffmpeg open *other* files or URLs: playlists (hls), lists (concat), manifests (dash, imf),
session descriptions (sdp, rtp), image sequences (image2), subtitle indexes (vobsub opens the `.sub` next
to an `.idx`), script formats (avisynth, vapoursynth). `-protocol_whitelist file` does not stop a playlist
from opening local files, so every ffprobe/ffmpeg call on an upload passes `-format_whitelist` with the
demuxers below: libavformat checks it right after probing, before the demuxer reads its header, so any
other format is refused before it can open anything.

Each accepted demuxer reads only the file it was given:

* `mov`: MP4, MOV, M4V, 3GP/3G2 (phones, browsers, editors). External data references (`dref`) are
  followed only with `enable_drefs=1`, which we never set.
* `matroska`: MKV, WebM (MediaRecorder, remuxes). Linked segments and attachments are never opened.
* `avi`: AVI. One RIFF file, no references.
* `mpegts`: MPEG-TS, M2TS/MTS (broadcast, AVCHD cameras). A packet stream, no references.
* `mpeg`: MPEG program stream, i.e. MPG, MPEG, VOB, MOD (camcorders, DVDs). A pack stream; `vobsub`,
  which opens the `.sub` beside an `.idx`, is a different demuxer and stays refused.
* `flv`: FLV. One tag stream, no references.
* `ogg`: OGV/OGG (Theora with Vorbis or Opus). One page stream, no references.
* `asf`: WMV, ASF. Script commands that carry URLs are metadata ffmpeg never follows.
* `dv`: DV (tape camcorders). Fixed-size DIF blocks, no references.

Audio-only containers (`AUDIO_ONLY_DEMUXERS`: wav, mp3, flac, ...) are opened too, only so that a sound
file is answered `no_video_stream` (what it is) rather than `not_media`; they never reach the decoder.

This module is torch-free and imports nothing from `app`.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_DEMUXERS: dict[str, str] = {
    "mov": "MP4/MOV/M4V/3GP",
    "matroska": "Matroska/WebM",
    "avi": "AVI",
    "mpegts": "MPEG-TS/M2TS",
    "mpeg": "MPEG program stream (MPG/VOB)",
    "flv": "FLV",
    "ogg": "Ogg/OGV",
    "asf": "ASF/WMV",
    "dv": "DV",
}
"""Demuxers (libavformat names) of the video containers we accept, with the names people know them by."""

AUDIO_ONLY_DEMUXERS: dict[str, str] = {
    "wav": "WAV",
    "w64": "Wave64",
    "mp3": "MP3",
    "flac": "FLAC",
    "aac": "AAC (ADTS)",
    "aiff": "AIFF",
    "caf": "CAF",
    "ac3": "AC-3",
    "eac3": "E-AC-3",
    "amr": "AMR",
}
"""Sound-only containers: opened only to answer `no_video_stream` instead of `not_media`."""

ALLOWED_DEMUXERS: tuple[str, ...] = (*VIDEO_DEMUXERS, *AUDIO_ONLY_DEMUXERS)
"""Every demuxer an upload may be opened with; see the module docstring for why these and no others."""

FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
"""Value of `-format_whitelist` for every ffprobe/ffmpeg call on an upload."""

ACCEPTED_DESCRIPTION = ", ".join(VIDEO_DEMUXERS.values())
"""Human-readable list of accepted video containers, for error messages and the API description."""

FILE_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".m4v", ".m4a", ".mov", ".3gp", ".3g2", ".mkv", ".webm", ".avi", ".ts", ".m2ts", ".mts",
    ".mpg", ".mpeg", ".vob", ".mod", ".flv", ".ogv", ".ogg", ".wmv", ".asf", ".dv",
})
"""Usual file name extensions of the accepted containers (a convenience for naming stored uploads; the
name is never trusted, ffprobe decides what a file is)."""

_MOV_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def demuxer_for(format_name: str) -> str | None:
    """The allowed demuxer to force with `-f` for ffprobe's `format_name` ("mov,mp4,m4a,..."), or None."""
    for name in format_name.split(","):
        if name.strip() in ALLOWED_DEMUXERS:
            return name.strip()
    return None


def is_audio_only(demuxer: str) -> bool:
    """True for a demuxer of sound-only containers (wav, mp3, ...): such a file never has a video stream."""
    return demuxer in AUDIO_ONLY_DEMUXERS


SNIFF_BYTES = 512


def sniff_container(path: str | Path) -> str | None:
    """Guess the accepted video container from the file's first bytes (its magic), without ffmpeg.

    Used only to classify files ffprobe cannot open: a recognised signature means "right kind of file,
    damaged" (`corrupt_media`), anything else "not a video we accept" (`not_media`).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return None
    return sniff_container_head(head)


def sniff_container_head(head: bytes) -> str | None:
    """`sniff_container` on the first `SNIFF_BYTES` of a file or stream (fewer: only the short signatures)."""
    if len(head) >= 8 and head[4:8] in _MOV_BOXES:
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX", b"AVI\x19"):
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"\x00\x00\x01\xba":  # MPEG-PS pack header
        return "mpeg"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:16] == _ASF_GUID:
        return "asf"
    if head[:3] == b"\x1f\x07\x00":  # DV DIF header block
        return "dv"
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if len(head) >= 389 and head[4] == head[196] == head[388] == 0x47:  # M2TS: 4-byte prefix per packet
        return "mpegts"
    return None


_MP4_SKIPPABLE = (b"free", b"skip", b"wide", b"uuid", b"styp", b"sidx")


def mp4_media_before_index(head: bytes) -> bool:
    """True when `head`, the first bytes of an MP4/MOV stream, shows its media (`mdat`) before its index
    (`moov`): the layout a camera or ffmpeg writes by default, which cannot be decoded as it arrives (the
    index is at the end). A fragmented MP4 (MediaRecorder, `-movflags frag_keyframe+empty_moov`) and a
    "fast start" one put `moov` first. False for anything else, or while `head` is too short to tell."""
    if len(head) < 8 or head[4:8] != b"ftyp":
        return False
    offset = 0
    while offset + 8 <= len(head):
        size = int.from_bytes(head[offset:offset + 4], "big")
        kind = head[offset + 4:offset + 8]
        if kind == b"mdat":
            return True
        if kind == b"moov" or size < 8 or (offset > 0 and kind not in _MP4_SKIPPABLE):
            return False
        offset += size
    return False
