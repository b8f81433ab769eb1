"""The shipped tiny model passes the warm-start gates (learner/gates.py) that make a method
comparison on the table chain conclusive: the same measurement as `hsd gates` (128
held-out problems; with fewer, G1's reproduction rate sits within a sample of its gate)."""

from __future__ import annotations

import pytest

from learner.gates import measure
from learner.tiny_model import TINY, resolve_model


@pytest.mark.slow
def test_the_shipped_model_passes_the_gates_before_any_rl():
    gates = {g.name: g for g in measure(resolve_model(TINY))}
    for gate in gates.values():
        if gate.name.startswith("G4"):
            assert gate.passed is None  # needs a model after an SRT phase
        else:
            assert gate.passed, gate.line()
