"""Uploaded recordings: size limit while streaming, type check by content, a private file to work on.

The type is decided by the first bytes, never by the file name or the client's Content-Type: what the
audio decoder (libsndfile through soundfile) reads is accepted — WAV/RF64/W64, FLAC, Ogg (Vorbis,
Opus), AIFF, MP3 — and anything else is refused with :class:`UnsupportedMedia` (HTTP 415). A file
whose header matches but whose body does not decode is the model layer's :class:`InvalidInput` (422).

Files land in ``<data dir>/uploads/<tenant>/`` only while the request runs: the API replica decodes
them itself and sends the samples to the model actors, so they need no shared volume.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

from raysys.config import Settings
from raysys.errors import TooLarge, UnsupportedMedia

CHUNK = 1 << 20


def sniff_audio(head: bytes) -> str | None:
    """The container of an audio file from its first bytes (at least 12), or None if not audio we decode."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"riff" and len(head) >= 16:  # Sony Wave64 GUID starts with 'riff'
        return "w64"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3":
        return "mp3"
    # An MPEG audio frame: 11 sync bits, layer III (MP3) only.
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) == 0x02:
        return "mp3"
    return None


def _tenant_dir(settings: Settings, tenant_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tenant_id)[:100] or "_"
    path = Path(settings.data_dir) / "uploads" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


async def save_upload(upload, settings: Settings, tenant_id: str) -> Path:  # starlette UploadFile
    """Copy ``upload`` to a new file under the tenant's upload directory and return its path.

    Raises:
        TooLarge: more than ``settings.max_upload_bytes`` bytes (the partial file is removed).
        UnsupportedMedia: the content is not an audio format we decode (nothing is kept).
    """
    limit = settings.max_upload_bytes
    head = await upload.read(64)
    kind = sniff_audio(head)
    if kind is None:
        raise UnsupportedMedia("the upload is not an audio file raysys decodes (WAV, FLAC, Ogg, AIFF or MP3)")
    if len(head) > limit:
        raise TooLarge(f"the upload is larger than the {limit}-byte limit")
    path = _tenant_dir(settings, tenant_id) / f"{uuid.uuid4().hex}.{kind}"
    size = len(head)
    try:
        with open(path, "wb") as out:
            out.write(head)
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the upload is larger than the {limit}-byte limit")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def remove(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
