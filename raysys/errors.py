"""One error hierarchy for raysys. The result backend and the HTTP layer both map from it.

- :class:`InvalidInput`   bad arguments or files: FAILURE at once (no retry), HTTP 4xx.
- :class:`NotFound`       the thing asked for does not exist (for this tenant): FAILURE, HTTP 404.
- :class:`Refused`        a queue message that cannot be run (format, size, unknown task): dead letter.
- :class:`Retry`          control flow: run the job again after ``countdown`` seconds.
- :class:`ModelUnavailable` a model cannot load or run: FAILURE, HTTP 503; readiness fails.
- :class:`ServiceTimeout` an actor did not start or answer within its deadline: retried, HTTP 504.
- :class:`raysys.config.ConfigError` a setting is invalid or missing (no database configured): FAILURE at
  once, exit code 2 on the command line.
- :class:`ServiceUnavailable` a service the job needs (PostgreSQL, ClickHouse, Redis) cannot be reached:
  retried on the infrastructure-outage policy (:func:`is_outage`), HTTP 503.
"""

from __future__ import annotations


class RaysysError(Exception):
    """Base of every error raysys raises on purpose. ``retryable`` says whether a retry can help."""

    retryable = False
    http_status = 500


class InvalidInput(RaysysError, ValueError):
    http_status = 422


class NotFound(RaysysError, LookupError):
    http_status = 404


class Forbidden(RaysysError, PermissionError):
    """Access outside what the caller may reach (a path outside the allowed roots, another tenant)."""

    http_status = 403


class TooLarge(InvalidInput):
    http_status = 413


class UnsupportedMedia(InvalidInput):
    http_status = 415


class Refused(RaysysError):
    """A queue message that will never run; ``reason`` goes to the dead-letter entry."""

    http_status = 400


class UnknownTask(Refused, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown task"


class ModelUnavailable(RaysysError):
    retryable = True
    http_status = 503


class ServiceTimeout(RaysysError):
    """A service the job waits on (a model actor, the Warehouse) did not start or answer in time.

    Retryable: the actor may be restarted, or the cluster may gain the resources it asked for.
    """

    retryable = True
    http_status = 504


class Retry(RaysysError):  # named like Celery's Retry, which it stands for
    """Raise from a task to run it again after ``countdown`` seconds (``None``: the task's backoff)."""

    retryable = True

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None,
                 max_retries: int | None = None) -> None:
        super().__init__(str(exc) if exc else "retry requested")
        self.exc = exc
        self.countdown = countdown
        self.max_retries = max_retries


class ServiceUnavailable(RaysysError):
    """A service a job needs (PostgreSQL, ClickHouse, Redis, ...) cannot be reached. The bridge retries it
    on its own policy (OUTAGE_* settings: minutes of backoff), not on the task's ``max_retries``."""

    retryable = True
    http_status = 503


# Client libraries' exceptions that mean "the service is not there right now", by module and class name (no
# import: this module sits below every client). Matched anywhere in an exception's class hierarchy, so a
# Ray task error that wraps one (Ray's error classes inherit from the cause's class) matches too.
OUTAGE_CLASSES = frozenset({
    "asyncpg.exceptions.PostgresConnectionError",     # connection refused, lost, does not exist
    "asyncpg.exceptions.OperatorInterventionError",   # the server is shutting down / starting (57P)
    "asyncpg.exceptions.TooManyConnectionsError",
    "redis.exceptions.ConnectionError",               # BusyLoadingError (a restarting Redis) is one too
    "redis.exceptions.TimeoutError",
    "clickhouse_connect.driver.exceptions.OperationalError",
    "ray.exceptions.ActorUnavailableError",            # an actor (the warehouse's) restarting or unreachable
})
# Modules whose OSErrors (a refused socket, a Unix socket file gone while PostgreSQL restarts) are outages: a
# FileNotFoundError from a task's own file access is not.
OUTAGE_CLIENT_MODULES = ("asyncpg", "redis", "clickhouse_connect", "urllib3", "httpx", "httpcore", "aiohttp")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says a service the job needs is unreachable: a
    :class:`ServiceUnavailable`, a client library's connection error (:data:`OUTAGE_CLASSES`), or an OSError
    raised inside one of :data:`OUTAGE_CLIENT_MODULES`. Another :class:`RaysysError` is never an outage (the
    task decided what it is)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, ServiceUnavailable):
            return True
        if isinstance(current, RaysysError):
            return False
        names = {f"{k.__module__}.{k.__qualname__}" for k in type(current).__mro__}
        if names & OUTAGE_CLASSES:
            return True
        if isinstance(current, OSError) and _raised_in_client(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _raised_in_client(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.split(".", 1)[0] in OUTAGE_CLIENT_MODULES:
            return True
        tb = tb.tb_next
    return False


def unwrap(exc: BaseException) -> BaseException:
    """The application error behind Ray's wrapper (``RayTaskError`` carries it as ``.cause``), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
