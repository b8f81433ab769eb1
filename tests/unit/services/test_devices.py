"""Where `hsd run` puts its processes: separate GPUs when there are enough, a vLLM memory
share that fits when they share one, the user's lists where given, nothing on CPU."""

from __future__ import annotations

import pytest

from core.config import config_hash, load_config
from services.apps.devices import plan_devices
from services.apps.launcher import Launcher


def test_with_several_gpus_the_learner_and_the_actors_get_separate_ones():
    plan = plan_devices(["0", "1", "2"], 4, vllm=True)
    assert plan.learner == ("0",) and plan.actors == (("1",), ("2",), ("1",), ("2",))
    assert plan.vllm_memory == (0.45, 0.45, 0.45, 0.45)  # two vLLM actors split each GPU's 0.9
    assert plan.env("learner") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert plan.env("actor", 1) == {"CUDA_VISIBLE_DEVICES": "2"}


def test_on_one_gpu_vllm_actors_split_what_the_learner_leaves():
    plan = plan_devices(["0"], 2, vllm=True, vllm_memory=0.9, learner_share=0.5)
    assert plan.learner == ("0",) and plan.actors == (("0",), ("0",))
    assert plan.vllm_memory == (0.25, 0.25)  # (1 − 0.5) / 2: learner and both actors fit
    alone = plan_devices(["0"], 1, vllm=True, vllm_memory=0.3)
    assert alone.vllm_memory == (0.3,)  # never more than the configured share
    assert plan_devices(["0"], 2).vllm_memory == (None, None)  # the hf engine takes what it needs


def test_a_deepspeed_learner_takes_one_gpu_a_rank():
    plan = plan_devices([str(i) for i in range(8)], 3, learner_processes=4, vllm=True)
    assert plan.learner == ("0", "1", "2", "3") and plan.actors == (("4",), ("5",), ("6",))
    assert plan.env("learner") == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert plan.vllm_memory == (0.9, 0.9, 0.9)
    shared = plan_devices(["0", "1"], 2, learner_processes=2, vllm=True)
    assert shared.actors == (("0",), ("1",)) and shared.vllm_memory == (0.5, 0.5)  # each beside a learner rank


def test_the_users_lists_win_and_a_learner_list_must_match_its_ranks():
    plan = plan_devices(["0", "1", "2", "3"], 2, learner_devices=["3"], actor_devices=["1"], vllm=True)
    assert plan.learner == ("3",) and plan.actors == (("1",), ("1",)) and plan.vllm_memory == (0.45, 0.45)
    assert plan_devices(["0", "1"], 1, learner_devices=["1"]).actors == (("0",),)  # what the learner leaves
    with pytest.raises(ValueError, match=r"run\.learner_devices: 1 device\(s\) for learner\.processes = 2"):
        plan_devices(["0", "1"], 1, learner_processes=2, learner_devices=["0"])


def test_without_gpus_nothing_is_set():
    plan = plan_devices([], 3, vllm=True)
    assert plan.env("learner") == {} and plan.env("actor", 2) == {} and plan.vllm_memory == (None,) * 3
    assert plan.describe() == "no GPU: every process on CPU"


def test_the_launcher_gives_each_process_its_devices_and_share(tmp_path):
    config = load_config(environ={}, overrides=['actor.engine="vllm"', f'run.dir="{tmp_path}"'])
    launcher = Launcher(config, 2, "tiny", devices=plan_devices(["0"], 2, vllm=True))
    assert launcher.process_settings("learner") == ({"CUDA_VISIBLE_DEVICES": "0"}, [])
    assert launcher.process_settings("actor-1") == ({"CUDA_VISIBLE_DEVICES": "0"},
                                                    ["--set", "actor.vllm_gpu_memory_utilization=0.25"])
    # the share is per process: an actor with its own share still joins the run (same config hash)
    assert config_hash(load_config(environ={}, overrides=["actor.vllm_gpu_memory_utilization=0.25"])) == \
        config_hash(load_config(environ={}))
