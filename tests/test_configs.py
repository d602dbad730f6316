"""The example configs in training/configs/: each loads into its trainer's config class with
the values it states, runs through the real command line (--print-config), and is the file
the README shows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from science_t2i.training.cli import main
from science_t2i.training.core.config import config_to_dict, load_config
from science_t2i.training.sciscore import SciScoreTrainConfig
from science_t2i.training.sft import SFTConfig
from science_t2i.training.stage2 import Stage2Config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))
TRAINERS = {"train-sciscore": SciScoreTrainConfig, "sft": SFTConfig, "stage2": Stage2Config}


def _command(path: Path) -> str:
    """The command a config's first line shows it with."""
    first = path.read_text().splitlines()[0]
    m = re.match(r"# (?:science-t2i (\S+)|(accelerate launch))", first)
    assert m, f"{path.name}: the first line must show the command that takes the file"
    return m.group(1) or "accelerate"


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_there_are_configs_for_every_trainer_and_the_launcher():
    assert {_command(p) for p in CONFIGS} == set(TRAINERS) | {"accelerate"}


@pytest.mark.parametrize("path", [p for p in CONFIGS if _command(p) in TRAINERS],
                         ids=lambda p: p.name)
def test_trainer_config_loads_with_the_values_it_states(path, capsys):
    cfg = load_config(TRAINERS[_command(path)], path)
    stated = _leaves(yaml.safe_load(path.read_text()))
    loaded = _leaves(config_to_dict(cfg))
    assert {k: loaded[k] for k in stated} == stated
    assert main([_command(path), "--config", str(path), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == config_to_dict(cfg)


def test_accelerate_config_is_one_accelerate_reads():
    from accelerate.commands.config.config_args import ClusterConfig
    (path,) = [p for p in CONFIGS if _command(p) == "accelerate"]
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.distributed_type.value == "MULTI_GPU" and cfg.num_processes == 8


def test_readme_shows_every_config_file():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in CONFIGS if f"training/configs/{p.name}" not in readme]
    assert not missing, missing


def test_dpo_is_stage2_under_its_earlier_name(capsys):
    from science_t2i.training.cli import build_parser
    stage2 = build_parser().parse_args(["stage2", "train.rounds=3"])
    dpo = build_parser().parse_args(["dpo", "train.rounds=3"])
    assert stage2.func is dpo.func and stage2.overrides == dpo.overrides == ["train.rounds=3"]
    assert main(["dpo", "--print-config", "train.rounds=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["rounds"] == 3
    help_text = build_parser().format_help()
    assert "stage2 (dpo)" in help_text
