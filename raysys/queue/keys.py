"""Redis key names of the Celery layout: a queue's priority lists and a job's result key.

raysys' own keys (in-flight lists, consumers, the delayed set, ...) are named in :mod:`raysys.constants`.
"""

from __future__ import annotations

from raysys.constants import PRIORITY_SEP, PRIORITY_STEPS, RESULT_KEY_PREFIX

CONSUMED_LEVELS: tuple[int, ...] = tuple(range(10))


def priority_step(priority: int | None) -> int:
    """kombu's mapping of a priority to a list step: the largest of 0, 3, 6, 9 not above it."""
    p = int(priority or 0)
    step = 0
    for s in PRIORITY_STEPS:
        if s <= p:
            step = s
    return step


def list_for(queue: str, priority: int | None = None) -> str:
    """The Redis list a message of ``priority`` for ``queue`` lives in (Celery's layout)."""
    return step_list(queue, priority_step(priority))


def step_list(queue: str, step: int) -> str:
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def lists_in_order(queues: list[str] | tuple[str, ...]) -> list[str]:
    """Every list of ``queues`` in the order kombu consumes them: priority first, then queue.

    Consumers take every level 0-9, not only kombu's default steps 0/3/6/9: a producer configured with
    ``broker_transport_options={"priority_steps": list(range(10))}`` puts priority 5 on ``<queue>\\x06\\x165``.
    """
    return [step_list(q, s) for s in CONSUMED_LEVELS for q in queues]


def result_key(task_id: str) -> str:
    return f"{RESULT_KEY_PREFIX}{task_id}"
