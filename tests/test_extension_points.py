"""The two extension points a newcomer uses without reading the trainers: a language-model
backend chosen by the model string's prefix (nodes/lmm/registry.py), and a stage-2 reward
chosen by name in the config (training/stage2/rewards/)."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes import lmm
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.judges.node_classes import VLMJudgeLoaderNode
from science_t2i.nodes.lmm import registry
from science_t2i.training.core.config import load_config
from science_t2i.training.stage2 import Stage2Config, rewards


class EchoBackend(lmm.LMMBackend):
    """A provider as a newcomer would add one: a class and its from_spec."""

    def __init__(self, model: str, endpoint: lmm.Endpoint):
        self.name, self.endpoint = f"echo:{model}", endpoint

    @classmethod
    def from_spec(cls, rest: str, endpoint: lmm.Endpoint) -> "EchoBackend":
        return cls(rest, endpoint)

    def generate(self, parts, *, system=None, max_new_tokens=512) -> str:
        return " ".join(p for p in parts if isinstance(p, str))


def test_a_registered_backend_is_chosen_by_its_prefix(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "echo", EchoBackend.from_spec)
    backend = lmm.backend_from_spec("echo:tiny", base_url="http://h/v1", timeout=9)
    assert isinstance(backend, EchoBackend) and backend.name == "echo:tiny"
    assert backend.endpoint == lmm.Endpoint("http://h/v1", "OPENAI_API_KEY", 9.0, 3)
    # the VLM Judge Loader offers it and builds it from the model name typed in the node
    choices = VLMJudgeLoaderNode.INPUT_TYPES()["required"]["backend"][0]
    assert choices[-1] == "echo" and choices[:2] == ["local", "openai"]
    (loaded,) = VLMJudgeLoaderNode().load("echo", "(none)", "m", "http://h/v1", "KEY", 5.0)
    assert isinstance(loaded, EchoBackend) and loaded.endpoint.api_key_env == "KEY"
    assert loaded.generate(["a", "b"]) == "a b"


def test_unknown_prefix_names_the_registered_ones(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "echo", EchoBackend.from_spec)
    with pytest.raises(ScienceT2IError, match="unknown model 'x:y'.*local, openai, echo"):
        lmm.backend_from_spec("x:y")


def test_a_registered_reward_is_chosen_by_name(monkeypatch):
    def build(section, device):
        return lambda images, prompts: torch.full((len(images),), float(section.batch_size))
    monkeypatch.setitem(rewards.REWARDS, "constant", rewards.Reward(build))
    cfg = load_config(Stage2Config, None, ["reward.kind=constant", "reward.batch_size=7"])
    fn = rewards.build_reward(cfg.reward)
    assert fn(torch.zeros(3, 8, 8, 3), ["p"] * 3).tolist() == [7.0, 7.0, 7.0]
    assert not rewards.reward_for("constant").scored_in_graph
    assert rewards.reward_for("sciscore").scored_in_graph


def test_an_unknown_reward_fails_when_the_config_is_read():
    with pytest.raises(ScienceT2IError, match="reward.kind 'sciscor' is unknown; use one of "
                                              "sciscore, brightness"):
        load_config(Stage2Config, None, ["reward.kind=sciscor"])


def test_the_brightness_reward_is_the_mean_of_each_image():
    images = torch.rand(2, 4, 4, 3)
    fn = rewards.build_reward(load_config(Stage2Config, None, ["reward.kind=brightness"]).reward)
    assert torch.allclose(fn(images, ["a", "b"]), images.mean(dim=(1, 2, 3)))
