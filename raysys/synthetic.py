"""Realistic synthetic contact-centre calls for demos, tests and benchmarks; deterministic per seed.

What is modelled: a diurnal arrival curve (business-hours peak, quiet nights, lighter weekends);
log-normal talk time (median about 4 minutes); holds on about a third of calls; after-call work;
a Zipf-like mix of intents; a customer base small enough that people call back, and a repeat
contact for the same intent within a week marks the earlier call unresolved (which is what FCR
measures); sentiment that is lower for unresolved calls and long holds; a short transcript per call.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from raysys.storage.postgres import Call, Turn

# intent -> what customers say about it (phrasings vary so classifiers are not handed the label).
INTENTS: dict[str, tuple[str, ...]] = {
    "billing_dispute": ("I was charged twice for the same order", "there is a fee on my bill I don't recognise",
                        "my invoice amount is wrong this month"),
    "card_lost": ("I lost my card yesterday", "my card was stolen and I need to block it",
                  "I can't find my debit card anywhere"),
    "password_reset": ("I can't log in to my account", "I forgot my password and the reset email never came",
                       "the app keeps saying my password is wrong"),
    "delivery_status": ("where is my package", "my order hasn't arrived yet", "the tracking hasn't updated in days"),
    "cancel_subscription": ("I want to cancel my subscription", "please stop my monthly plan",
                            "how do I end my membership"),
    "refund_request": ("I'd like a refund for my purchase", "I returned the item but got no money back",
                       "can I get my money back for this"),
    "upgrade_plan": ("I want to upgrade to the premium plan", "what does the bigger package cost",
                     "can I add more data to my plan"),
    "technical_issue": ("the internet keeps dropping", "my device won't turn on after the update",
                        "the service has been down since this morning"),
    "address_change": ("I moved and need to update my address", "please change my postal address",
                       "my details are out of date"),
    "complaint": ("I am really unhappy with the service I got", "nobody called me back as promised",
                  "this is the third time I'm calling about this"),
}
INTENT_NAMES = tuple(INTENTS)
_AGENT_LINES = ("Thank you for calling, how can I help you today?", "Let me look into that for you.",
                "I can see the issue on your account.", "I've taken care of that for you now.",
                "Is there anything else I can help with?")
_CUSTOMER_CLOSE = ("Thanks, that's great.", "Okay, I'll wait then.", "That's still not what I asked for.")


@dataclass
class SyntheticCall:
    call: Call
    turns: list[Turn]
    sentiment: float  # in [-1, 1], the CSAT proxy a real analytics run would estimate


@dataclass
class Dataset:
    tenants: list[str]
    calls: list[SyntheticCall] = field(default_factory=list)


def _hour_weights() -> list[float]:
    # Peak 10:00-16:00, shoulder 8-10 and 16-20, quiet night.
    return [0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 1.2, 3.0, 5.0, 6.5, 6.8, 6.0, 6.2, 6.6, 6.0, 5.0, 3.5, 2.5, 1.8,
            1.2, 0.8, 0.5, 0.3]


def generate(tenants: int = 2, calls: int = 100, days: int = 7, seed: int = 0,
             end: date | None = None, tenant_prefix: str = "tenant") -> Dataset:
    """``calls`` calls per tenant spread over the ``days`` days that end on ``end`` (default today, UTC)."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC).date()
    first_day = end - timedelta(days=days - 1)
    hours = _hour_weights()
    intent_weights = [1 / (i + 1) ** 0.9 for i in range(len(INTENT_NAMES))]
    ds = Dataset(tenants=[f"{tenant_prefix}_{t + 1:03d}" for t in range(tenants)])
    for tenant in ds.tenants:
        n_customers = max(3, int(calls * 0.6))
        n_agents = max(2, calls // 40)
        day_weights = [0.6 if (first_day + timedelta(d)).weekday() >= 5 else 1.0 for d in range(days)]
        raw = []
        for i in range(calls):
            d = rng.choices(range(days), day_weights)[0]
            h = rng.choices(range(24), hours)[0]
            started = datetime.combine(first_day + timedelta(days=d), datetime.min.time(), UTC) + timedelta(
                hours=h, seconds=rng.uniform(0, 3600))
            customer = f"cust_{rng.randrange(n_customers):05d}"
            intent = rng.choices(INTENT_NAMES, intent_weights)[0]
            raw.append((started, customer, intent, i))
        raw.sort()
        # A repeat contact within a week by the same customer for the same intent: earlier call unresolved.
        last_seen: dict[tuple[str, str], int] = {}
        unresolved: set[int] = set()
        for idx, (started, customer, intent, _) in enumerate(raw):
            prev = last_seen.get((customer, intent))
            if prev is not None and started - raw[prev][0] <= timedelta(days=7):
                unresolved.add(prev)
            last_seen[(customer, intent)] = idx
        for idx, (started, customer, intent, i) in enumerate(raw):
            ring = rng.uniform(2, 45)
            talk = min(3600.0, rng.lognormvariate(math.log(240), 0.6))
            hold = rng.expovariate(1 / 70) if rng.random() < 0.35 else 0.0
            acw = max(5.0, rng.gauss(45, 20))
            answered = started + timedelta(seconds=ring)
            ended = answered + timedelta(seconds=talk + hold)
            resolved = idx not in unresolved and rng.random() < 0.93
            base = 0.35 if resolved else -0.3
            sentiment = max(-1.0, min(1.0, rng.gauss(base - min(hold, 300) / 1000, 0.3)))
            call = Call(
                id=f"call_{seed}_{tenant}_{i:07d}", tenant_id=tenant, customer_id=customer,
                agent_id=f"agent_{rng.randrange(n_agents):03d}", channel="voice", started_at=started,
                answered_at=answered, ended_at=ended, hold_seconds=round(hold, 1), acw_seconds=round(acw, 1),
                intent=intent, resolved=resolved,
            )
            ds.calls.append(SyntheticCall(call, _turns(rng, intent, talk, resolved), round(sentiment, 3)))
    return ds


def _turns(rng: random.Random, intent: str, talk: float, resolved: bool) -> list[Turn]:
    lines = [("agent", _AGENT_LINES[0]), ("customer", f"Hi, {rng.choice(INTENTS[intent])}."),
             ("agent", _AGENT_LINES[1]), ("agent", _AGENT_LINES[2]),
             ("agent", _AGENT_LINES[3] if resolved else "I'll need to escalate this, someone will call you."),
             ("customer", _CUSTOMER_CLOSE[0] if resolved else rng.choice(_CUSTOMER_CLOSE[1:])),
             ("agent", _AGENT_LINES[4])]
    step = talk / len(lines)
    return [Turn(turn_index=k, speaker_role=role, start_s=round(k * step, 2), end_s=round((k + 0.9) * step, 2),
                 text=text) for k, (role, text) in enumerate(lines)]


def call_fact(sc: SyntheticCall) -> dict:
    """The ClickHouse ``call_facts`` row a processed call would produce."""
    c = sc.call
    return {
        "tenant_id": c.tenant_id, "call_id": c.id, "started_at": c.started_at, "customer_id": c.customer_id,
        "agent_id": c.agent_id or "", "channel": c.channel, "intent": c.intent or "", "resolved": bool(c.resolved),
        "talk_seconds": c.talk_seconds, "hold_seconds": c.hold_seconds, "acw_seconds": c.acw_seconds,
        "aht_seconds": c.aht_seconds, "sentiment_mean": sc.sentiment, "sentiment_start": sc.sentiment,
        "sentiment_end": sc.sentiment, "num_speakers": 2, **_agent_fields(sc),
    }


def _agent_fields(sc: SyntheticCall) -> dict:
    """The scorecard columns: agent talk share from the turns, the customer's sentiment, escalation from the
    words (the unresolved calls' agent says "I'll need to escalate this")."""
    speech = {"agent": 0.0, "customer": 0.0}
    for t in sc.turns:
        speech[t.speaker_role] = speech.get(t.speaker_role, 0.0) + t.end_s - t.start_s
    total = sum(speech.values())
    # Customers of resolved calls arrive less happy than they leave; the others leave less happy.
    start = max(-1.0, min(1.0, sc.sentiment - (0.4 if sc.call.resolved else -0.2)))
    return {"agent_talk_share": round(speech["agent"] / total, 4) if total else None,
            "customer_sentiment_start": round(start, 3), "customer_sentiment_end": sc.sentiment,
            "escalated": any("escalate" in t.text for t in sc.turns if t.speaker_role == "agent")}
