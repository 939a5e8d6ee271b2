"""The exceptions that end a job early, the exit codes, how a failure is named in one line, and
which failures are worth retrying.

Infrastructure failures (a worker or node died, an object was lost, storage timed out or answered
5xx) may pass on a second try: the driver retries them with backoff (jobs/run/retry.py). Anything
else (bad data, a bug) would fail the same way again: it is never retried. Imports nothing of ours.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

# Exit codes of every command, in one place.
EXIT_OK = 0
EXIT_FAILED_SHARDS = 1  # render: more shards failed than --max-failed-shards, or the job stalled
EXIT_BROKEN = 1  # verify: a committed object is missing or differs from its marker
EXIT_BAD_JOB = 2  # a bad job or command line: nothing was rendered or written
EXIT_NOT_AN_OUTPUT = 2  # status / verify: the folder is not a turbobatch output (or unreadable)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM): a scheduler, ray job stop, Kubernetes


class JobError(ValueError):
    """A bad job, found before any actor starts.

    The message names the field (as its CLI flag), the value and what would be valid, so the
    user can fix the command without reading code.
    """


class MissingArgument(JobError):
    """INPUT or OUTPUT given neither on the command line nor in --config.

    It keeps the argument's name so the command line can restate the usage with the command the
    user typed (``turbobatch render``, ``python -m turbobatch render``, ...).
    """

    def __init__(self, name: str, prog: str = "turbobatch render") -> None:
        self.name = name
        super().__init__(
            f"{name}: missing; usage: {prog} INPUT OUTPUT [options] (or {name}: in the --config file); "
            "--help lists the options"
        )


class JobStalled(RuntimeError):
    """The job cannot go on: no render actor is ready, or nothing commits, for --stall-timeout
    seconds, or a crash loop left no actor. The message says what it waited for."""


def error_text(e: BaseException) -> str:
    """One line naming the failure: the remote exception's type and message for task errors."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:500]
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:500] if first else type(e).__name__


# Ray's own failures of the machinery, never of our code (ray.exceptions names).
_RAY_INFRA = {
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "LocalRayletDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "RaySystemError",
}
# Network failures of the storage clients (botocore, aiohttp, urllib3, gcsfs, adlfs).
_NETWORK = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ClientOSError",
    "ServerTimeoutError",
    "ProtocolError",
    "ServiceRequestError",
    "ServiceResponseError",
}
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
_NETWORK_ERRNOS = {
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
}


class InfrastructureError(RuntimeError):
    """Raised by a worker around a failure it classified as retryable.

    Classifying in the worker matters: there the whole exception chain (``__cause__``) is still
    attached; Ray's pickling of a remote exception keeps only the outermost one.
    """


def is_retryable(error: BaseException) -> bool:
    """True for failures of the infrastructure, anywhere in the exception's chain."""
    return any(_is_infrastructure(e) for e in _chain(error))


def _is_infrastructure(e: BaseException) -> bool:
    names = {cls.__name__ for cls in type(e).__mro__}
    if "RayTaskError" in names and type(e).__name__ == "RayTaskError":
        return False  # a plain task error: its cause (next in the chain) decides
    if names & (_RAY_INFRA | _NETWORK) or isinstance(e, InfrastructureError):
        return True
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS:
        return True
    response = getattr(e, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _RETRYABLE_CODES or int(status) >= 500
    return False


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The exception, its explicit causes (``raise ... from``), and a Ray task error's original.

    Not ``__context__``: an error raised while handling a network error is not one itself.
    """
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, getattr(e, "cause", None)]
