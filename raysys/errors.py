"""One error hierarchy for raysys. The result backend and the HTTP layer both map from it.

- :class:`InvalidInput`   bad arguments or files: FAILURE at once (no retry), HTTP 4xx.
- :class:`NotFound`       the thing asked for does not exist (for this tenant): FAILURE, HTTP 404.
- :class:`Refused`        a queue message that cannot be run (format, size, unknown task): dead letter.
- :class:`Retry`          control flow: run the job again after ``countdown`` seconds.
- :class:`ModelUnavailable` a model cannot load or run: FAILURE, HTTP 503; readiness fails.
- :class:`ServiceTimeout` an actor did not start or answer within its deadline: retried, HTTP 504.
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


class Retry(RaysysError):  # noqa: N818 - named like Celery's Retry, which it stands for
    """Raise from a task to run it again after ``countdown`` seconds (``None``: the task's backoff)."""

    retryable = True

    def __init__(self, exc: BaseException | None = None, countdown: float | None = None,
                 max_retries: int | None = None) -> None:
        super().__init__(str(exc) if exc else "retry requested")
        self.exc = exc
        self.countdown = countdown
        self.max_retries = max_retries
