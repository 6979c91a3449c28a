"""What llmq asks of the broker beyond Celery's messages: a sentinel key that tells whether
the broker lost its data since llmq last sent, and the depth of a model's queues. Redis only,
as the design has it."""

from __future__ import annotations

import json
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


def express_key(queue: str) -> str:
    """The list of interactive requests' ids of a request queue (llmq.worker.express)."""
    return f"llmq:express:{queue}"


def send_express(url: str, queue: str, ids: list[int]) -> None:
    client(url).lpush(express_key(queue), json.dumps(ids))


def ping(url: str) -> bool:
    return bool(client(url).ping())


def queue_depths(url: str, sep: str = ":") -> dict[str, int]:
    """Messages waiting in every queue the broker holds (kombu's queues are Redis lists; a
    priority step's list is ``<queue><sep><step>``), by queue."""
    depths: dict[str, int] = {}
    redis_client = client(url)
    for key in redis_client.scan_iter(count=1000, _type="list"):
        name = key.decode("utf-8", "replace")
        base, _, step = name.rpartition(sep)
        queue = base if base and step.isdigit() else name
        depths[queue] = depths.get(queue, 0) + int(redis_client.llen(key))
    return depths
