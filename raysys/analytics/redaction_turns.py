"""PII redaction of a call: its turns (numbers read out over several turns), their words, the policy.

:func:`redact_turns` redacts a call's turns together (see :mod:`raysys.analytics.redaction` for what is
found); :func:`redact_call_turns` does it to stored turn rows, words of transcribed turns included;
:class:`Policy` says whether a tenant's text is redacted: the tenant's own setting, else the deployment's
``PII_REDACTION`` / ``PII_REDACT_DOCUMENTS``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raysys.config import Settings
from raysys.models.redaction import DEFAULT_REGIONS, KINDS, Span, apply_spans, find_pii, redact

_TAG = re.compile(r"\[(?:" + "|".join(KINDS) + r")\]")


def has_tags(text: str) -> bool:
    """Whether ``text`` holds a redaction tag (it was redacted before)."""
    return bool(text) and _TAG.search(text) is not None


@dataclass(frozen=True)
class Policy:
    """Whether a tenant's call text (``calls``) and document chunks (``documents``) are redacted."""

    calls: bool = True
    documents: bool = False
    regions: tuple[str, ...] = DEFAULT_REGIONS

    @classmethod
    def for_tenant(cls, settings: Settings, tenant: Mapping[str, Any] | None = None) -> Policy:
        """The policy from the settings, with the tenant row's ``pii_redaction`` / ``pii_redact_documents``
        winning where set."""
        tenant = tenant or {}
        calls, docs = tenant.get("pii_redaction"), tenant.get("pii_redact_documents")
        return cls(settings.pii_redaction if calls is None else bool(calls),
                   settings.pii_redact_documents if docs is None else bool(docs), tuple(settings.pii_phone_regions))

    def text(self, text: str) -> str:
        """``text`` redacted when call redaction is on (summaries, excerpts, log lines)."""
        return redact(text, regions=self.regions).text if self.calls and text else text


_DIGITISH = re.compile(r"\+?\d+|\b(?:zero|nought|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple|ten|eleven|"
                       r"twelve|(?:thir|four|fif|six|seven|eigh|nine)teen|(?:twen|thir|for|fif|six|seven|eigh|nine)ty)\b",
                       re.I)
_LEAD_FILLER = re.compile(r"^(?:\s|[,.\-]|\b(?:and|then|um|uh|er|erm|so|yes|yeah|ok|okay|it's|its|it|is|the|rest|"
                          r"last|next|bit|part|numbers?|digits?|are|of)\b)*", re.I)
_TRAIL_FILLER = re.compile(r"(?:\s|[,.\-?!]|\b(?:um|uh|er|erm|and)\b)*$", re.I)


@dataclass
class TurnsRedacted:
    """:func:`redact_turns`' answer: each turn's redacted text and spans, and counts per kind for the call
    (a number read out over two turns counts once)."""

    texts: list[str]
    spans: list[list[Span]]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _edges(text: str) -> tuple[int, int] | None:
    """(start of the first, end of the last) digit-like token when the text starts or ends with digits."""
    tokens = list(_DIGITISH.finditer(text))
    if not tokens:
        return None
    return tokens[0].start(), tokens[-1].end()


def _joinable(prev: str, nxt: str) -> tuple[int, int] | None:
    """Where ``prev``'s trailing digits end and ``nxt``'s leading digits start, when both exist."""
    e_prev, e_next = _edges(prev), _edges(nxt)
    if e_prev is None or e_next is None:
        return None
    a_end, b_start = e_prev[1], e_next[0]
    if not _TRAIL_FILLER.fullmatch(prev[a_end:]) or _LEAD_FILLER.match(nxt).end() < b_start:
        return None
    return a_end, b_start


def redact_turns(turns: Sequence[tuple[str, str]], regions: Sequence[str] = DEFAULT_REGIONS) -> TurnsRedacted:
    """Redact a call's ``(role, text)`` turns, in call order.

    Each turn is read with the two turns before it as context; then numbers split over consecutive
    turns of one speaker (other speakers' turns between them without digits, "okay", "go on") are read
    joined, so a card number given in two or three parts is found and each part tagged.
    """
    texts = [t or "" for _, t in turns]
    spans: list[list[Span]] = []
    ids: list[list[int]] = []
    next_id = 0
    kinds: dict[int, str] = {}
    for i, text in enumerate(texts):
        context = " ".join(texts[max(0, i - 2):i])[-240:]
        found = find_pii(text, context, regions)
        spans.append(found)
        ids.append(list(range(next_id, next_id + len(found))))
        kinds.update({next_id + k: s.kind for k, s in enumerate(found)})
        next_id += len(found)
    by_role: dict[str, list[int]] = {}
    for i, (role, _) in enumerate(turns):
        by_role.setdefault(role, []).append(i)
    for order in by_role.values():
        for pos in range(len(order) - 1):
            for width in (3, 2):
                chain = order[pos:pos + width]
                if len(chain) < width or any(_DIGITISH.search(texts[k]) for k in range(chain[0] + 1, chain[-1])
                                             if k not in chain):
                    continue
                next_id = _join_chain(texts, chain, spans, ids, kinds, next_id, regions)
    counts = Counter(kinds[i] for i in {i for row in ids for i in row})
    return TurnsRedacted([apply_spans(t, s) for t, s in zip(texts, spans, strict=True)], spans, dict(counts))


