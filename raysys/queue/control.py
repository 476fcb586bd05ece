"""Celery's remote control on Redis, as a bridge hears and answers it.

``app.control.revoke(...)`` and ``app.control.inspect().active()`` (and ``celery -A app inspect active``)
publish a command on kombu's fanout exchange ``celery.pidbox``, which the Redis transport carries as a pub/sub
message on ``/<db>.celery.pidbox``. A command that wants replies names a direct exchange and routing key
(``reply_to``) and a ``ticket``; each worker answers ``{hostname: reply}`` by LPUSHing a kombu message onto the
queues bound to that exchange with that key (the set ``_kombu.binding.<exchange>``), and the client keeps
the replies carrying its ticket.

The bridge answers ``ping``, ``active``, ``reserved``, ``scheduled``, ``registered``, ``stats``,
``active_queues`` and ``revoked``; anything else gets Celery's ``{"error": "No such control command: ..."}``.
:class:`ControlStage` is the bridge's side: it listens, remembers revoked ids (and with ``terminate`` cancels
or interrupts the job running), and answers; the functions above read and write the wire format.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from raysys.constants import KOMBU_BINDING, PRIORITY_SEP
from raysys.queue import messages
from raysys.queue.job import Job
from raysys.tasks.registry import REGISTRY

log = logging.getLogger("raysys.queue.bridge")

REVOKE_KEEP_SECONDS = 3 * 3600.0  # how long a revoke is remembered (Celery's REVOKE_EXPIRES)


@dataclass
class Command:
    """One pidbox broadcast."""

    method: str
    arguments: dict = field(default_factory=dict)
    destination: list[str] | None = None
    reply_exchange: str | None = None
    reply_key: str | None = None
    ticket: str | None = None

    def for_worker(self, hostname: str) -> bool:
        return not self.destination or hostname in self.destination

    @property
    def wants_reply(self) -> bool:
        return bool(self.reply_exchange and self.reply_key and self.ticket)

    def revoked_ids(self) -> list[str]:
        ids = self.arguments.get("task_id")
        return [ids] if isinstance(ids, str) else [i for i in (ids or []) if isinstance(i, str)]


def parse(data: Any) -> Command | None:
    """The command in a pidbox pub/sub message; None for anything that is not one."""
    try:
        env = json.loads(data)
        body = env["body"]
        if (env.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        command = json.loads(body)
        method = command.get("method")
        if not isinstance(method, str):
            return None
        reply_to = command.get("reply_to") or {}
        destination = command.get("destination")
        return Command(method=method, arguments=command.get("arguments") or {},
                       destination=[d for d in destination if isinstance(d, str)] if destination else None,
                       reply_exchange=reply_to.get("exchange"), reply_key=reply_to.get("routing_key"),
                       ticket=command.get("ticket"))
    except Exception:  # noqa: BLE001 - a broadcast we cannot read is not ours to act on
        return None


def reply_message(hostname: str, reply: Any, command: Command) -> bytes:
    """The kombu message (Redis transport, JSON, base64 body) carrying ``{hostname: reply}``."""
    body = json.dumps({hostname: reply}, default=str).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"ticket": command.ticket, "clock": 1},
        "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": command.reply_exchange, "routing_key": command.reply_key},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


def binding_key(exchange: str) -> str:
    return f"{KOMBU_BINDING}{exchange}"


def reply_queues(bindings: set[bytes], routing_key: str, exchange: str | None = None) -> list[str]:
    """The queues bound to the reply exchange with ``routing_key`` (entries ``key SEP pattern SEP queue``).

    With ``exchange``, only kombu's reply queues of that exchange (``<oid>.<exchange>``): a binding a producer
    wrote by hand cannot make the bridge push onto any other key (a queue, an in-flight list, a result).
    """
    out = []
    for entry in bindings:
        parts = entry.decode("utf-8", "replace").split(PRIORITY_SEP)
        if len(parts) == 3 and parts[0] == routing_key and (exchange is None or parts[2].endswith(f".{exchange}")):
            out.append(parts[2])
    return sorted(out)


def queue_info(name: str) -> dict:
    """A consumed queue as Celery's ``active_queues`` describes it."""
    return {"name": name, "exchange": {"name": name, "type": "direct", "arguments": None, "durable": True,
                                       "passive": False, "auto_delete": False, "delivery_mode": None,
                                       "no_declare": False},
            "routing_key": name, "queue_arguments": None, "binding_arguments": None, "consumer_arguments": None,
            "durable": True, "exclusive": False, "auto_delete": False, "no_ack": False, "alias": None,
            "bindings": [], "no_declare": None, "expires": None, "message_ttl": None, "max_length": None,
            "max_length_bytes": None, "max_priority": None}


