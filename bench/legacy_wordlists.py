"""The two hand-written word lists raysys used before its sentiment model (commit a9f7320), kept for the bench only.

``emotion_text_valence`` was ``raysys.models.emotion.text_valence`` (segment valence from a transcript);
``analytics_text_sentiment`` was ``raysys.analytics.sentiment.text_sentiment`` (call sentiment and the CSAT
proxy). Copied verbatim apart from the names, so ``bench/sentiment.py`` can print them beside the model.
"""

from __future__ import annotations

import math
import re

import numpy as np

EMOTION_POSITIVE = set("""
good great thanks thank appreciate excellent perfect happy glad love wonderful amazing helpful resolved
fixed works working awesome nice pleased fantastic brilliant sure fine welcome easy quick satisfied
""".split())
EMOTION_NEGATIVE = set("""
bad terrible awful angry upset annoyed frustrated frustrating ridiculous unacceptable worst hate broken
problem issue wrong cancel complaint disappointed disappointing never useless slow waiting waited charged
refund fraud error failed failing fail unhappy sad sorry confused rude lost stolen stuck impossible
""".split())
EMOTION_NEGATIONS = {"not", "no", "never", "don't", "dont", "didn't", "didnt", "isn't", "isnt", "wasn't", "wasnt",
             "can't", "cant", "won't", "wont", "nothing", "without"}


def emotion_text_valence(text: str) -> float:
    """Lexicon valence of ``text`` in [-1, 1] (0 when no sentiment word is found)."""
    words = re.findall(r"[a-z']+", text.lower())
    score = 0.0
    for i, w in enumerate(words):
        polarity = 1.0 if w in EMOTION_POSITIVE else -1.0 if w in EMOTION_NEGATIVE else 0.0
        if polarity and any(x in EMOTION_NEGATIONS for x in words[max(0, i - 3):i]):
            polarity = -polarity * 0.8
        score += polarity
    if not words:
        return 0.0
    return float(np.tanh(score / math.sqrt(len(words)) * 1.5))


SENTIMENT_POSITIVE = {
    "thanks": 1.0, "thank": 1.0, "great": 1.5, "good": 1.0, "perfect": 1.5, "excellent": 1.8, "appreciate": 1.2,
    "helpful": 1.2, "happy": 1.3, "glad": 1.2, "wonderful": 1.6, "awesome": 1.5, "resolved": 1.0, "fixed": 1.0,
    "sorted": 0.8, "works": 0.8, "working": 0.5, "love": 1.5, "pleased": 1.3, "fantastic": 1.7, "amazing": 1.6,
    "nice": 0.9, "fine": 0.4, "brilliant": 1.5, "quick": 0.5, "easy": 0.6, "satisfied": 1.2, "welcome": 0.6,
    "yes": 0.2, "ok": 0.2, "okay": 0.2, "solved": 1.0, "kind": 0.8,
}
SENTIMENT_NEGATIVE = {
    "unhappy": -1.5, "angry": -1.8, "frustrated": -1.6, "frustrating": -1.6, "terrible": -1.9, "awful": -1.9,
    "bad": -1.2, "worst": -2.0, "horrible": -1.9, "annoyed": -1.4, "annoying": -1.4, "disappointed": -1.5,
    "ridiculous": -1.6, "useless": -1.7, "wrong": -1.0, "problem": -0.6, "issue": -0.5, "broken": -1.1,
    "failed": -1.0, "fail": -1.0, "fails": -1.0, "charged": -0.4, "twice": -0.3, "lost": -0.8, "stolen": -1.1,
    "never": -0.6, "still": -0.3, "complaint": -1.2, "cancel": -0.6, "unacceptable": -1.9, "waiting": -0.6,
    "wait": -0.3, "hate": -1.8, "poor": -1.2, "slow": -0.8, "down": -0.4, "error": -0.8, "declined": -0.9,
    "refund": -0.3, "escalate": -0.6, "nobody": -0.8, "unfortunately": -0.6, "sorry": -0.3, "can't": -0.5,
    "cannot": -0.5, "won't": -0.5, "doesn't": -0.4, "didn't": -0.4, "hasn't": -0.4, "not": -0.3,
    "fraud": -1.3, "scam": -1.6, "upset": -1.4, "worried": -1.0, "confused": -0.7,
}
SENTIMENT_NEGATIONS = {"not", "no", "never", "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't", "can't", "won't",
             "hasn't", "haven't", "nothing", "nobody", "hardly"}
SENTIMENT_INTENSIFIERS = {"very": 1.4, "really": 1.3, "so": 1.2, "extremely": 1.6, "totally": 1.3, "absolutely": 1.4,
                "quite": 1.1, "too": 1.2}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def analytics_text_sentiment(text: str) -> float:
    """Sentiment of one utterance in [-1, 1]; 0 when no opinion words are found."""
    words = _WORD.findall(text.lower().replace("’", "'"))
    score = 0.0
    for i, w in enumerate(words):
        value = SENTIMENT_POSITIVE.get(w) or SENTIMENT_NEGATIVE.get(w)
        if value is None:
            continue
        before = words[max(0, i - 3):i]
        if any(b in SENTIMENT_NEGATIONS for b in before) and w not in SENTIMENT_NEGATIONS:
            value = -value * 0.8
        for b in before[-1:]:
            value *= SENTIMENT_INTENSIFIERS.get(b, 1.0)
        score += value
    if "!" in text and score:
        score *= 1.15
    return math.tanh(score / 2.0)
