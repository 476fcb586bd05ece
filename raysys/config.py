"""One typed settings object, built from the environment at the edge.

No other module reads ``os.environ``: they take a :class:`Settings`. Every variable of the Celery
service raysys replaces is honoured (``CELERY_BROKER_URL`` ... ``CLICKHOUSE_URL``), plus raysys' own.
Invalid values fail at start with one sentence that names the variable (:class:`ConfigError`).

Service URLs left unset mean "use the embedded stack": ``raysys up`` starts Redis, PostgreSQL and
chDB from what pip installed and records their addresses in ``<data dir>/stack.json``;
:meth:`Settings.resolved` fills the unset URLs from that file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from raysys.constants import DEFAULT_DASHBOARD_PORT, DEFAULT_RAY_PORT, DEFAULT_REDIS_PORT, QUEUES
from raysys.errors import RaysysError

# Fields whose values are secrets: never shown (repr, logs, status output).
SECRET_FIELDS = frozenset({"hf_token", "summary_llm_api_key"})


class ConfigError(RaysysError, ValueError):
    """A configuration value is invalid or missing; the message is one sentence naming the variable.

    Not retryable: a job that needs a service nobody configured fails at once with this sentence.
    """

    http_status = 503


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "raysys")


# --- parsers: each takes the raw string and the variable name, returns the value or raises -------


def _str(raw: str, name: str) -> str:
    return raw


def _opt_str(raw: str, name: str) -> str | None:
    return raw or None


def _int(minimum: int = 0) -> Callable[[str, str], int]:
    def parse(raw: str, name: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
        return value

    return parse


def _opt_int(minimum: int = 0) -> Callable[[str, str], int | None]:
    inner = _int(minimum)
    return lambda raw, name: inner(raw, name) if raw.strip() else None


def _float(minimum: float = 0.0) -> Callable[[str, str], float]:
    def parse(raw: str, name: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}.") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
        return value

    return parse


def _opt_float(minimum: float = 0.0) -> Callable[[str, str], float | None]:
    inner = _float(minimum)
    return lambda raw, name: inner(raw, name) if raw.strip() else None


def _bool(raw: str, name: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


_SECRET_QUERY_KEYS = ("password", "passwd", "pass", "secret", "token", "key", "api_key", "apikey", "auth")


def redact_url(url: str | None) -> str | None:
    """``url`` with its password (and secret-looking query values) replaced by ``***``, for output and logs.

    ``redis://:hunter2@host:6379/0`` -> ``redis://:***@host:6379/0``. Anything that is not a URL is
    returned as it is.
    """
    if not url or "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    netloc = parts.netloc
    if not parts.password and not any(f"{k}=" in parts.query.lower() for k in _SECRET_QUERY_KEYS):
        return url  # nothing to hide (and `chdb:///dir` keeps its empty host)
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        netloc = f"{user}{sep}{'***' if password else ''}@{host}" if sep else f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = "&".join(f"{k}={'***' if k.lower() in _SECRET_QUERY_KEYS else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with every URL password in it, and the passwords of ``urls`` wherever they appear, hidden."""
    for url in urls:
        if not url or "://" not in url:
            continue
        with contextlib.suppress(ValueError):
            password = urllib.parse.urlsplit(url).password
            if password:
                for form in {password, urllib.parse.unquote(password), urllib.parse.quote(password, safe="")}:
                    text = text.replace(form, "***")
    return re.sub(r"(\w+://[^/\s:@]*:)[^@\s/]+@", r"\1***@", text)


def _url(*schemes: str, optional: bool = True) -> Callable[[str, str], str | None]:
    def parse(raw: str, name: str) -> str | None:
        raw = raw.strip()
        if not raw:
            if optional:
                return None
            raise ConfigError(f"{name} must be set.")
        parsed = urllib.parse.urlparse(raw)
        if parsed.scheme not in schemes:
            raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, "
                              f"got {redact_url(raw)!r}.")
        if parsed.scheme not in ("chdb", "unix") and not (parsed.hostname or "host=" in parsed.query):
            raise ConfigError(f"{name} must name a host, got {redact_url(raw)!r}.")
        return raw

    return parse


def _timezone(raw: str, name: str) -> str:
    raw = raw.strip() or "UTC"
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name} must be an IANA time zone such as UTC or Asia/Dubai, got {raw!r}.") from None
    return raw


