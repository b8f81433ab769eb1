"""Connecting to Redis: the configured URL as is, retried with backoff and jitter.

Every command of a client made by :func:`connect` survives a Redis restart: on a
connection error it is retried with exponential backoff and full jitter for up to
``retry_seconds``, then fails with :class:`RedisUnavailable`, which names the URL
(password masked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from core.config import masked_url
from services.errors import StartupError

T = TypeVar("T")


class RedisUnavailable(redis.ConnectionError):
    """Redis stayed unreachable for the whole retry window."""


class DeadlineRetry(Retry):
    """redis-py's Retry bounded by time instead of by count."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(
            ExponentialWithJitterBackoff(cap=2.0, base=0.05),
            retries=-1,
            supported_errors=(redis.ConnectionError, redis.TimeoutError, ConnectionError,
                              TimeoutError, redis.BusyLoadingError),
        )
        self.url = url
        self.seconds = seconds

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        self._backoff.reset()
        deadline = time.monotonic() + self.seconds
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RedisUnavailable(
                        f"Redis at {masked_url(self.url)} unreachable for {self.seconds:.0f}s "
                        f"({failures} attempts): {error}"
                    ) from error
                time.sleep(min(self._backoff.compute(failures), remaining))


def reachable(url: str, retry_seconds: float = 30.0) -> redis.Redis:
    """A client for ``url`` that answered a PING (retried for ``retry_seconds``);
    StartupError naming ``redis.url`` if it did not."""
    client = connect(url, retry_seconds)
    try:
        client.ping()
    except redis.RedisError as err:
        raise StartupError(f"redis.url: {masked_url(url)} did not answer within {retry_seconds:g}s: {err}") from None
    return client


def connect(url: str, retry_seconds: float = 30.0, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://; password or ACL user in the URL)."""
    return redis.Redis.from_url(
        url,
        retry=DeadlineRetry(url, retry_seconds),
        health_check_interval=10,
        socket_connect_timeout=5,
        **kwargs,
    )


def used_memory(client: redis.Redis) -> float:
    """Redis's ``used_memory`` in bytes (INFO memory); NaN when it does not answer, so a
    scrape of the process that asks never fails on it."""
    try:
        return float(client.info("memory")["used_memory"])
    except (redis.RedisError, KeyError, ValueError):
        return float("nan")
