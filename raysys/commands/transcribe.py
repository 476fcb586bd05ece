"""``raysys transcribe FILE``: speaker turns with words from a recording (JSON, text, SRT or WebVTT).

Diarization and transcription run on the cluster's actor pools (``init_ray`` with the settings'
``RAY_ADDRESS``; with none, a private local Ray starts for the command), exactly as the
``transcribe_call`` task does; nothing is stored.
"""

from __future__ import annotations

import json
import sys

from raysys.errors import InvalidInput, ModelUnavailable
from raysys.runtime import init_ray

FORMATS = ("json", "txt", "srt", "vtt")


def register(sub) -> None:
    """Add ``transcribe`` to the `raysys` parser."""
    p = sub.add_parser("transcribe", help="speaker turns with words from an audio file")
    p.add_argument("audio", help="WAV, FLAC or OGG (MP3/M4A with FFmpeg)")
    p.add_argument("--backend", choices=("pocketsphinx", "faster-whisper"), default=None,
                   help="default: TRANSCRIPTION_BACKEND (pocketsphinx)")
    p.add_argument("--language", default=None, help="language code (default: TRANSCRIPTION_LANGUAGE, else detect)")
    p.add_argument("--layout", choices=("auto", "mono", "stereo"), default="auto",
                   help="stereo: agent on channel 0, customer on channel 1 (auto detects it)")
    p.add_argument("--format", choices=FORMATS, default="json")
    p.set_defaults(func=cmd_transcribe)


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: dict, fmt: str) -> str:
    """The transcription ``result`` (:func:`raysys.tasks.transcription.transcribe_recording`) as ``fmt``."""
    turns = result["turns"]
    if fmt == "json":
        body = {k: v for k, v in result.items() if k != "diarization"}
        return json.dumps(body, indent=2) + "\n"
    if fmt == "txt":
        return "".join(f"[{_clock(t['start'], '.')[3:]}] {t['role']}: {t['text']}\n" for t in turns)
    cues = []
    for i, t in enumerate(turns, 1):
        sep = "," if fmt == "srt" else "."
        head = f"{i}\n" if fmt == "srt" else ""
        cues.append(f"{head}{_clock(t['start'], sep)} --> {_clock(t['end'], sep)}\n{t['role']}: {t['text']}\n")
    text = "\n".join(cues)
    return ("WEBVTT\n\n" + text) if fmt == "vtt" else text


def cmd_transcribe(args, settings) -> int:
    try:
        from raysys.analytics.transcripts import transcribe_recording  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        init_ray(settings.resolved())
        result = transcribe_recording(settings, args.audio, layout=args.layout, backend=args.backend,
                                      language=args.language)
    except (InvalidInput, ModelUnavailable) as exc:
        print(f"raysys: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInput) else 3
    sys.stdout.write(render(result, args.format))
    return 0
