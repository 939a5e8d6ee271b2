"""Which failures are worth retrying, and how long to wait before the next attempt.

Infrastructure failures (a worker or node died, an object was lost, storage timed out or
answered 5xx) may pass on a second try: they are retried with exponential backoff. Anything
else (bad data, a bug) would fail the same way again: it is never retried.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

RETRY_BASE_S = 2.0  # first retry after 2 s, then 4, 8, ... capped at RETRY_MAX_S
RETRY_MAX_S = 60.0

# Ray's own failures of the machinery, never of our code (ray.exceptions names).
_RAY_INFRA = {
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
    "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError", "ObjectStoreFullError", "OutOfDiskError", "RaySystemError",
}  # fmt: skip
# Network failures of the storage clients (botocore, aiohttp, urllib3, gcsfs, adlfs).
_NETWORK = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError", "ClientConnectorError", "ServerDisconnectedError",
    "ClientPayloadError", "ClientOSError", "ServerTimeoutError", "ProtocolError",
    "ServiceRequestError", "ServiceResponseError",
}  # fmt: skip
_RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}  # fmt: skip
_NETWORK_ERRNOS = {errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                   errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}  # fmt: skip


class InfrastructureError(RuntimeError):
    """Raised by a worker around a failure it classified as retryable.

    Classifying in the worker matters: there the whole exception chain (``__cause__``) is still
    attached; Ray's pickling of a remote exception keeps only the outermost one.
    """


def is_retryable(error: BaseException) -> bool:
    """True for failures of the infrastructure, anywhere in the exception's chain."""
    return any(_is_infrastructure(e) for e in _chain(error))


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1))


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
