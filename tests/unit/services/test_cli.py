from __future__ import annotations

import re
import subprocess
import sys

from services.apps.cli import COMMANDS, EXIT_USAGE, main

DESIGN_COMMANDS = {"run", "learner", "actor", "redis", "credit", "verify", "top"}


def _hsd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.apps.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_help_lists_every_design_subcommand():
    out = _hsd("--help")
    assert out.returncode == 0
    for name in DESIGN_COMMANDS:
        assert f"    {name} " in out.stdout, name
    assert {c[0] for c in COMMANDS} >= DESIGN_COMMANDS


def test_help_does_not_import_heavy_modules():
    probe = ("import sys\nfrom services.apps.cli import build_parser\n"
             "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'transformers', 'grpc', 'redis') if m in sys.modules]\n"
             "print('heavy=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip().splitlines()[-1] == "heavy="


def test_bad_config_exits_2_naming_the_field(capsys):
    assert main(["learner", "--set", "learner.lr=-1"]) == EXIT_USAGE
    assert "learner.lr" in capsys.readouterr().err


def test_a_method_refusing_its_settings_exits_2_naming_the_field(capsys):
    assert main(["config", "--set", 'algorithm.method="grpo"', "--set", 'algorithm.advantage="none"']) == EXIT_USAGE
    assert "algorithm.advantage: method grpo needs" in capsys.readouterr().err


def test_compare_refuses_an_unknown_arm_or_one_without_the_baseline_before_any_run(capsys, tmp_path):
    assert main(["compare", "--arms", "grpo,hsd-oracle", "--out", str(tmp_path / "x")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown arm(s) hsd-oracle" in err and "hsd-placebo" in err  # names the arms there are
    assert main(["compare", "--arms", "hsd,opsd", "--out", str(tmp_path / "y")]) == EXIT_USAGE
    assert "must include grpo" in capsys.readouterr().err
    for flag, value in (("--staleness", "0,one"), ("--staleness", "-1"), ("--lrs", "fast")):
        assert main(["compare", flag, value, "--out", str(tmp_path / "z")]) == EXIT_USAGE
        assert flag in capsys.readouterr().err
    # the warm starts follow the task: none ship for arith, so they must be named
    assert main(["compare", "--set", 'actor.task="arith"', "--out", str(tmp_path / "w")]) == EXIT_USAGE
    assert "--warm-starts is needed" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "xyzw")


def test_env_override_reaches_the_resolved_config(monkeypatch, capsys):
    monkeypatch.setenv("HSD_LEARNER__LR", "0.00042")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.00042" in out
    # without --config: the embedded default `hsd run` uses, not the library defaults
    assert 'name = "embedded"' in out and 'task = "chain"' in out and "embedded.toml" in out.splitlines()[0]


def test_config_fields_lists_every_field_with_its_type_default_and_meaning(capsys):
    from core.config import Config

    assert main(["config", "--fields"]) == 0
    out = capsys.readouterr().out
    paths = [f"{s}.{k}" for s, f in Config.model_fields.items() for k in f.annotation.model_fields]
    assert len(paths) > 80 and all(f"\n{p} " in out for p in paths)
    assert re.search(r'^algorithm\.method +grpo\|hsd\|opsd\|sdzero\|srt\|rft = "hsd"$', out, re.M)
    assert all(f.description for s in Config.model_fields.values() for f in s.annotation.model_fields.values())
