"""Unit tests for waxflow.retry: attempt counts, delays, maxDuration and validation."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from waxflow.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy, check_retry
from waxflow.tasks import RetrySpec

S = timedelta(seconds=1)


def spec(**fields: Any) -> RetrySpec:
    return RetrySpec.model_validate(fields)


def test_no_spec_means_one_attempt() -> None:
    policy = RetryPolicy(None)
    assert policy.max_attempts == 1
    assert policy.delay(1) is None
    assert not policy.should_retry(1, 0.0)
    assert policy.next_delay(1, 0.0) is None
    assert policy.warning_on_retry is False


def test_constant_delays_until_max_attempts() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT2S", maxAttempts=3))
    assert [policy.delay(a) for a in (1, 2, 3, 4)] == [2 * S, 2 * S, None, None]
    assert policy.should_retry(2, 100.0)
    assert not policy.should_retry(3, 0.0)


def test_max_attempts_one_means_no_retry() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT1S", maxAttempts=1))
    assert policy.delay(1) is None
    assert not policy.should_retry(1, 0.0)


def test_exponential_grows_by_factor_and_caps() -> None:
    policy = RetryPolicy(spec(type="exponential", interval="PT1S", maxInterval="PT10S",
                              maxAttempts=7))
    assert [policy.delay(a) for a in range(1, 8)] == [
        S, 2 * S, 4 * S, 8 * S, 10 * S, 10 * S, None,
    ]


def test_exponential_custom_factor_and_no_overflow() -> None:
    policy = RetryPolicy(spec(type="exponential", interval="PT0.5S", maxInterval="PT1M",
                              delayFactor=3, maxDuration="P1D"))
    assert policy.delay(1) == timedelta(seconds=0.5)
    assert policy.delay(3) == timedelta(seconds=4.5)
    assert policy.delay(100_000) == timedelta(minutes=1)


def test_random_stays_within_bounds() -> None:
    policy = RetryPolicy(
        spec(type="random", minInterval="PT1S", maxInterval="PT3S", maxAttempts=1000),
        rng=random.Random(7),
    )
    waits = [policy.delay(a) for a in range(1, 500)]
    assert all(w is not None and S <= w <= 3 * S for w in waits)
    assert len(set(waits)) > 100  # really random, not a constant
    fixed = RetryPolicy(spec(type="random", minInterval="PT2S", maxInterval="PT2S"))
    assert fixed.delay(1) == 2 * S


def test_missing_max_attempts_and_duration_defaults_to_three() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT1S"))
    assert policy.max_attempts == DEFAULT_MAX_ATTEMPTS == 3
    assert policy.delay(2) == S
    assert policy.delay(3) is None


def test_max_duration_alone_bounds_unlimited_attempts() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT10S", maxDuration="PT1M"))
    assert policy.max_attempts is None
    assert policy.delay(10_000) == 10 * S
    assert policy.should_retry(50, 59.9)
    assert not policy.should_retry(2, 60.0)
    assert not policy.should_retry(2, timedelta(minutes=2))
    assert policy.should_retry(2, timedelta(seconds=30))


def test_max_duration_with_delay_refuses_retry_starting_after_it() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT10S", maxDuration="PT1M",
                              maxAttempts=100))
    assert policy.should_retry(3, 50.0, 10 * S)  # next attempt starts at exactly 60 s
    assert not policy.should_retry(3, 50.5, 10 * S)
    assert policy.next_delay(3, 45.0) == 10 * S
    assert policy.next_delay(3, 55.0) is None
    assert policy.next_delay(100, 0.0) is None


def test_warning_on_retry() -> None:
    policy = RetryPolicy(spec(type="constant", interval="PT1S", warningOnRetry=True))
    assert policy.warning_on_retry is True


def test_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        RetryPolicy(spec(type="constant", interval="PT1S")).delay(0)


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        ({"type": "constant", "interval": "PT1S"}, []),
        ({"type": "exponential", "interval": "PT1S", "maxInterval": "PT1M", "delayFactor": 3},
         []),
        ({"type": "random", "minInterval": "PT1S", "maxInterval": "PT1S"}, []),
        ({"type": "constant"}, ["interval is required for retry type constant"]),
        ({"type": "exponential", "interval": "PT1S"},
         ["maxInterval is required for retry type exponential"]),
        ({"type": "exponential"},
         ["interval is required for retry type exponential",
          "maxInterval is required for retry type exponential"]),
        ({"type": "random", "maxInterval": "PT1S"},
         ["minInterval is required for retry type random"]),
        ({"type": "random", "minInterval": "PT5S", "maxInterval": "PT1S"},
         ["minInterval (PT5S) must not be greater than maxInterval (PT1S)"]),
        ({"type": "exponential", "interval": "PT2M", "maxInterval": "PT1M"},
         ["interval (PT2M) must not be greater than maxInterval (PT1M)"]),
        ({"type": "constant", "interval": "PT1S", "maxInterval": "PT2S", "delayFactor": 2},
         ["maxInterval does not apply to retry type constant",
          "delayFactor does not apply to retry type constant"]),
        ({"type": "random", "minInterval": "PT1S", "maxInterval": "PT2S", "interval": "PT1S"},
         ["interval does not apply to retry type random"]),
    ],
)
def test_check_retry(fields: dict[str, Any], problems: list[str]) -> None:
    assert check_retry(spec(**fields)) == problems


def test_policy_refuses_an_invalid_spec() -> None:
    with pytest.raises(ValueError, match="interval is required"):
        RetryPolicy(spec(type="constant"))
