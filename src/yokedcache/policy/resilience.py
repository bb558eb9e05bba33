"""Circuit breaker, retry decisions and burst-limited error logging.

Only transport failures (``CacheConnectionError``) ever reach these: a serialization or key error is the
caller's problem and must never switch the cache off for everyone.
"""

from __future__ import annotations

import logging
import random
import threading
import time

logger = logging.getLogger("yokedcache")

CLOSED, HALF_OPEN, OPEN, DISABLED = "closed", "half_open", "open", "disabled"
_STATE_NUMBER = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2, DISABLED: 0}


class CircuitBreaker:
    """Counts consecutive transport failures; at the threshold, skips the backend for ``timeout`` seconds,
    then lets exactly one trial call through (half-open): success closes it, failure reopens it."""

    def __init__(self, enabled: bool, threshold: int, timeout: float) -> None:
        self.enabled = enabled
        self.threshold = threshold
        self.timeout = timeout
        self.failure_count = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if not self.enabled:
            return DISABLED
        if self._opened_at is None:
            return CLOSED
        if self._probing or time.monotonic() - self._opened_at >= self.timeout:
            return HALF_OPEN
        return OPEN

    @property
    def state_number(self) -> int:
        return _STATE_NUMBER[self.state]

    def allow(self) -> bool:
        """May a call go to the backend now? In half-open state only the first caller may."""
        if not self.enabled or self._opened_at is None:
            return True
        with self._lock:
            if self._probing or time.monotonic() - self._opened_at < self.timeout:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        if self.failure_count or self._opened_at is not None:
            with self._lock:
                self.failure_count = 0
                self._opened_at = None
                self._probing = False

    def record_failure(self) -> None:
        if not self.enabled:
            self.failure_count += 1
            return
        with self._lock:
            self.failure_count += 1
            if self._probing or self.failure_count >= self.threshold:
                self._opened_at = time.monotonic()
                self._probing = False


def is_transient(exc: BaseException) -> bool:
    """Worth retrying at once: a connection that broke under us (the server restarted, a pooled socket went
    stale). A refused connection or a timeout is not: the backend is down or slow, and retrying only makes
    the caller wait longer."""
    text = str(exc).lower()
    if "timeout" in text or "timed out" in text or "refused" in text:
        return False
    return any(word in text for word in ("reset", "broken pipe", "closed", "connection lost", "eof"))


def backoff(attempt: int, base: float) -> float:
    """``base × 2^(attempt−1)`` with ±25 % jitter, so retrying clients don't march in step."""
    return base * (2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


class BurstLogger:
    """Logs the first failure of a burst at full level, then at most one summary per ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._last = 0.0
        self._suppressed = 0

    def log(self, level: int, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.window:
            if self._suppressed:
                message = f"{message} ({self._suppressed} similar failures suppressed)"
            logger.log(level, message)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1
