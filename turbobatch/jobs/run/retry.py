"""How long the driver waits before retrying a shard whose failure was the infrastructure's
(turbobatch.errors.is_retryable says which): exponential backoff, capped."""

from __future__ import annotations

RETRY_BASE_S = 2.0  # first retry after 2 s, then 4, 8, ... capped at RETRY_MAX_S
RETRY_MAX_S = 60.0


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1))
