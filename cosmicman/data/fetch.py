"""HTTP fetching policy shared by the image downloader and the web-API clients."""
from __future__ import annotations

import email.utils
import random
import time

# Failure reasons worth another try in a later batch (the failed-URL table re-queues them);
# every other reason (404, not an image, too large, ...) is final.
RETRYABLE_REASONS = frozenset({"timeout", "connection_error", "server_error", "rate_limited"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, retry_after: str | None, base_s: float, max_s: float,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): the server's ``Retry-After`` when it gives one,
    else exponential backoff with full jitter, capped at ``max_s``."""
    told = parse_retry_after(retry_after)
    if told is not None:
        return min(told, max_s)
    return (rng or random).uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
