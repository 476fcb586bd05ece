"""The one way tests wait: poll a predicate until it holds or a deadline passes (no fixed sleeps).

A test that must show something did *not* happen waits for a later event that must come after it
(a marker job behind it on the same FIFO queue, a marker publication, the bridge's stats settling)
and then checks; it never asserts after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Call ``predicate()`` every ``interval`` s until it returns a truthy value; return that value.

    Raises AssertionError naming ``message`` (what was awaited) and the last value seen when
    ``timeout`` s pass first. The predicate is always called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message} (last value: {value!r})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def async_wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05,
                           message: str = "condition") -> Any:
    """:func:`wait_until` for code running on an event loop: ``await predicate()`` until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message} (last value: {value!r})")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
