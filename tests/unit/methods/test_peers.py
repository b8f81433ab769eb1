from __future__ import annotations

import random

import numpy as np
import pytest

from methods.peers import CarriedPeer, NoPeer, PeerSource, assign_peers

BANK = CarriedPeer(ids=np.array([1, 2], np.int32), text="ok", group_id="g0", policy_version=3)


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
    assert all(t.source is PeerSource.BANK and t.carried is BANK for t in bank)
    empty = assign_peers(fail, [2, 2], fallback="bank", bank=None)
    assert {(t.source, t.reason) for t in empty} == {(PeerSource.NONE, NoPeer.BANK_EMPTY)}


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError):
        assign_peers([True], [1, 2])
    with pytest.raises(ValueError):
        assign_peers([True], [1], strategy="longest")


def _batch():
    """Three groups: p-a with a success at 1, p-b with a success at 0, p-a again (all fail)."""
    from tests.unit.core.records_factory import make_group, make_sample

    a = make_group(prompt_id="p-a", samples=(make_sample(seed=0, success=False), make_sample(seed=1)))
    b = make_group(prompt_id="p-b", samples=(make_sample(seed=2), make_sample(seed=3, success=False)))
    a2 = make_group(prompt_id="p-a", samples=(make_sample(seed=4, success=False),))
    groups = [a, b, a2]
    tags = [assign_peers([s.success for s in g.samples], [len(s.ids) for s in g.samples], fallback="answer",
                         has_answer=True) for g in groups]
    return groups, tags


def test_placebo_peer_is_another_prompt_s_success_on_exactly_the_samples_hsd_distils():
    from methods.peers import resolve_peer, substitute_peers

    groups, tags = _batch()
    for seed in range(20):
        got = substitute_peers(groups, tags, "placebo", reference=None, seed=seed)
        # p-a's failed sample 0 had the peer a[1]: now b[0], the only success of another prompt
        assert got[0][0].source is PeerSource.PLACEBO
        peer = resolve_peer(groups[0], got[0][0])
        assert peer.ids == groups[1].samples[0].ids.tolist() and peer.ref == f"{groups[1].group_id}/placebo"
        # p-b's sample 1 gets a[1] (a2 has no success); the fallbacks (no peer) keep their tags
        assert resolve_peer(groups[1], got[1][1]).ids == groups[0].samples[1].ids.tolist()
        assert [t.source for t in got[2]] == [t.source for t in tags[2]] == [PeerSource.ANSWER]
        assert got[0][1] == tags[0][1] and got[1][0] == tags[1][0]  # the only successes: fallbacks, kept
    assert substitute_peers(groups, tags, "group", reference=None) == tags


def test_placebo_without_another_prompt_s_success_and_reference_without_one_distil_nothing():
    from methods.peers import substitute_peers

    groups, tags = _batch()
    alone = substitute_peers(groups[:1], tags[:1], "placebo", reference=None)
    assert alone[0][0].source is PeerSource.NONE and alone[0][0].reason is NoPeer.NO_PLACEBO
    ref = CarriedPeer(np.array([9, 9], np.int32), "the reference", "x", 0)
    got = substitute_peers(groups, tags, "reference", reference=lambda g: ref if g.prompt_id == "p-a" else None)
    assert got[0][0].source is PeerSource.REFERENCE and got[0][0].carried is ref
    assert got[1][1].source is PeerSource.NONE and got[1][1].reason is NoPeer.NO_REFERENCE
    with pytest.raises(ValueError, match="unknown peer source"):
        substitute_peers(groups, tags, "oracle", reference=None)
