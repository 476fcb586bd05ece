"""Call metrics from speaker segments: who spoke when, silence, overlap, interruptions, AHT, sentiment.

Inputs are plain dicts and :class:`raysys.storage.postgres.Turn`/``Call`` rows, so this module needs
neither Ray nor a database.

Definitions (seconds unless noted):

- speech of a role: the union of its segments; ``talk_seconds`` of the recording is the union of all
  speech, ``silence_seconds`` the rest of the recording.
- ``overlap_seconds``: time during which two or more speakers speak at once.
- interruption: a speaker starts a segment of at least :data:`MIN_INTERRUPTION` seconds while another
  speaker has been speaking for at least :data:`MIN_OVERLAP` seconds more (short back-channels such as
  "mm-hm" are not interruptions).
- AHT = talk + hold + after-call work, where talk is the call's connected time less hold when the call
  row has timestamps (the platform's telephony record), else the recording's length.
- sentiment: duration-weighted valence of the customer's segments (all speakers when the customer is
  unknown); ``start``/``end`` are the first and last third of them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

MIN_OVERLAP = 0.3
MIN_INTERRUPTION = 1.0
ROLES = ("agent", "customer")


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def _overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total overlap of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def map_speakers(segments: Sequence[dict], turns: Sequence[Any] = (), layout: str | None = None) -> dict[str, Any]:
    """Map diarized speaker labels to ``agent``/``customer``.

    - by channel: stereo recordings (agent on channel 0, customer on channel 1) or labels that are already
      roles;
    - by turns: the role whose transcript turns overlap the speaker's speech most (each role goes to the
      speaker that overlaps it most, so two speakers never both become the customer unless a role has no
      better candidate);
    - otherwise the first speaker is the agent (agents open the call) and the one who speaks most of the
      rest is the customer.
    Speakers with no evidence are ``unknown``. Returns ``{"mapping": {speaker: role}, "method": str}``.
    """
    speakers = sorted({str(s["speaker"]) for s in segments})
    if not speakers:
        return {"mapping": {}, "method": "none"}
    if set(speakers) <= set(ROLES):
        return {"mapping": {s: s for s in speakers}, "method": "channel"}
    channels = {str(s["speaker"]): s.get("channel") for s in segments}
    if layout == "stereo" or all(c in (0, 1) for c in channels.values()) and len(set(channels.values())) == 2:
        return {"mapping": {s: ROLES[channels[s]] if channels[s] in (0, 1) else "unknown" for s in speakers},
                "method": "channel"}
    speech = {s: _union((x["start"], x["end"]) for x in segments if str(x["speaker"]) == s) for s in speakers}
    role_spans = {r: _union((t.start_s, t.end_s) for t in turns if t.speaker_role == r) for r in ROLES}
    mapping = dict.fromkeys(speakers, "unknown")
    if any(role_spans.values()):
        scores = {(s, r): _overlap(speech[s], role_spans[r]) for s in speakers for r in ROLES}
        # Each role first to its best speaker (best pair first), then leftovers to their best role.
        taken: set[str] = set()
        for (s, r), v in sorted(scores.items(), key=lambda kv: -kv[1]):
            if v > 0 and r not in taken and mapping[s] == "unknown":
                mapping[s] = r
                taken.add(r)
        for s in speakers:
            if mapping[s] == "unknown":
                best = max(ROLES, key=lambda r, s=s: scores[(s, r)])
                if scores[(s, best)] > 0:
                    mapping[s] = best
        return {"mapping": mapping, "method": "turns"}
    first = min(segments, key=lambda x: x["start"])["speaker"]
    mapping[str(first)] = "agent"
    rest = [s for s in speakers if s != str(first)]
    if rest:
        mapping[max(rest, key=lambda s: _length(speech[s]))] = "customer"
    return {"mapping": mapping, "method": "first_speaker"}


def timeline_metrics(segments: Sequence[dict], duration: float | None = None) -> dict[str, Any]:
    """Talk, silence, overlap and interruptions of segments ``{"start", "end", "speaker"}``.

    ``speaker`` may be a role after :func:`map_speakers`. ``duration`` defaults to the last segment end.
    """
    segs = sorted(({"start": float(s["start"]), "end": float(s["end"]), "speaker": str(s["speaker"])}
                   for s in segments if float(s["end"]) > float(s["start"])), key=lambda s: s["start"])
    end = max((s["end"] for s in segs), default=0.0)
    duration = max(float(duration or 0.0), end)
    per_speaker = defaultdict(list)
    for s in segs:
        per_speaker[s["speaker"]].append((s["start"], s["end"]))
    unions = {k: _union(v) for k, v in per_speaker.items()}
    talk = _length(_union(iv for u in unions.values() for iv in u))
    # Sweep: time with two or more speakers active.
    events = sorted([(a, 1) for u in unions.values() for a, _ in u] + [(b, -1) for u in unions.values() for _, b in u])
    overlap, active, last = 0.0, 0, 0.0
    for t, delta in events:
        if active >= 2:
            overlap += t - last
        active += delta
        last = t
    interruptions: dict[str, int] = defaultdict(int)
    for i, s in enumerate(segs):
        if s["end"] - s["start"] < MIN_INTERRUPTION:
            continue
        for o in segs[:i]:
            if o["speaker"] != s["speaker"] and o["start"] < s["start"] and o["end"] - s["start"] >= MIN_OVERLAP:
                interruptions[s["speaker"]] += 1
                break
    return {
        "duration_seconds": round(duration, 3),
        "talk_seconds": round(talk, 3),
        "silence_seconds": round(max(0.0, duration - talk), 3),
        "overlap_seconds": round(overlap, 3),
        "interruptions": int(sum(interruptions.values())),
        "speech_seconds": {k: round(_length(v), 3) for k, v in sorted(unions.items())},
        "interruptions_by": dict(sorted(interruptions.items())),
        "talk_share": {k: round(_length(v) / talk, 3) if talk else 0.0 for k, v in sorted(unions.items())},
    }


def aht(call: Any, recording_seconds: float = 0.0) -> dict[str, float]:
    """AHT parts of a :class:`Call`: talk (telephony timestamps, else the recording), hold, ACW, total."""
    talk = call.talk_seconds if call.ended_at else float(recording_seconds)
    hold, acw = float(call.hold_seconds or 0.0), float(call.acw_seconds or 0.0)
    return {"talk_seconds": round(talk, 3), "hold_seconds": hold, "acw_seconds": acw,
            "aht_seconds": round(talk + hold + acw, 3)}


def sentiment_summary(items: Sequence[dict]) -> dict[str, float | None]:
    """``{"start", "end", "mean"}`` from items ``{"start", "end", "valence", "role"}`` (customer first)."""
    chosen = [i for i in items if i.get("role") == "customer"] or list(items)
    chosen = sorted((i for i in chosen if i.get("valence") is not None), key=lambda i: i["start"])
    if not chosen:
        return {"start": None, "end": None, "mean": None}

    def wmean(xs: Sequence[dict]) -> float:
        weights = [max(0.1, float(x["end"]) - float(x["start"])) for x in xs]
        v = sum(w * float(x["valence"]) for w, x in zip(weights, xs, strict=True)) / sum(weights)
        return round(max(-1.0, min(1.0, v)), 4)

    k = max(1, math.ceil(len(chosen) / 3))
    return {"start": wmean(chosen[:k]), "end": wmean(chosen[-k:]), "mean": wmean(chosen)}
