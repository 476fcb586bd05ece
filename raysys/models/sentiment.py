"""Text sentiment: the one model behind call sentiment, segment valence from a transcript and the CSAT proxy.

What it is: VADER (Hutto & Gilbert, ICWSM 2014; the PyPI package ``vaderSentiment``, MIT licence, its
7,500-entry human-rated lexicon ships inside the wheel, so nothing is downloaded at run time), a
lexicon-and-rules model that handles negation ("not helpful"), intensifiers ("very", "extremely"),
contrast ("but"), capitals and exclamation marks. On it sits a small contact-centre layer
(:data:`DOMAIN_LEXICON`, :data:`DOMAIN_PHRASES`), because a general-purpose lexicon cannot see that
"I've been waiting forty minutes" or "this is the third time I call" is a complaint, and reads
"I'd like to speak to a manager" as positive ("like"). A phrase replaces the words it covers, then
VADER's own normalisation gives a score in [-1, 1].

Scores: ``score(text)`` in [-1, 1] (VADER's compound); ``label`` is ``positive`` at or above
:data:`POSITIVE_AT` (0.05), ``negative`` at or below -0.05, else ``neutral`` (VADER's published cut-offs,
not tuned on any evaluation set). ``bench/sentiment.py`` prints its accuracy on labelled sets beside the
word lists it replaced.

What it is not: a trained model of context. Sarcasm ("great, charged twice again"), domain jargon not
listed here, sentiment spread over several turns, and languages other than English are beyond it; a
negated phrase ("I haven't been waiting long") keeps the phrase's polarity.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from raysys.errors import InvalidInput

LABELS = ("negative", "neutral", "positive")
POSITIVE_AT = 0.05  # VADER's published thresholds on its compound score
NEGATIVE_AT = -0.05
DOMAIN_VERSION = "cc1"  # bump when DOMAIN_LEXICON or DOMAIN_PHRASES change: audits compare per version

# Word valences on VADER's scale (-4 .. +4), added to or overriding its lexicon. Because they sit in the
# lexicon, VADER's negation and intensifier rules apply to them ("not resolved", "very unhelpful").
DOMAIN_LEXICON: dict[str, float] = {
    # contact-centre complaints VADER does not list
    "unhelpful": -2.0, "unresolved": -2.0, "overcharged": -2.2, "outage": -1.5, "shambles": -2.5,
    "nightmare": -2.5, "hassle": -1.5, "glitch": -1.2, "pointless": -1.8, "escalate": -1.0,
    "disconnected": -1.0, "declined": -0.8, "issue": -0.8, "issues": -0.8, "patient": 1.5,
    # politeness and back-channels: in a call they carry no opinion ("ok", "yes", "sure", "please"
    # answer the agent), while VADER rates them like social-media reactions (ok 1.2, yes 1.7)
    "please": 0.0, "ok": 0.0, "okay": 0.0, "yes": 0.0, "yeah": 0.0, "sure": 0.0, "number": 0.0,
    # requests: "I want to ...", "can you help me with ..." ask for something, they do not judge it
    "want": 0.0, "help": 0.0,
}

_NUM = (r"(?:an?|one|two|three|four|five|six|seven|eight|nine|ten|fifteen|twenty|thirty|forty|fifty|sixty|"
        r"ninety|several|few|many|\d+)(?:-\w+)?")
_ORDINAL = (r"(?:second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|umpteenth|\d+(?:nd|rd|th)|so many|"
            r"several|multiple|too many|how many|many|three|four|five)")
_NOT = (r"(?:not|isn't|isnt|is not|doesn't|doesnt|does not|don't|dont|won't|wont|hasn't|hasnt|has not|haven't|"
        r"haven't|didn't|didnt|can't|cant|cannot|never|still)")

# (name, pattern, valence on VADER's scale). Matched on the lower-cased words joined by single spaces, in
# this order; a later phrase that overlaps an earlier match is skipped. Valence 0 marks phrases whose
# words must not count ("I'd like to ...": "like" is not an opinion there).
DOMAIN_PHRASES: tuple[tuple[str, str, float], ...] = (
    ("sarcastic thanks", r"\bthanks? (?:you )?for nothing\b", -2.5),
    ("long wait", r"\b(?:waiting|waited|wait|on hold|holding|hold|queue|queued|queuing)\b(?: \w+){0,3}? "
                  r"(?:for )?(?:over |more than |almost |nearly |about |like |at least )?" + _NUM
                  + r"(?: and a half| \w+)? (?:minutes?|mins?|hours?|days?|weeks?|months?)\b", -2.2),
    ("long wait", r"\b(?:waiting|waited|on hold)\b(?: \w+){0,2}? (?:forever|ages|so long|too long|all day|"
                  r"for ever)\b", -2.2),
    ("still waiting", r"\b(?:still|been|kept|keep|keeps|am|i'm) (?:me )?(?:waiting|on hold)\b", -1.6),
    ("repeat contact", r"\b(?:the |my |for the )?" + _ORDINAL + r" times?\b", -1.8),
    ("repeat contact", r"\b(?:called|rang|phoned|contacted|emailed|written|explained|told you|asked)(?: \w+)?? "
                       r"(?:twice|again and again|repeatedly|over and over)\b", -1.8),
    ("still broken", r"\bstill (?:not|isn't|is not|doesn't|does not|hasn't|has not|haven't|won't|can't|cannot|"
                     r"no|nothing|broken|down|the same|having|getting|charging|charged)\b", -1.8),
    ("not working", r"\b" + _NOT + r" (?:\w+ )?(?:work|working|works|worked|help|helped|helping|fixed|resolved|solved|"
                    r"sorted|arrived|received|turned up|come through|been sorted|been fixed|been resolved)\b", -1.8),
    ("not helpful", r"\b(?:not|isn't|wasn't|weren't|never) (?:very |really |at all |particularly |much |of any |any )?"
                    r"(?:helpful|useful|acceptable|good enough|help|use)\b", -2.0),
    ("no help", r"\b(?:no help|no use|of no use|(?:nobody|no one|no-one) (?:can|could|will|wants to|seems to) "
                r"help)\b", -2.0),
    ("cancel", r"\b(?:want|wanna|going|need|would like|'d like|like|ready|about|trying) to (?:cancel|close|"
               r"terminate|leave|switch (?:to another|providers?|suppliers?|companies|networks?|banks?))\b", -1.8),
    ("cancel", r"\bcancel(?:l?ing)? (?:my|the|our) (?:account|subscription|contract|service|membership|policy|"
               r"plan)\b", -1.6),
    ("escalate", r"\b(?:speak|talk) (?:to|with) (?:a|an|your|the) (?:manager|supervisor|team leader|"
                 r"someone (?:else|senior|in charge))\b", -1.6),
    ("complaint", r"\b(?:file|make|lodge|raise|submit|open|put in) an? (?:formal |official )?complaint\b", -2.2),
    ("passed around", r"\b(?:transferred|passed|bounced|put through|sent) (?:around|again|back and forth|"
                      r"from one|(?:\w+ )?times)\b", -1.8),
    ("hung up", r"\bhung up on (?:me|us)\b", -2.2),
    ("no call back", r"\b(?:nobody|no one|no-one|never|nobody has|no one has|you never) (?:ever )?(?:called|"
                     r"rang|phoned|got|emailed|wrote|came) (?:me |us )?back\b", -2.0),
    ("no answer", r"\bnever (?:heard|got an? (?:answer|reply|response))\b", -2.0),
    ("charged twice", r"\b(?:charged|billed|debited|taken) (?:me )?(?:twice|two times|double|again)\b|"
                      r"\bdouble (?:charged|billed)\b", -2.2),
    ("fixed", r"\b(?:that|this|you|which|it) (?:\w+ )?(?:fixed|solved|resolved|sorted|sorts|fixes|solves) "
              r"(?:it|that|this|the problem|the issue|my problem|my issue|everything|things)\b", 2.2),
    ("fixed", r"\b(?:problem|issue|it|that|everything|this)(?:'s| is| has been| was| are| have been)? "
              r"(?:now |all |finally |been )?(?:fixed|solved|resolved|sorted(?: out)?|working(?: again| now| fine)|"
              r"works(?: now| again| fine))\b", 2.2),
    ("product name", r"\b(?:credit (?:card|limit|score|check|note)|interest (?:rate|charge)s?|customer (?:care|"
                     r"support|service)|(?:tech|technical) support|security (?:question|code|number|check|details)|"
                     r"direct debit|free (?:trial|phone|upgrade)|service charges?|save (?:my|the) (?:card|details))\b",
     0.0),
    ("request", r"\b(?:i'd|i would|we'd|we would|would you|you'd|i'd just|just) like\b", 0.0),
    ("offer to help", r"\b(?:how|what) (?:can|may) i (?:help|do for) you\b|\b(?:can|may) i help you\b", 0.0),
)


def _package_version() -> str:
    try:
        return version("vaderSentiment")
    except PackageNotFoundError:  # pragma: no cover - installed from a source tree
        return "unknown"


@dataclass(frozen=True)
class Sentiment:
    """One text's sentiment: ``score`` in [-1, 1], its ``label`` and the domain phrases that fired."""

    score: float
    label: str
    phrases: tuple[str, ...] = ()


