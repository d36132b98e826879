"""Retry policies (Kestra's ``constant``, ``exponential`` and ``random``) as pure arithmetic.

Attempts are numbered from 1; ``maxAttempts`` counts the first run (``maxAttempts: 1`` = no
retry). Defaults:

* no retry spec: one attempt;
* a spec without ``maxAttempts`` but with ``maxDuration``: attempts are unlimited, bounded by
  ``maxDuration`` only;
* a spec with neither: :data:`DEFAULT_MAX_ATTEMPTS` attempts (Kestra would retry forever;
  waxflow refuses to loop on a record without bound).

``maxDuration`` is measured from the start of the first attempt: no retry is granted once it
has passed, and :meth:`RetryPolicy.next_delay` grants none whose wait would end after it.
"""

from __future__ import annotations

import random
from datetime import timedelta

from waxflow.durations import format_duration
from waxflow.tasks import RetrySpec

__all__ = ["DEFAULT_DELAY_FACTOR", "DEFAULT_MAX_ATTEMPTS", "RetryPolicy", "check_retry"]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DELAY_FACTOR = 2.0

# Properties each type uses; the others are reported as not applying.
_REQUIRED = {
    "constant": ("interval",),
    "exponential": ("interval", "maxInterval"),
    "random": ("minInterval", "maxInterval"),
}
_ALLOWED = {
    "constant": {"interval"},
    "exponential": {"interval", "maxInterval", "delayFactor"},
    "random": {"minInterval", "maxInterval"},
}
_TYPED_FIELDS = ("interval", "maxInterval", "minInterval", "delayFactor")


def check_retry(spec: RetrySpec) -> list[str]:
    """Problems with ``spec`` beyond its field types, one readable sentence each (empty = ok).

    Reports missing required properties per type (constant: ``interval``; exponential:
    ``interval`` and ``maxInterval``; random: ``minInterval`` and ``maxInterval``),
    properties that do not apply to the type, and inverted bounds (``minInterval`` above
    ``maxInterval``; an exponential ``interval`` above ``maxInterval``).
    """
    problems: list[str] = []
    kind = spec.type
    for name in _REQUIRED.get(kind, ()):
        if getattr(spec, name) is None:
            problems.append(f"{name} is required for retry type {kind}")
    for name in _TYPED_FIELDS:
        if getattr(spec, name) is not None and name not in _ALLOWED.get(kind, set()):
            problems.append(f"{name} does not apply to retry type {kind}")
    low, high = spec.minInterval, spec.maxInterval
    if kind == "random" and low is not None and high is not None and low > high:
        problems.append(f"minInterval ({format_duration(low)}) must not be greater than "
                        f"maxInterval ({format_duration(high)})")
    low = spec.interval
    if kind == "exponential" and low is not None and high is not None and low > high:
        problems.append(f"interval ({format_duration(low)}) must not be greater than "
                        f"maxInterval ({format_duration(high)})")
    return problems


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


_SHARED_RNG = random.Random()


class RetryPolicy:
    """When to try a failed task again, and how long to wait first.

    Build it from a task's (or the flow's) :class:`RetrySpec`, or ``None`` for no retry.
    Raises ``ValueError`` when :func:`check_retry` finds problems in the spec.
    """

    def __init__(self, spec: RetrySpec | None, rng: random.Random | None = None) -> None:
        if spec is not None:
            problems = check_retry(spec)
            if problems:
                raise ValueError("invalid retry: " + "; ".join(problems))
        self.spec = spec
        # a seeded generator costs ~30 µs: only random retries need their own
        self._rng = rng or (random.Random() if spec is not None and spec.type == "random"
                            else _SHARED_RNG)
        self.max_attempts: int | None
        if spec is None:
            self.max_attempts = 1
        elif spec.maxAttempts is not None:
            self.max_attempts = spec.maxAttempts
        elif spec.maxDuration is not None:
            self.max_attempts = None  # unlimited, bounded by maxDuration
        else:
            self.max_attempts = DEFAULT_MAX_ATTEMPTS
        self.max_duration: timedelta | None = spec.maxDuration if spec else None
        self.warning_on_retry: bool = spec.warningOnRetry if spec else False

    def delay(self, attempt: int) -> timedelta | None:
        """The wait after failed attempt ``attempt`` (1-based) before attempt ``attempt + 1``;
        ``None`` when the attempt count is exhausted.

        constant: ``interval``; exponential: ``interval * delayFactor ** (attempt - 1)`` capped
        at ``maxInterval`` (``delayFactor`` defaults to 2); random: uniform in
        ``[minInterval, maxInterval]``. Ignores ``maxDuration`` (see :meth:`next_delay`).
        """
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        spec = self.spec
        if spec is None or (self.max_attempts is not None and attempt >= self.max_attempts):
            return None
        if spec.type == "constant":
            assert spec.interval is not None  # checked in __init__
            return spec.interval
        if spec.type == "exponential":
            assert spec.interval is not None and spec.maxInterval is not None
            factor = spec.delayFactor or DEFAULT_DELAY_FACTOR
            cap = spec.maxInterval.total_seconds()
            try:
                wait = min(spec.interval.total_seconds() * factor ** (attempt - 1), cap)
            except OverflowError:
                wait = cap
            return timedelta(seconds=wait)
        assert spec.minInterval is not None and spec.maxInterval is not None
        low = spec.minInterval // timedelta(microseconds=1)
        high = spec.maxInterval // timedelta(microseconds=1)
        return timedelta(microseconds=self._rng.randint(low, high))

    def should_retry(
        self, attempt: int, elapsed: timedelta | float, delay: timedelta | None = None
    ) -> bool:
        """Whether failed attempt ``attempt`` may be followed by another.

        ``elapsed`` (a ``timedelta`` or seconds) is the time since the first attempt started.
        True when attempts remain and ``maxDuration`` (if any) has not passed; when ``delay``
        is given, the retry must also start no later than ``maxDuration``.
        """
        if self.spec is None:
            return False
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        if self.max_duration is None:
            return True
        limit = self.max_duration.total_seconds()
        spent = _seconds(elapsed)
        if delay is None:
            return spent < limit
        return spent + delay.total_seconds() <= limit

    def next_delay(self, attempt: int, elapsed: timedelta | float) -> timedelta | None:
        """:meth:`delay` and :meth:`should_retry` in one call (draws a random delay once):
        the wait before the next attempt, or ``None`` when the task has failed for good."""
        wait = self.delay(attempt)
        if wait is None or not self.should_retry(attempt, elapsed, wait):
            return None
        return wait