def _join_chain(texts: list[str], chain: list[int], spans: list[list[Span]], ids: list[list[int]],
                kinds: dict[int, str], next_id: int, regions: Sequence[str]) -> int:
    """Read the digits at the ends of the chain's turns joined; tag what crosses a turn boundary."""
    pieces: list[tuple[int, int, int]] = []  # (turn, start, end) of each part in the joined text
    for a, b in zip(chain, chain[1:], strict=False):
        cut = _joinable(texts[a], texts[b])
        if cut is None:
            return next_id
        if pieces:
            pieces[-1] = (a, pieces[-1][1], cut[0])
        else:
            pieces.append((a, 0, cut[0]))
        pieces.append((b, cut[1], len(texts[b])))
    joined, offsets, pos = [], [], 0
    for turn, s, e in pieces:
        offsets.append(pos)
        joined.append(texts[turn][s:e])
        pos += e - s + 1
    text = " ".join(joined)
    context = " ".join(texts[max(0, chain[0] - 2):chain[0]])[-240:]
    for span in find_pii(text, context, regions):
        parts = []
        for (turn, s, e), off in zip(pieces, offsets, strict=True):
            a, b = max(span.start, off), min(span.end, off + e - s)
            if a < b:
                parts.append((turn, s + a - off, s + b - off))
        if len(parts) < 2:
            continue
        new_id = next_id
        next_id += 1
        kinds[new_id] = span.kind
        for turn, a, b in parts:
            keep = [(sp, i) for sp, i in zip(spans[turn], ids[turn], strict=True) if sp.end <= a or sp.start >= b]
            covered = [sp for sp in spans[turn] if not (sp.end <= a or sp.start >= b)]
            a = min([a, *(sp.start for sp in covered)])
            b = max([b, *(sp.end for sp in covered)])
            keep.append((Span(a, b, span.kind), new_id))
            keep.sort(key=lambda x: x[0].start)
            spans[turn] = [sp for sp, _ in keep]
            ids[turn] = [i for _, i in keep]
    return next_id


def _redact_rows(rows: Sequence[tuple[str, str, list[dict] | None]],
                 regions: Sequence[str]) -> tuple[list[tuple[str, list[dict] | None]], TurnsRedacted]:
    result = redact_turns([(role, text) for role, text, _ in rows], regions)
    out = []
    for (_, original, words), text, spans in zip(rows, result.texts, result.spans, strict=True):
        if spans and words and " ".join(str(w.get("word", "")) for w in words) == original:
            words = _redact_words(words, spans)
            text = " ".join(str(w.get("word", "")) for w in words)
        out.append((text, words))
    return out, result


def redact_call_turns(turns: Sequence[Any], regions: Sequence[str] = DEFAULT_REGIONS) -> tuple[list[Any], TurnsRedacted]:
    """Redacted copies of turn rows (:class:`raysys.storage.postgres.Turn`: ``speaker_role``, ``text``,
    ``words``) and the redaction.

    A transcribed turn's words are redacted too: the first word of a redacted span becomes its tag
    (keeping its start), the span's other words are dropped, and the text is rebuilt from them.
    """
    rows, result = _redact_rows([(t.speaker_role, t.text or "", t.words) for t in turns], regions)
    return [dataclasses.replace(t, text=text, words=words) if spans else t
            for t, (text, words), spans in zip(turns, rows, result.spans, strict=True)], result


def redact_transcription(result: dict[str, Any], policy: Policy) -> tuple[dict[str, Any], TurnsRedacted | None]:
    """A :func:`raysys.tasks.transcription.transcribe_recording` result with its turns, words and text
    redacted (unchanged when the policy is off), and the redaction."""
    if not policy.calls:
        return result, None
    turns = result["turns"]
    rows, red = _redact_rows([(t.get("role") or "unknown", t.get("text") or "", t.get("words")) for t in turns],
                             policy.regions)
    turns = [{**t, "text": text, "words": words} for t, (text, words) in zip(turns, rows, strict=True)]
    return {**result, "turns": turns, "text": "\n".join(f"{t['role']}: {t['text']}" for t in turns)}, red


def _redact_words(words: list[dict], spans: list[Span]) -> list[dict]:
    out, pos = [], 0
    for w in words:
        start, end = pos, pos + len(str(w.get("word", "")))
        pos = end + 1
        hit = next((s for s in spans if s.start < end and s.end > start), None)
        if hit is None:
            out.append(w)
        elif hit.start >= start or not out or out[-1].get("_span") is not hit:
            out.append({**w, "word": f"[{hit.kind}]", "_span": hit})
        else:
            out[-1]["end"] = w.get("end", out[-1].get("end"))
    return [{k: v for k, v in w.items() if k != "_span"} for w in out]


def redact_turn_dicts(rows: list[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """Turn rows as dicts (``speaker_role``, ``text``, ``words``: an archive's) redacted under ``policy``."""
    if not policy.calls or not rows:
        return rows
    done, _ = _redact_rows([(r.get("speaker_role") or "unknown", r.get("text") or "", r.get("words")) for r in rows],
                           policy.regions)
    return [{**r, "text": text, "words": words} for r, (text, words) in zip(rows, done, strict=True)]
