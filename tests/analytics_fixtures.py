"""Fixtures shared by the analytics, intents, reports and maintenance tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    """One MiniLM encoder per session (single thread: the machine has two cores)."""
    import torch

    torch.set_num_threads(1)
    from raysys.actors.embedding import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def analytics_chdb(tmp_path_factory) -> str:
    """A chDB directory of the analytics tests' own, opened only by its Warehouse actor.

    chDB admits one process per directory; the session's ``chdb_dsn`` may already be open in the pytest
    process (storage tests open it directly), and then no actor could open it.
    """
    return f"chdb://{tmp_path_factory.mktemp('analytics-chdb')}"


@pytest.fixture
def asettings(settings, analytics_chdb):
    """The session's services, with ClickHouse on the analytics tests' own chDB (through its actor)."""
    return settings.replace(clickhouse_url=analytics_chdb)


@pytest.fixture
def ctx(asettings, ray_cluster):
    from raysys.tasks.registry import TaskContext

    return TaskContext(settings=asettings, task_id="test")


@pytest.fixture
def warehouse(asettings, ray_cluster):
    """The analytics tests' chDB through its Warehouse actor: ``warehouse.insert_call_facts(facts)``."""
    from raysys.actors.warehouse import Warehouse

    return Warehouse(asettings)


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on loopback; yields (smtp url, handler with .messages)."""
    from aiosmtpd.controller import Controller

    class Collect:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    handler = Collect()
    from raysys.stack import free_port

    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield f"smtp://127.0.0.1:{controller.port}", handler
    controller.stop()


def run(coro):
    return asyncio.run(coro)


async def with_db(settings, fn):
    from raysys.storage.postgres import Database

    db = await Database.open(settings.postgres_url, max_size=2)
    try:
        return await fn(db)
    finally:
        await db.close()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


SMALL_CATALOGUE = [
    ("I lost my card yesterday", "card_lost"), ("my card was stolen", "card_lost"),
    ("I can't find my debit card anywhere", "card_lost"), ("please block my lost card", "card_lost"),
    ("where is my package", "delivery_status"), ("my order hasn't arrived yet", "delivery_status"),
    ("the tracking has not updated in days", "delivery_status"), ("when will my parcel be delivered", "delivery_status"),
    ("I forgot my password", "password_reset"), ("I can't log in to my account", "password_reset"),
    ("the reset email never came", "password_reset"), ("my password is not accepted", "password_reset"),
]


def rttm_turns(rttm_path, uri: str | None = None):
    """Call turns from an RTTM reference: the first speaker is the agent, the other the customer."""
    from raysys.storage.postgres import Turn

    rows = []
    for line in open(rttm_path).read().splitlines():
        p = line.split()
        if len(p) >= 8 and p[0] == "SPEAKER" and (uri is None or p[1] == uri):
            rows.append((float(p[3]), float(p[3]) + float(p[4]), p[7]))
    rows.sort()
    first = rows[0][2]
    lines = {"agent": ["Thank you for calling, how can I help you?", "Let me check that for you.",
                       "I have blocked the card and ordered a new one."],
             "customer": ["Hi, I think somebody stole my card yesterday.", "Yes, at the train station.",
                          "Thanks, that's great."]}
    turns = []
    for k, (s, e, spk) in enumerate(rows):
        role = "agent" if spk == first else "customer"
        turns.append(Turn(k, role, round(s, 3), round(e, 3), lines[role][k % 3]))
    return turns


def stereo_call(path, seconds: float = 16.0):
    """A stereo call from real utterances: speaker 1 (agent) on the left, speaker 2 (customer) on the right.

    Returns the turns (agent first, alternating, 0.4 s pauses)."""
    import numpy as np
    import soundfile as sf
    from conftest import shared_data

    from raysys.storage.postgres import Turn

    speech = shared_data("speech")
    agent = [sf.read(speech / f"spk1_snt{i}.wav", dtype="float32")[0] for i in range(1, 7)]
    customer = [sf.read(speech / f"spk2_snt{i}.wav", dtype="float32")[0] for i in range(1, 7)]
    sr, total = 16_000, int(seconds * 16_000)
    left, right = np.zeros(total, np.float32), np.zeros(total, np.float32)
    turns, t, k = [], 0.2, 0
    texts = {"agent": "Thank you for calling, how can I help?", "customer": "My parcel has not arrived yet."}
    while True:
        role, clip, track = ("agent", agent[k // 2 % 6], left) if k % 2 == 0 else ("customer", customer[k // 2 % 6], right)
        start = int(t * sr)
        if start + len(clip) > total:
            break
        track[start:start + len(clip)] = clip
        turns.append(Turn(k, role, round(t, 3), round(t + len(clip) / sr, 3), texts[role]))
        t += len(clip) / sr + 0.4
        k += 1
    sf.write(path, np.stack([left, right], axis=1), sr)
    return turns
