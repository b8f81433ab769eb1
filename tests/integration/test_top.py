"""`hsd top` finds the actors of a run in its Redis on every frame: one that joins later
appears, one that leaves (and removes its entry) disappears."""

from __future__ import annotations

import redis

from services.apps.top import joined_actors
from services.transport.streams import Keys


def test_joined_actors_are_read_from_the_run_s_redis_each_time(client):
    key = Keys("top-test").actor_metrics
    client.delete(key)
    assert joined_actors(client, "top-test") == {}
    client.hset(key, "late", "http://127.0.0.1:9/metrics")
    assert joined_actors(client, "top-test") == {"late": "http://127.0.0.1:9/metrics"}
    client.hdel(key, "late")  # what an actor does when it leaves
    assert joined_actors(client, "top-test") == {}
    gone = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    assert joined_actors(gone, "top-test") == {}  # the run's Redis is gone: none
