"""``raysys diarize`` and ``raysys emotion``: the model actors from the command line.

Both go through the same actor pools the tasks and the Serve app use (``init_ray`` with the
settings' ``RAY_ADDRESS``; with none, a private local Ray starts for the command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raysys.errors import InvalidInput, ModelUnavailable
from raysys.runtime import init_ray


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def register(sub) -> None:
    """Add this family's sub-commands to the `raysys` parser."""
    p = sub.add_parser("diarize", help="who spoke when in an audio file (JSON or RTTM)")
    p.add_argument("audio", help="WAV, FLAC or OGG (MP3/M4A with FFmpeg)")
    p.add_argument("--backend", choices=("builtin", "pyannote"), default=None,
                   help="default: DIARIZATION_BACKEND (builtin)")
    p.add_argument("--num-speakers", type=_positive, default=None, help="known number of speakers")
    p.add_argument("--min-speakers", type=_positive, default=None)
    p.add_argument("--max-speakers", type=_positive, default=None)
    p.add_argument("--layout", choices=("auto", "mono", "stereo"), default="auto",
                   help="stereo: agent on channel 0, customer on channel 1 (auto detects it)")
    p.add_argument("--format", choices=("json", "rttm"), default="json")
    p.set_defaults(func=cmd_diarize)

    p = sub.add_parser("emotion", help="emotion per speaker segment of an audio file")
    p.add_argument("audio")
    p.add_argument("--backend", choices=("builtin", "speechbrain"), default=None,
                   help="default: EMOTION_BACKEND (builtin)")
    p.add_argument("--segments", default=None, help="JSON file of [{start, end, speaker}] (default: diarize first)")
    p.add_argument("--transcript", default=None, help="JSON file of [{start, end, text}] (builtin: text valence)")
    p.add_argument("--format", choices=("json",), default="json")
    p.set_defaults(func=cmd_emotion)


def to_rttm(result: dict, uri: str) -> str:
    """RTTM lines (``SPEAKER <uri> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``)."""
    lines = []
    for s in result["segments"]:
        duration = s["end"] - s["start"]
        if duration <= 0:
            continue
        lines.append(f"SPEAKER {uri} 1 {s['start']:.3f} {duration:.3f} <NA> <NA> {s['speaker']} <NA> <NA>")
    return "\n".join(lines) + ("\n" if lines else "")


def _load_json(path: str | None, what: str):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what} file {path} is not readable JSON: {exc}") from None


def _run(fn) -> int:
    try:
        return fn()
    except (InvalidInput, ModelUnavailable) as exc:
        print(f"raysys: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInput) else 3


def cmd_diarize(args, settings) -> int:
    def run() -> int:
        from raysys.actors.diarization import diarize_file  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        init_ray(settings.resolved())
        result = diarize_file(settings, args.audio, num_speakers=args.num_speakers, min_speakers=args.min_speakers,
                              max_speakers=args.max_speakers, layout=args.layout, backend=args.backend)
        if args.format == "rttm":
            sys.stdout.write(to_rttm(result, Path(args.audio).stem))
        else:
            print(json.dumps(result, indent=2))
        return 0

    return _run(run)


def cmd_emotion(args, settings) -> int:
    def run() -> int:
        from raysys.actors.emotion import analyze_file  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        segments = _load_json(args.segments, "segments")
        transcript = _load_json(args.transcript, "transcript")
        init_ray(settings.resolved())
        result = analyze_file(settings, args.audio, segments=segments, transcript=transcript, backend=args.backend)
        print(json.dumps(result, indent=2))
        return 0

    return _run(run)