def label_for(score: float) -> str:
    """``positive``/``neutral``/``negative`` for a score in [-1, 1] (VADER's ±0.05 cut-offs)."""
    if score >= POSITIVE_AT:
        return "positive"
    if score <= NEGATIVE_AT:
        return "negative"
    return "neutral"


class SentimentModel:
    """VADER with the contact-centre layer; one instance may be shared by threads."""

    name = "vader"

    def __init__(self) -> None:
        # vaderSentiment is imported here, not at module import: the emotion model imports this module and
        # only some of its callers score text.
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer, SentiText  # noqa: PLC0415 - vaderSentiment: its lexicon loads only when the model is built

        model = self

        class _Analyzer(SentimentIntensityAnalyzer):
            def score_valence(self, sentiments, text):  # VADER's signature
                # VADER calls this with one valence per word of SentiText(text); phrases replace their words.
                words = SentiText(text).words_and_emoticons
                sentiments, extra, fired = model._apply_phrases(words, list(sentiments))
                model._local.phrases = fired  # per thread: VADER's call chain has no slot for it
                return super().score_valence(sentiments + extra, text)

        self._analyzer = _Analyzer()
        # VADER rates some all-digit text-speak ("143" = I love you: +3.2, "187": -3.1); in a call digits are
        # account, card and phone numbers, so they carry no opinion.
        for word in [w for w in self._analyzer.lexicon if w.isdigit()]:
            del self._analyzer.lexicon[word]
        self._analyzer.lexicon.update(DOMAIN_LEXICON)
        self._phrases = [(n, re.compile(p), v) for n, p, v in DOMAIN_PHRASES]
        self._local = threading.local()
        self.model_version = f"vader-{_package_version()}+{DOMAIN_VERSION}"

    def _apply_phrases(self, words: list[str], sentiments: list[float]) -> tuple[list[float], list[float], tuple]:
        if len(sentiments) != len(words):  # not VADER's usual call: leave the scores alone
            return sentiments, [], ()
        starts, pos = [], 0
        lowered = []
        for w in words:
            starts.append(pos)
            lw = w.lower().replace("’", "'")
            lowered.append(lw)
            pos += len(lw) + 1
        joined = " ".join(lowered)
        used = [False] * len(words)
        extra: list[float] = []
        fired: list[str] = []
        for name, pattern, valence in self._phrases:
            for m in pattern.finditer(joined):
                first = _word_at(starts, m.start())
                last = _word_at(starts, max(m.start(), m.end() - 1))
                if any(used[first:last + 1]):
                    continue
                for k in range(first, last + 1):
                    used[k] = True
                    sentiments[k] = 0.0
                if valence:
                    extra.append(valence)
                fired.append(name)
        return sentiments, extra, tuple(fired)

    def analyze(self, text: str) -> Sentiment:
        """Score one text.

        Args:
            text: any length of English text (one turn is the intended unit); empty gives 0 / neutral.
        Returns:
            :class:`Sentiment` with ``score`` in [-1, 1].
        Raises:
            InvalidInput: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise InvalidInput(f"sentiment needs text, got {type(text).__name__}")
        if not text.strip():
            return Sentiment(0.0, "neutral")
        self._local.phrases = ()
        compound = float(self._analyzer.polarity_scores(text)["compound"])
        score = max(-1.0, min(1.0, compound))
        return Sentiment(score, label_for(score), self._local.phrases)

    def score(self, text: str) -> float:
        """Sentiment of ``text`` in [-1, 1] (0 for no opinion). Raises InvalidInput for a non-string."""
        return self.analyze(text).score

    def score_many(self, texts: Iterable[str]) -> list[float]:
        """:meth:`score` of each text, in order."""
        return [self.score(t) for t in texts]


def _word_at(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # the last word starting at or before offset
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


@lru_cache(maxsize=1)
def default_model() -> SentimentModel:
    """The process-wide model (built once: loading the lexicon takes ~50 ms)."""
    return SentimentModel()


def text_sentiment(text: str) -> float:
    """Sentiment of ``text`` in [-1, 1] from :func:`default_model`. Raises InvalidInput for a non-string."""
    return default_model().score(text)
