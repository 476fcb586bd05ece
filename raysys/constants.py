"""Every name raysys puts in Redis, every queue and every default, in one place.

Redis keys (``{p}`` is the key prefix, empty by default so Celery producers and raysys agree):

- ``<queue>``                         Celery-compatible list of messages for a queue (LPUSH by producers,
                                      consumers take from the right).
- ``<queue>\\x06\\x16<step>``           Celery priority list for priority step 3, 6 or 9.
- ``{p}raysys:inflight:<consumer>:<list>`` raw messages a consumer took from ``<list>`` and has not
                                      acked yet (one in-flight list per source list).
- ``{p}raysys:consumers``             hash consumer id -> last heartbeat (unix seconds; shown, never compared).
- ``{p}raysys:alive:<consumer>``      a consumer's liveness: set by its heartbeat with a TTL of
                                      CONSUMER_TIMEOUT_SECONDS; once Redis expires it, survivors requeue
                                      the consumer's in-flight messages.
- ``{p}raysys:consumer-queues``       hash consumer id -> JSON list of the lists it consumes.
- ``{p}raysys:delayed``               sorted set of ``<queue>\\x00<raw message>`` scored by due time.
- ``{p}raysys:applied:<token>``       a bridge's batch of transitions was applied (makes a batch re-sent after
                                      a lost reply a no-op; deleted by the bridge's next batch, else 1 hour).
- ``{p}raysys:revoked``               sorted set of revoked job ids (Celery ``revoke``) by revoke time.
- ``<queue>.dead``                    list of dead-letter entries (JSON with the reason and the message),
                                      newest first, the newest DEAD_LETTER_MAX kept.
- ``celery-task-meta-<id>``           Celery result-backend value (SETEX) and pub/sub channel.
- ``{p}raysys:sched:*``               scheduler lease, slot claims and schedule state.
- ``{p}raysys:job-tenant:<id>``       tenant that enqueued job ``<id>`` over HTTP (string, expires with the result).
- ``{p}raysys:report-mailed:<tenant>:<day>`` a daily report's e-mail was sent (a retry or re-run of the job
                                      does not send it again); expires after REPORT_MAILED_TTL seconds.
"""

from __future__ import annotations

QUEUES: tuple[str, ...] = ("ingest", "analytics", "reports")

# Celery's Redis transport: priority steps and the separator it puts between queue name and step.
PRIORITY_SEP = "\x06\x16"  # kombu's separator: priority lists, and the fields of a binding entry
KOMBU_BINDING = "_kombu.binding."  # kombu's exchange -> queue bindings (what a Celery worker declares)
KOMBU_BINDING_PERMANENT = "_kombu.binding_permanent."
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)

RESULT_KEY_PREFIX = "celery-task-meta-"
DEAD_SUFFIX = ".dead"

INFLIGHT_PREFIX = "raysys:inflight:"
CONSUMERS_KEY = "raysys:consumers"
ALIVE_PREFIX = "raysys:alive:"
CONSUMER_QUEUES_KEY = "raysys:consumer-queues"
DELAYED_KEY = "raysys:delayed"
APPLIED_PREFIX = "raysys:applied:"
REVOKED_KEY = "raysys:revoked"
SCHED_PREFIX = "raysys:sched:"
JOB_TENANT_PREFIX = "raysys:job-tenant:"
API_LIMIT_PREFIX = "raysys:api-limit:"  # HTTP API rate limits and per-tenant slots (raysys.serve.limits)
REPORT_MAILED_PREFIX = "raysys:report-mailed:"
REPORT_MAILED_TTL = 8 * 86_400  # a week of reruns and retries, then the marker goes

# Ray names (namespace and named actors).
RAY_NAMESPACE = "raysys"
WAREHOUSE_ACTOR = "raysys-warehouse"
# CPUs of a task that mostly waits on the model and Warehouse actors (which reserve no CPU of their own
# while it waits): a whole CPU per such task would leave a small cluster running few calls at once while
# the model actors sit idle.
ORCHESTRATION_CPUS = 0.25
SCHEDULER_ACTOR = "raysys-scheduler"
BRIDGE_ACTOR_PREFIX = "raysys-bridge-"

# Embedded-stack defaults (ports chosen away from the well-known ones so a real server can coexist).
DEFAULT_REDIS_PORT = 6390
DEFAULT_RAY_PORT = 6391
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_SERVE_PORT = 8000

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
SAMPLE_RATE = 16_000
