"""What llmq asks of the broker beyond Celery's messages: a sentinel key that tells whether
the broker lost its data since llmq last sent, and the depth of a model's queues. Redis only,
as the design has it."""

from __future__ import annotations

import uuid
from functools import lru_cache

import redis

SENTINEL = "llmq:broker-sentinel"


@lru_cache(maxsize=4)
def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def keep_sentinel(url: str) -> bool:
    """Sets the sentinel if it is missing; True when it was (the broker lost its data since
    the last send, or was never used): every message sent before may be gone."""
    return bool(client(url).set(SENTINEL, uuid.uuid4().hex, nx=True))


def queue_depth(url: str, queues: list[str], priorities: list[int], sep: str = ":") -> int:
    """Messages waiting in ``queues`` at every priority (kombu keeps one list per step)."""
    names = [q if not p else f"{q}{sep}{p}" for q in queues for p in priorities]
    return sum(int(client(url).llen(n)) for n in names)
