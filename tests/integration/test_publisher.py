"""Publication off the learner's path (services.weights.publisher) against a real weight
service: the learner is not held while a version is published, what is published is the
weights as they were when handed over, versions come out in order, and a failure reaches
the learner."""

from __future__ import annotations

import threading

import pytest
import torch

from services.weights.client import WeightClient
from services.weights.publisher import AsyncPublisher
from services.weights.server import WeightServer
from tests.waiting import wait_until


class GatedServer(WeightServer):
    """A weight service whose publication of each version waits for the test's go."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Semaphore(0)
        self.entered: list[int] = []

    def publish(self, version, state_dict):
        self.entered.append(version)
        if not self.gate.acquire(timeout=30):
            raise TimeoutError("the test never released this publication")
        return super().publish(version, state_dict)


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), value), "b": torch.full((64,), value, dtype=torch.bfloat16)}


@pytest.fixture
def gated():
    server = GatedServer(bulk_port=None).start()
    yield server
    server.stop(grace=0)


def test_the_learner_goes_on_while_versions_publish_and_they_hold_the_handed_over_weights(gated):
    lags, blocked = [], []
    publisher = AsyncPublisher(gated, on_published=lambda v, lag: lags.append((v, lag)))
    live = _weights(1.0)
    blocked.append(publisher.submit(1, live))
    live["w"].fill_(2.0)  # the next optimiser step changes the weights in place
    live["b"].fill_(2.0)
    blocked.append(publisher.submit(2, live))
    wait_until(lambda: gated.entered == [1], 10, "the worker did not start publishing version 1")
    assert gated.versions == []  # version 1 is held at the gate, and submit returned anyway
    # both host buffers are taken (version 1 publishing, version 2 queued): a third
    # submission waits until version 1's buffer is free, and that wait is reported
    third = threading.Thread(target=lambda: blocked.append(publisher.submit(3, _weights(3.0))))
    third.start()
    third.join(0.3)
    assert third.is_alive(), "the third submission did not wait for a free buffer"
    for _ in range(3):
        gated.gate.release()
    third.join(10)
    assert not third.is_alive()
    publisher.flush(timeout_s=10)
    assert gated.versions == [1, 2, 3] and [v for v, _ in lags] == [1, 2, 3]
    assert len(blocked) == 3 and blocked[2] >= 0.25 > max(blocked[:2])
    client = WeightClient(gated.address, bulk=False)
    for version, value in ((2, 2.0), (3, 3.0)):
        got = client.fetch(client.latest() if version == 3 else _manifest(gated, version))
        assert torch.equal(got["w"], torch.full((64, 64), value)) and got["b"].dtype == torch.bfloat16
    publisher.close()


def _manifest(server: WeightServer, version: int):
    snapshot, _ = server._lookup(version)
    return snapshot.manifest


def test_a_failed_publication_reaches_the_learner():
    server = WeightServer(bulk_port=None).start()
    try:
        publisher = AsyncPublisher(server)
        publisher.submit(5, _weights(1.0))
        publisher.submit(4, _weights(1.0))  # not above 5: the service refuses it
        with pytest.raises(RuntimeError, match="weight publication failed") as err:
            publisher.flush(timeout_s=10)
        assert "not above 5" in str(err.value.__cause__)
        assert server.versions == [5]
        with pytest.raises(RuntimeError):
            publisher.submit(6, _weights(1.0))
    finally:
        server.stop(grace=0)
