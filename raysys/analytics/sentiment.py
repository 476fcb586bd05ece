"""Call sentiment from the words, through the one sentiment model (:mod:`raysys.models.sentiment`).

The same model scores segment valence in the builtin emotion backend, so a call's sentiment, its
segments' valence and the daily CSAT proxy (the mean of the calls' ``sentiment_mean``, see
:mod:`raysys.analytics.aggregation`) can no longer disagree because two word lists did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raysys.models.sentiment import default_model, label_for, text_sentiment

__all__ = ["label_for", "model_version", "text_sentiment", "turn_sentiments"]


def model_version() -> str:
    """The sentiment model's version string (``vader-<package version>+<domain layer version>``)."""
    return default_model().model_version


def turn_sentiments(turns: Sequence[Any]) -> list[dict[str, Any]]:
    """One item per turn with text: ``{"start", "end", "valence", "label", "role"}``, valence in [-1, 1].

    Args:
        turns: objects with ``start_s``, ``end_s``, ``text`` and ``speaker_role`` (stored call turns).
    Returns:
        items in the turns' order; turns with blank text are left out.
    """
    model = default_model()
    items = []
    for t in turns:
        if not (t.text or "").strip():
            continue
        s = model.analyze(t.text)
        items.append({"start": t.start_s, "end": t.end_s, "valence": s.score, "label": s.label,
                      "role": t.speaker_role})
    return items