class ControlStage:
    """A bridge's side of the remote control: it listens on the pidbox channel, honours ``revoke`` and
    answers ``inspect`` (``core``: its :class:`~raysys.queue.bridge.BridgeCore`)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    async def listen(self) -> None:
        """Listen to Celery's control broadcasts (kombu's fanout exchange ``celery.pidbox`` is a Redis
        pub/sub channel ``/<db>.celery.pidbox``): honour ``revoke`` and answer ``inspect`` (:mod:`.control`)."""
        db = self.core.broker.redis.connection_pool.connection_kwargs.get("db", 0)
        while not self.core.stopping:
            conn = self.core.broker.connect()
            pubsub = conn.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe("*.pidbox")
                while not self.core.stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    channel = message.get("channel") or b""
                    if channel.startswith(b"/") and not channel.startswith(f"/{db}.".encode()):
                        continue  # another database's broadcast
                    command = parse(message.get("data"))
                    if command is not None and command.for_worker(self.core.worker_name):
                        await self._on_command(command)
            except (RedisError, OSError) as exc:
                await self.core.redis_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await conn.aclose()

    async def _on_command(self, command: Command) -> None:
        if command.method == "revoke":
            ids = command.revoked_ids()
            if ids:
                await self._on_revoke(ids, bool(command.arguments.get("terminate")))
            reply: Any = {"ok": f"tasks {', '.join(ids)} flagged as revoked"}
        else:
            reply = self._inspect(command.method)
        if not command.wants_reply:
            return
        redis = self.core.broker.redis
        bindings = await redis.smembers(binding_key(command.reply_exchange))
        message = reply_message(self.core.worker_name, reply, command)
        for queue in reply_queues(bindings, command.reply_key, command.reply_exchange):
            await redis.lpush(queue, message)

    def _inspect(self, method: str) -> Any:
        """This bridge's answer to ``celery inspect <method>``, shaped as a Celery worker's."""
        jobs = list(self.core.jobs.values())
        if method == "ping":
            return {"ok": "pong"}
        if method in ("active", "reserved"):
            return [self._request_info(j) for j in jobs if (j.started is not None) == (method == "active")]
        if method == "scheduled":
            return []  # eta and countdown jobs wait in Redis' delayed set, not in a worker: raysys inspect scheduled
        if method == "registered":
            return sorted({spec.name for spec in REGISTRY.values()})
        if method == "active_queues":
            return [queue_info(q) for q in self.core.queues]
        if method == "revoked":
            return sorted(self.core.revoked)
        if method == "stats":
            soft, hard = self.core.settings.task_soft_time_limit, self.core.settings.task_time_limit
            return {"pid": os.getpid(), "uptime": int(time.time() - self.core.started_at), "clock": "0",
                    "broker": {"transport": "redis", "hostname": socket.gethostname()},
                    "pool": {"implementation": "raysys.queue.bridge:QueueBridge", "max-concurrency": self.core.concurrency,
                             "processes": [os.getpid()], "timeouts": [soft, hard],
                             "max-tasks-per-child": self.core.settings.worker_max_tasks_per_child or "N/A"},
                    "prefetch_count": self.core.claim.light_capacity + self.core.concurrency * len(self.core.queues),
                    "total": dict(self.core.by_task), "raysys": self.core.snapshot()}
        return {"error": f"No such control command: {method}"}

    def _request_info(self, job: Job) -> dict:
        return {"id": job.id, "name": job.spec.name, "type": job.spec.name, "args": job.msg.args,
                "kwargs": job.msg.kwargs, "hostname": self.core.worker_name, "time_start": job.started,
                "acknowledged": True, "worker_pid": os.getpid(),
                "delivery_info": {"exchange": "", "routing_key": job.msg.queue, "priority": 0, "redelivered": False}}

    async def _on_revoke(self, ids: list[str], terminate: bool) -> None:
        """Remember the ids (queued, delayed and retrying jobs get REVOKED when they come up); with
        ``terminate``, cancel those running here as heavy Ray tasks (REVOKED ``terminated``)."""
        now = time.time()
        for task_id in ids:
            self.core.revoked[task_id] = now
        log.info("bridge %s: revoked %s%s", self.core.name, ", ".join(ids[:20]), " (terminate)" if terminate else "")
        if terminate:
            for task_id in ids:
                job = self.core.jobs.get(task_id)
                if job is None or job.terminated or job.started is None:
                    continue
                if job.stop is not None:  # a heavy job: its run stage kills the Ray task (and logs it)
                    job.terminated = True
                    job.stop.set()
                elif job.runner is not None and job.runner.terminate(job.index):
                    job.terminated = True
                    log.warning("job %s %s revoked with terminate: interrupting it", job.id, job.spec.name)
        with contextlib.suppress(RedisError, OSError):
            await self.core.broker.revoke(ids, now, REVOKE_KEEP_SECONDS)


    def active(self) -> list[dict]:
        now = time.time()
        return [{"id": j.id, "task": j.spec.name, "queue": j.msg.queue, "retries": j.msg.retries,
                 "args": j.msg.args, "kwargs": j.msg.kwargs, "bridge": self.core.name,
                 "started": messages.to_iso(j.started), "elapsed": round(now - (j.started or j.claimed), 3),
                 "running": j.started is not None} for j in list(self.core.jobs.values())]
