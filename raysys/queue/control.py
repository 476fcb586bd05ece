"""Celery's remote control on Redis, as a bridge hears and answers it.

``app.control.revoke(...)`` and ``app.control.inspect().active()`` (and ``celery -A app inspect active``)
publish a command on kombu's fanout exchange ``celery.pidbox``, which the Redis transport carries as a pub/sub
message on ``/<db>.celery.pidbox``. A command that wants replies names a direct exchange and routing key
(``reply_to``) and a ``ticket``; each worker answers ``{hostname: reply}`` by LPUSHing a kombu message onto the
queues bound to that exchange with that key (the set ``_kombu.binding.<exchange>``), and the client keeps
the replies carrying its ticket.

The bridge answers ``ping``, ``active``, ``reserved``, ``scheduled``, ``registered``, ``stats``,
``active_queues`` and ``revoked``; anything else gets Celery's ``{"error": "No such control command: ..."}``.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from raysys.constants import KOMBU_BINDING, PRIORITY_SEP


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
