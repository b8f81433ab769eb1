from __future__ import annotations

import pytest

from core.config import Config, ConfigError, config_hash, load_config, shared_view, to_toml


def _write(tmp_path, text: str):
    path = tmp_path / "hsd.toml"
    path.write_text(text)
    return path


def test_defaults_validate_without_a_file():
    config = load_config(environ={})
    assert config == Config()
    assert config.algorithm.method == "hsd"


@pytest.mark.parametrize("task", ["nonsense", "gym:", "math:"])
def test_an_unknown_task_fails_when_the_config_is_read(task):
    with pytest.raises(ConfigError, match=r"actor\.task: .*unknown task"):
        load_config(environ={}, overrides=[f'actor.task="{task}"'])
    assert load_config(environ={}, overrides=['actor.task="gym:chain_sum"']).actor.task == "gym:chain_sum"


def test_a_single_underscore_after_a_section_is_refused_not_ignored():
    with pytest.raises(ConfigError, match=r"HSD_LEARNER_LR: .*two underscores \(HSD_LEARNER__LR\)"):
        load_config(environ={"HSD_LEARNER_LR": "3e-5"})
    assert load_config(environ={"HSD_CACHE": "/tmp/x", "HSD_RUNNER": "y"}).learner.lr > 0  # not config


def test_precedence_file_then_env_then_flags(tmp_path):
    path = _write(tmp_path, "[learner]\nlr = 1e-4\nbatch_groups = 2\n[actor]\ngroup_size = 4\n")
    env = {"HSD_LEARNER__LR": "3e-5", "HSD_ACTOR__GROUP_SIZE": "6", "HSD_UNRELATED": "x"}
    config = load_config(path, environ=env, overrides=["actor.group_size=5"])
    assert config.learner.lr == pytest.approx(3e-5)  # env beats file
    assert config.learner.batch_groups == 2  # file beats default
    assert config.actor.group_size == 5  # flag beats env
    extra = load_config(path, environ=env, extra={"actor": {"group_size": 9}})
    assert extra.actor.group_size == 9


def test_a_string_field_keeps_a_number_or_boolean_as_its_text():
    config = load_config(environ={"HSD_DATA__SUBSET": "2024"}, overrides=[
        "run.name=2024", "weights.token=123", "model.path=true", "learner.lr=1e-4"])
    assert (config.run.name, config.weights.token, config.model.path) == ("2024", "123", "true")
    assert config.data.subset == "2024"
    assert config.learner.lr == pytest.approx(1e-4)  # a number field still reads a number
    with pytest.raises(ConfigError, match=r"run\.steps"):
        load_config(environ={}, overrides=["run.steps=many"])


def test_a_task_file_that_does_not_exist_fails_when_the_config_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"actor\.task: .*does not exist"):
        load_config(environ={}, overrides=[f'actor.task="math:{tmp_path / "none.jsonl"}"'])
    (tmp_path / "p.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    assert load_config(environ={}, overrides=[f'actor.task="math:{tmp_path / "p.jsonl"}"']).actor.task


def test_every_field_survives_the_config_file_the_processes_of_a_run_read(tmp_path):
    """`hsd run` writes the resolved config as TOML and every process reads it back:
    a mapping (chat_template_kwargs), lists, escapes and unicode must come back as they were."""
    config = load_config(environ={}, overrides=[
        "model.chat_template_kwargs={enable_thinking = false, depth = 2}", "run.actor_devices=[1, 2]",
        'algorithm.peer_template="\\n\\nSo löst man es:\\t{peer}"', r'data.answer_pattern="####\s*(.+)$"'])
    path = _write(tmp_path, to_toml(config, mask_secrets=False))
    assert load_config(path, environ={}) == config
    assert config.model.chat_template_kwargs == {"enable_thinking": False, "depth": 2}


def test_flag_values_are_typed_like_toml():
    config = load_config(environ={}, overrides=[
        "weights.token=s3cret", "model.trust_remote_code=true", "run.name=\"exp-1\""])
    assert config.weights.token == "s3cret"
    assert config.model.trust_remote_code is True
    assert config.run.name == "exp-1"


@pytest.mark.parametrize(
    ("overrides", "environ", "needle"),
    [
        (["learner.lr=-1"], {}, "learner.lr"),
        (["learner.lrr=1"], {}, "learner.lrr"),
        (["actor.engine=tgi"], {}, "actor.engine"),
        ([], {"HSD_ACTOR__GROUP_SIZE": "zero"}, "actor.group_size"),
        (["algorithm.is_rho_min=3"], {}, "is_rho_min"),
        (["weights.tls_cert=a.pem"], {}, "tls_cert and tls_key"),
        (["weights.chunk_bytes=99999999"], {}, "weights.chunk_bytes"),
        (["redis.url=http://x"], {}, "redis"),
        (["run.name=has space"], {}, "run.name"),
        (["nosuch.field=1"], {}, "unknown section 'nosuch'"),
        (["learner.lr"], {}, "section.field=value"),
        (['learner.engine="deepspeed"', "learner.compile=true"], {}, "compile is built for engine 'torch'"),
        (['learner.engine="deepspeed"', "learner.lora_rank=8"], {}, "lora_rank > 0 needs engine 'torch'"),
        (["learner.lora_rank=-1"], {}, "learner.lora_rank"),
        (['algorithm.method="ppo"'], {}, "algorithm.method"),
    ],
)
def test_invalid_values_name_the_field(overrides, environ, needle):
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ, overrides=overrides)
    assert needle in str(info.value)


def test_file_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[learner\n"), environ={})
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(_write(tmp_path, "[lerner]\nlr = 1\n"), environ={})


def test_hash_is_stable_and_ignores_process_local_fields():
    base = load_config(environ={})
    assert config_hash(base) == config_hash(load_config(environ={}))
    local = load_config(environ={}, overrides=[
        "metrics.port=9100", "weights.port=5000", "weights.token=t", "redis.url=\"redis://h:1\""])
    assert config_hash(local) == config_hash(base)
    for shared in ("learner.lr=2e-5", "algorithm.method=\"grpo\"", "model.path=\"/m\"", "run.name=\"b\""):
        assert config_hash(load_config(environ={}, overrides=[shared])) != config_hash(base), shared


def test_the_changed_only_hash_reads_only_fields_off_their_defaults():
    """A field added later at its default adds nothing to the view, so a ledger keyed on
    this hash stays valid; any field set off its default still changes it."""
    default = Config()
    assert shared_view(default, changed_only=True) == {}
    assert config_hash(Config(learner={"lr": default.learner.lr}), changed_only=True) == \
        config_hash(default, changed_only=True)
    base = load_config(environ={})
    moved = load_config(environ={}, overrides=["learner.lr=2e-5", "metrics.port=9100"])
    assert shared_view(moved, changed_only=True)["learner"]["lr"] == 2e-5
    assert "metrics" not in shared_view(moved, changed_only=True)  # LOCAL fields stay out
    assert config_hash(moved, changed_only=True) != config_hash(base, changed_only=True)


def test_resolved_toml_round_trips_and_masks_the_token(tmp_path):
    config = load_config(environ={}, overrides=["learner.lr=3e-5", "weights.token=s3cret"])
    text = to_toml(config)
    assert "s3cret" not in text
    back = load_config(_write(tmp_path, text.replace('token = "***"', "")), environ={})
    assert config_hash(back) == config_hash(config)
