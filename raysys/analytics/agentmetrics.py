"""The per-call inputs of the agent scorecards: agent talk share and interruptions, the customer's own
sentiment start and end, and whether the call was escalated.

Plain functions over what :mod:`raysys.analytics.callmetrics` and the sentiment model already give, so
this module needs neither Ray nor a database. The daily per-agent aggregation itself is SQL, in
:mod:`raysys.storage.agent_metrics`.

Escalation is known only where the call has words: a call is *escalated* when the agent escalates or
hands the customer to a manager or supervisor ("I'll need to escalate this", "let me transfer you to my
supervisor"), or the customer asks for one ("can I speak to a manager"). A call with text and none of
these was not escalated; a call without text is unknown (``None``) and left out of the rate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from raysys.analytics.callmetrics import sentiment_summary

_SENIOR = r"(?:manager|supervisor|team leader|team lead|someone (?:more )?senior|(?:a |my )?(?:senior|second-line) " \
          r"(?:colleague|team|agent))"
_AGENT_ESCALATES = re.compile(
    r"\bescalat(?:e|ed|es|ing)\b|\b(?:transfer(?:ring)?|put(?:ting)?|pass(?:ing)?|hand(?:ing)?) (?:you|this|your "
    r"(?:call|case)) (?:through |over |on )?to (?:a|an|my|the|our) " + _SENIOR, re.IGNORECASE)
_CUSTOMER_ASKS = re.compile(
    r"\b(?:speak|talk) (?:to|with) (?:a|an|your|the) " + _SENIOR + r"|\bescalate (?:this|it|my)\b", re.IGNORECASE)


def escalated(turns: Sequence[Any]) -> bool | None:
    """Whether the call was escalated, from its turns (``speaker_role``, ``text``); None without any text."""
    texts = [(t.speaker_role, t.text or "") for t in turns if (t.text or "").strip()]
    if not texts:
        return None
    return any((_CUSTOMER_ASKS if role == "customer" else _AGENT_ESCALATES).search(text) for role, text in texts)


def customer_sentiment(items: Sequence[dict]) -> dict[str, float | None]:
    """``{"start", "end", "mean"}`` of the customer's items only (all None when the customer said nothing
    scored); items as :func:`raysys.analytics.callmetrics.sentiment_summary` takes them."""
    return sentiment_summary([i for i in items if i.get("role") == "customer"])


def fact_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The ``call_facts`` columns of the scorecards from an :func:`raysys.tasks.analytics.analyse_call` result.

    ``agent_talk_share`` is the agent's share of the call's speech (None when no agent speech is known);
    ``agent_interruptions`` the interruptions the agent made; ``customer_sentiment_start``/``_end`` None
    when the customer said nothing scored; ``escalated`` None when unknown.
    """
    timeline = result.get("timeline") or {}
    speech = timeline.get("speech_seconds") or {}
    share = (timeline.get("talk_share") or {}).get("agent") if speech.get("agent") else None
    cs = result.get("customer_sentiment") or {}
    return {
        "agent_talk_share": share,
        "agent_interruptions": int((timeline.get("interruptions_by") or {}).get("agent", 0)),
        "customer_sentiment_start": cs.get("start"), "customer_sentiment_end": cs.get("end"),
        "escalated": result.get("escalated"),
    }
