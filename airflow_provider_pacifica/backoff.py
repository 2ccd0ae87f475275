"""The one backoff policy of the provider: exponential, capped, with a little jitter.

Plain Python, no Airflow import. Waiting for a cart (in the trigger or on the worker), riding
through Cartd faults and resuming a broken download all take their delays from :class:`Backoff`;
HTTP retries are urllib3's ``Retry``, configured from the same first delay and cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_BACKOFF = 30.0  # seconds: the cap of every retry delay (polls have their own cap)


@dataclass(frozen=True)
class Backoff:
    """Delays ``first * factor**attempt``, at most ``cap``, shortened by up to ``jitter`` (a fraction).

    :param first: the delay before the first retry (attempt 0), in seconds.
    :param cap: the longest delay.
    :param factor: the growth per attempt (2 for retries; 1.5 for polls of a staging cart).
    :param jitter: up to this fraction less, so that many waiters started together spread out.
    """

    first: float
    cap: float = MAX_BACKOFF
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based)."""
        base = min(self.first * self.factor ** min(attempt, 64), max(self.cap, self.first))
        return base * (1 - self.jitter * random.random())