def _queues(raw: str, name: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not names:
        raise ConfigError(f"{name} must list at least one queue name, got {raw!r}.")
    bad = [q for q in names if not all(c.isalnum() or c in "-_.:" for c in q)]
    if bad:
        raise ConfigError(f"{name} has an invalid queue name {bad[0]!r} (letters, digits, - _ . : only).")
    return names


def _opt_queues(raw: str, name: str) -> tuple[str, ...]:
    return _queues(raw, name) if raw.strip() else ()


def _opt_queue(raw: str, name: str) -> str:
    raw = raw.strip()
    return _queues(raw, name)[0] if raw else ""


def _modules(raw: str, name: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in raw.split(",") if m.strip())
    bad = [m for m in names if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise ConfigError(f"{name} must list dotted Python module names, got {bad[0]!r}.")
    return names


def _paths(raw: str, name: str) -> tuple[str, ...]:
    return tuple(str(Path(p).expanduser().resolve()) for p in raw.split(os.pathsep) if p.strip())


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(raw: str, name: str) -> str:
        v = raw.strip().lower()
        if v not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
        return v

    return parse


def _regions(raw: str, name: str) -> tuple[str, ...]:
    codes = tuple(c.strip().upper() for c in raw.split(",") if c.strip())
    bad = [c for c in codes if not re.fullmatch(r"[A-Z]{2}", c)]
    if bad or not codes:
        raise ConfigError(f"{name} must list two-letter country codes such as GB,US, got {raw!r}.")
    return codes


def _gpus(raw: str, name: str) -> float | None:
    """``auto`` (empty) lets raysys decide from the cluster; otherwise a GPU share in [0, 8]."""
    if raw.strip().lower() in ("", "auto"):
        return None
    value = _float(0.0)(raw, name)
    if value > 8:
        raise ConfigError(f"{name} must be between 0 and 8 GPUs (or auto), got {value}.")
    return value


def _env(name: str, parser: Callable[[str, str], Any], default: Any, *aliases: str) -> Any:
    """Declare a settings field read from variable ``name`` (or the first alias that is set)."""
    return field(default=default, metadata={"env": (name, *aliases), "parse": parser})


@dataclass(frozen=True)
class Settings:
    """raysys' configuration. Build it with :meth:`from_env`; fields are documented in the README."""

    # --- the Celery service's variables -------------------------------------------------------------
    broker_url: str | None = _env("CELERY_BROKER_URL", _url("redis", "rediss", "unix"), None, "REDIS_URL")
    result_backend: str | None = _env("CELERY_RESULT_BACKEND", _url("redis", "rediss", "unix"), None)
    timezone: str = _env("CELERY_TIMEZONE", _timezone, "UTC")
    worker_concurrency: int | None = _env("WORKER_CONCURRENCY", _opt_int(1), None)
    worker_max_tasks_per_child: int | None = _env("WORKER_MAX_TASKS_PER_CHILD", _opt_int(1), None)
    task_time_limit: float = _env("TASK_TIME_LIMIT", _float(0.001), 3600.0)
    task_soft_time_limit: float = _env("TASK_SOFT_TIME_LIMIT", _float(0.001), 3300.0)
    rag_service_url: str | None = _env("RAG_SERVICE_URL", _url("http", "https"), None)
    postgres_url: str | None = _env("POSTGRES_URL", _url("postgresql", "postgres"), None, "DATABASE_URL")
    clickhouse_url: str | None = _env("CLICKHOUSE_URL", _url("http", "https", "clickhouse", "chdb"), None)

    # --- raysys' own ----------------------------------------------------------------------------------
    ray_address: str | None = _env("RAY_ADDRESS", _opt_str, None)
    data_dir: str = _env("RAYSYS_DATA_DIR", _str, "")
    queues: tuple[str, ...] = _env("RAYSYS_QUEUES", _queues, QUEUES)
    default_queue: str = _env("RAYSYS_DEFAULT_QUEUE", _opt_queue, "celery")  # unrouted Celery jobs; "" = off
    result_extended: bool = _env("RESULT_EXTENDED", _bool, True)  # name/args/kwargs/worker/queue in results
    key_prefix: str = _env("RAYSYS_KEY_PREFIX", _str, "")
    result_expires: int = _env("RESULT_EXPIRES", _int(1), 86_400)
    max_retries: int = _env("TASK_MAX_RETRIES", _int(0), 3)
    retry_backoff_max: float = _env("RETRY_BACKOFF_MAX", _float(0.0), 600.0)
    max_message_bytes: int = _env("MAX_MESSAGE_BYTES", _int(1024), 1_048_576)
    # Infrastructure outages (PostgreSQL, ClickHouse, Redis or another service unreachable: the error classes
    # in raysys.errors.is_outage) retry on their own policy, apart from TASK_MAX_RETRIES: a database restart
    # must dead-letter nothing. Backoff doubles from OUTAGE_RETRY_BACKOFF up to OUTAGE_RETRY_BACKOFF_MAX
    # (with jitter), at most OUTAGE_MAX_RETRIES times (defaults: about 20-35 minutes in all).
    outage_max_retries: int = _env("OUTAGE_MAX_RETRIES", _int(0), 12)
    outage_retry_backoff: float = _env("OUTAGE_RETRY_BACKOFF", _float(0.0), 5.0)
    outage_retry_backoff_max: float = _env("OUTAGE_RETRY_BACKOFF_MAX", _float(0.0), 300.0)
    dead_letter_max: int = _env("DEAD_LETTER_MAX", _int(0), 10_000)  # newest kept per queue; 0: unbounded
    # A message's own ``timelimit`` [hard, soft] is capped at this many seconds (producers cannot pin a slot
    # for ever); the settings' and the tasks' own limits are not capped.
    max_message_time_limit: float = _env("MAX_MESSAGE_TIME_LIMIT", _float(1.0), 6 * 3600.0)
    # Queues callbacks, errbacks and chain steps may be published to besides RAYSYS_QUEUES and the default
    # queue (for instance a queue of a Celery worker that runs next to raysys); any other is refused.
    callback_queues: tuple[str, ...] = _env("RAYSYS_CALLBACK_QUEUES", _opt_queues, ())
    heartbeat_seconds: float = _env("HEARTBEAT_SECONDS", _float(0.1), 5.0)
    consumer_timeout_seconds: float = _env("CONSUMER_TIMEOUT_SECONDS", _float(0.5), 30.0)
    task_modules: tuple[str, ...] = _env("RAYSYS_TASK_MODULES", _modules, ())  # extra modules that register tasks
    bridge_batch_size: int = _env("BRIDGE_BATCH_SIZE", _int(1), 256)  # light jobs per batch
    # Ray starts worker processes at nice 15, below every other process on the node; the bridges sit on
    # every job's path and ask for this nice value instead (empty: keep Ray's).
    bridge_niceness: int | None = _env("BRIDGE_NICENESS", _opt_int(-20), 0)
    # Light-job executor actors per bridge; 0 runs light jobs on a thread of the bridge's own process.
    bridge_executors: int = _env("BRIDGE_EXECUTORS", _int(0), 0)
    allowed_roots: tuple[str, ...] = _env("RAYSYS_ALLOWED_ROOTS", _paths, ())
    max_document_bytes: int = _env("MAX_DOCUMENT_BYTES", _int(1), 50 * 1024 * 1024)
    max_document_pages: int = _env("MAX_DOCUMENT_PAGES", _int(1), 2_000)
    max_audio_seconds: float = _env("MAX_AUDIO_SECONDS", _float(1.0), 4 * 3600.0)
    max_upload_bytes: int = _env("MAX_UPLOAD_BYTES", _int(1), 200 * 1024 * 1024)
    max_request_bytes: int = _env("MAX_REQUEST_BYTES", _int(1024), 1_048_576)  # an HTTP body that is not an upload
    # HTTP API limits, kept in Redis so every replica shares them; 0 turns one off.
    api_rate_limit: float = _env("API_RATE_LIMIT", _float(0.0), 20.0)  # requests per second per API key ...
    api_rate_burst: int = _env("API_RATE_BURST", _int(1), 40)  # ... with bursts of this many
    api_tenant_concurrency: int = _env("API_TENANT_CONCURRENCY", _int(0), 32)  # requests in progress per tenant
    api_tenant_wait_slots: int = _env("API_TENANT_WAIT_SLOTS", _int(0), 4)  # wait=true analytics per tenant

    embedding_model: str | None = _env("EMBEDDING_MODEL", _opt_str, None)
    diarization_backend: str = _env("DIARIZATION_BACKEND", _choice("builtin", "pyannote"), "builtin")
    diarization_model: str = _env("DIARIZATION_MODEL", _str, "pyannote/speaker-diarization-community-1")
    emotion_backend: str = _env("EMOTION_BACKEND", _choice("builtin", "speechbrain"), "builtin")
    emotion_model: str = _env("EMOTION_MODEL", _str, "speechbrain/emotion-recognition-wav2vec2-IEMOCAP")
    hf_token: str | None = _env("HF_TOKEN", _opt_str, None, "HUGGINGFACE_TOKEN")
    diarization_num_gpus: float | None = _env("DIARIZATION_NUM_GPUS", _gpus, None)
    emotion_num_gpus: float | None = _env("EMOTION_NUM_GPUS", _gpus, None)
    embedding_num_gpus: float | None = _env("EMBEDDING_NUM_GPUS", _gpus, None)
    diarization_replicas: int = _env("DIARIZATION_REPLICAS", _int(1), 1)
    emotion_replicas: int = _env("EMOTION_REPLICAS", _int(1), 1)
    embedding_replicas: int = _env("EMBEDDING_REPLICAS", _int(1), 1)
    # Deadlines on waiting for actors (seconds): placed and loaded; one model call; one Warehouse call.
    actor_start_timeout: float = _env("ACTOR_START_TIMEOUT", _float(1.0), 300.0)
    model_call_timeout: float = _env("MODEL_CALL_TIMEOUT", _float(1.0), 1800.0)
    warehouse_call_timeout: float = _env("WAREHOUSE_CALL_TIMEOUT", _float(1.0), 300.0)
    # Speech to text (issue 15): backend, faster-whisper model (folder or hub id), language (empty: detect),
    # CTranslate2 compute type (empty: int8 on CPU, float16 on GPU), pool size and GPUs per actor.
    transcription_backend: str = _env("TRANSCRIPTION_BACKEND", _choice("pocketsphinx", "faster-whisper"),
                                      "pocketsphinx")
    transcription_model: str = _env("TRANSCRIPTION_MODEL", _str, "Systran/faster-whisper-small")
    transcription_language: str | None = _env("TRANSCRIPTION_LANGUAGE", _opt_str, None)
    transcription_compute_type: str | None = _env("TRANSCRIPTION_COMPUTE_TYPE", _opt_str, None)
    transcription_num_gpus: float | None = _env("TRANSCRIPTION_NUM_GPUS", _gpus, None)
    transcription_replicas: int = _env("TRANSCRIPTION_REPLICAS", _int(1), 2)

    smtp_url: str | None = _env("SMTP_URL", _url("smtp", "smtps"), None)
    report_sender: str = _env("REPORT_SENDER", _str, "raysys-reports@localhost")
    fcr_window_days: int = _env("FCR_WINDOW_DAYS", _int(1), 7)
    call_retention_days: int = _env("CALL_RETENTION_DAYS", _int(1), 365)
    temp_max_age_hours: float = _env("TEMP_MAX_AGE_HOURS", _float(0.0), 24.0)
    # Cleanup deletes a session's Redis key only under this prefix (a row naming any other key is refused).
    session_key_prefix: str = _env("SESSION_KEY_PREFIX", _str, "session:")
    summary_llm_url: str | None = _env("SUMMARY_LLM_URL", _url("http", "https"), None)
    summary_llm_model: str = _env("SUMMARY_LLM_MODEL", _str, "gpt-4o-mini")
    summary_llm_api_key: str | None = _env("SUMMARY_LLM_API_KEY", _opt_str, None)
    intent_model_dir: str | None = _env("INTENT_MODEL_DIR", _opt_str, None)
    # PII redaction (issue 17): turns, summaries, results, archives; document chunks only when asked.
    # A tenant's own setting (tenants.pii_redaction / pii_redact_documents) wins over these defaults.
    pii_redaction: bool = _env("PII_REDACTION", _bool, True)
    pii_redact_documents: bool = _env("PII_REDACT_DOCUMENTS", _bool, False)
    pii_phone_regions: tuple[str, ...] = _env("PII_PHONE_REGIONS", _regions, ("GB", "US"))
    audit_dir: str | None = _env("AUDIT_DIR", _opt_str, None)
    audit_regression_threshold: float = _env("AUDIT_REGRESSION_THRESHOLD", _float(0.0), 0.05)
    redis_port: int = _env("RAYSYS_REDIS_PORT", _int(1), DEFAULT_REDIS_PORT)
    ray_port: int = _env("RAYSYS_RAY_PORT", _int(1), DEFAULT_RAY_PORT)
    dashboard_port: int = _env("RAYSYS_DASHBOARD_PORT", _int(1), DEFAULT_DASHBOARD_PORT)
    serve_host: str = _env("SERVE_HOST", _str, "127.0.0.1")
    serve_port: int = _env("SERVE_PORT", _int(1), 8000)
    # Log lines: "text" (readable, the default) or "json" (one object per line, for log aggregation).
    log_format: str = _env("RAYSYS_LOG_FORMAT", _choice("text", "json"), "text")
    schedule_file: str | None = _env("RAYSYS_SCHEDULE_FILE", _opt_str, None)  # scheduler: TOML/JSON/YAML

    def __repr__(self) -> str:
        """Every field, with secrets hidden and URL passwords redacted (settings end up in logs)."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        if not self.data_dir:
            object.__setattr__(self, "data_dir", _default_data_dir())
        object.__setattr__(self, "data_dir", str(Path(self.data_dir).expanduser().resolve()))
        if self.task_soft_time_limit > self.task_time_limit:
            raise ConfigError(
                f"TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit:g}) must not exceed "
                f"TASK_TIME_LIMIT ({self.task_time_limit:g})."
            )
        if not self.session_key_prefix:
            raise ConfigError("SESSION_KEY_PREFIX must not be empty (cleanup would delete any Redis key a "
                              "sessions row names).")
        if not self.allowed_roots:
            roots = (str(Path(self.data_dir) / "uploads"), str(Path(self.data_dir) / "documents"))
            object.__setattr__(self, "allowed_roots", roots)
        if not self.intent_model_dir:  # every process of a deployment finds the models trained there
            object.__setattr__(self, "intent_model_dir", str(Path(self.data_dir) / "intents"))

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); ``overrides`` win.

        Raises:
            ConfigError: a value is invalid; the message names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            names = f.metadata["env"]
            raw = next((env[n] for n in names if n in env), None)
            if raw is not None:
                values[f.name] = f.metadata["parse"](raw, names[0])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in another process (a Ray worker, a job)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            name = f.metadata["env"][0]
            if isinstance(value, tuple):
                sep = os.pathsep if f.name == "allowed_roots" else ","
                out[name] = sep.join(value)
            elif isinstance(value, bool):
                out[name] = "true" if value else "false"
            else:
                out[name] = str(value)
        return out

    # --- derived ----------------------------------------------------------------------------------

    @property
    def callback_targets(self) -> frozenset[str]:
        """Queues a callback, errback or chain step may name: RAYSYS_QUEUES, the default queue and
        RAYSYS_CALLBACK_QUEUES (each with its Celery priority lists)."""
        return frozenset((*self.queues, *((self.default_queue,) if self.default_queue else ()),
                          *self.callback_queues))

    @property
    def stack_file(self) -> Path:
        return Path(self.data_dir) / "stack.json"

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def temp_dir(self) -> Path:
        return Path(self.data_dir) / "tmp"

    @property
    def chdb_path(self) -> Path:
        return Path(self.data_dir) / "clickhouse"

    @property
    def redis_url(self) -> str:
        """The broker's URL; raises when neither it nor an embedded stack is known."""
        url = self.broker_url or self.result_backend
        if not url:
            raise ConfigError("CELERY_BROKER_URL is not set and no embedded stack is running (run `raysys up`).")
        return url

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def warehouse_dsn(self) -> str:
        return self.clickhouse_url or f"chdb://{self.chdb_path}"

    def resolved(self) -> Settings:
        """These settings with unset service URLs filled from the embedded stack's ``stack.json``."""
        try:
            stack = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return self
        urls = stack.get("urls", {})
        changes: dict[str, Any] = {}
        if not self.broker_url and urls.get("redis"):
            changes["broker_url"] = urls["redis"]
        if not self.postgres_url and urls.get("postgres"):
            changes["postgres_url"] = urls["postgres"]
        if not self.ray_address and urls.get("ray"):
            changes["ray_address"] = urls["ray"]
        return self.replace(**changes) if changes else self
