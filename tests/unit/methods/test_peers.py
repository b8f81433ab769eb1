from __future__ import annotations

import random

import numpy as np
import pytest

from methods.peers import BankedPeer, NoPeer, PeerSource, assign_peers

BANK = BankedPeer(ids=np.array([1, 2], np.int32), text="ok", group_id="g0", policy_version=3)


def test_never_the_sample_itself_and_always_a_success():
    success = [True, False, True, True, False]
    for seed in range(50):
        tags = assign_peers(success, [5] * 5, rng=random.Random(seed))
        for i, tag in enumerate(tags):
            assert tag.source is PeerSource.GROUP
            assert tag.index != i and success[tag.index]


def test_random_strategy_uses_every_candidate():
    tags = [assign_peers([False, True, True, True], [1] * 4, rng=random.Random(s))[0].index for s in range(60)]
    assert set(tags) == {1, 2, 3}


def test_shortest_strategy_breaks_ties_by_index():
    tags = assign_peers([True, True, True, False], [9, 4, 4, 1], strategy="shortest")
    assert [t.index for t in tags] == [1, 2, 1, 1]


def test_one_success_gets_a_fallback_with_reason_only_self():
    tags = assign_peers([False, True, False], [3, 3, 3], fallback="none")
    assert [t.index for t in tags] == [1, None, 1]
    assert tags[1].source is PeerSource.NONE and tags[1].reason is NoPeer.ONLY_SELF
    assert not tags[1].distills and tags[0].distills


def test_all_fail_uses_each_fallback():
    fail = [False, False]
    answer = assign_peers(fail, [2, 2], fallback="answer", has_answer=True)
    assert {t.source for t in answer} == {PeerSource.ANSWER}
    assert {t.reason for t in answer} == {NoPeer.NO_SUCCESS}
    no_answer = assign_peers(fail, [2, 2], fallback="answer", has_answer=False)
    assert {(t.source, t.reason) for t in no_answer} == {(PeerSource.NONE, NoPeer.NO_ANSWER)}
    bank = assign_peers(fail, [2, 2], fallback="bank", bank=BANK)
    assert all(t.source is PeerSource.BANK and t.bank is BANK for t in bank)
    empty = assign_peers(fail, [2, 2], fallback="bank", bank=None)
    assert {(t.source, t.reason) for t in empty} == {(PeerSource.NONE, NoPeer.BANK_EMPTY)}


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError):
        assign_peers([True], [1, 2])
    with pytest.raises(ValueError):
        assign_peers([True], [1], strategy="longest")
