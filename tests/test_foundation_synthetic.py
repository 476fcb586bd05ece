"""The synthetic call generator: deterministic per seed, and realistic in the ways metrics depend on."""

from __future__ import annotations

from datetime import date, timedelta

from raysys import synthetic


def _fingerprint(ds):
    return [(sc.call.id, sc.call.customer_id, sc.call.started_at.isoformat(), sc.call.hold_seconds,
             sc.call.resolved, sc.call.intent, sc.sentiment, tuple(t.text for t in sc.turns)) for sc in ds.calls]


def test_same_seed_same_data_other_seed_other_data():
    end = date(2026, 11, 1)
    a = synthetic.generate(tenants=2, calls=150, days=5, seed=7, end=end)
    b = synthetic.generate(tenants=2, calls=150, days=5, seed=7, end=end)
    c = synthetic.generate(tenants=2, calls=150, days=5, seed=8, end=end)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)


def test_calls_are_realistic():
    end = date(2026, 11, 1)
    ds = synthetic.generate(tenants=1, calls=600, days=7, seed=1, end=end)
    calls = [sc.call for sc in ds.calls]
    assert len(calls) == 600
    assert all(end - timedelta(days=6) <= c.started_at.date() <= end for c in calls)
    # Business hours dominate.
    daytime = sum(8 <= c.started_at.hour < 20 for c in calls)
    assert daytime / len(calls) > 0.8
    # Handling time: talk + hold + after-call work, with a median of a few minutes.
    aht = sorted(c.aht_seconds for c in calls)
    assert 120 < aht[len(aht) // 2] < 600
    assert 0.2 < sum(c.hold_seconds > 0 for c in calls) / len(calls) < 0.5
    # People call back: repeat callers exist and their earlier same-intent call is unresolved.
    customers = [c.customer_id for c in calls]
    assert len(set(customers)) < len(customers)
    unresolved = [c for c in calls if not c.resolved]
    assert 0.03 < len(unresolved) / len(calls) < 0.5
    # Sentiment in range, and lower when unresolved.
    sent = {sc.call.id: sc.sentiment for sc in ds.calls}
    assert all(-1 <= s <= 1 for s in sent.values())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean([sent[c.id] for c in unresolved]) < mean([sent[c.id] for c in calls if c.resolved])
    # Each call has an agent/customer transcript in time order.
    for sc in ds.calls[:20]:
        roles = {t.speaker_role for t in sc.turns}
        assert roles == {"agent", "customer"}
        assert all(t.start_s < t.end_s for t in sc.turns)
