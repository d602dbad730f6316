"""The judge nodes called as ComfyUI calls them: VLM Judge Loader, Science Judge (A or B, in
both orders) and Visual Quiz, on IMAGE tensors, with scripted judges."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes import NODE_CLASS_MAPPINGS
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.judges.node_classes import (ScienceJudgeNode, VisualQuizNode,
                                                   VLMJudgeLoaderNode)
from science_t2i.nodes.judges.protocols import parse_choice_lines
from science_t2i.nodes.lmm import LocalBackend, OpenAIBackend


def solid(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n, 16, 16, 3), value)


class GreenJudge:
    """Prefers the greener-looking (here: brighter) image; or always image-1 (bias)."""
    name = "scripted:green"

    def __init__(self, biased: bool = False, reply: str | None = None):
        self.biased, self.reply, self.calls = biased, reply, []

    def generate(self, parts, **kw):
        images = [p for p in parts if not isinstance(p, str)]
        self.calls.append(" ".join(p for p in parts if isinstance(p, str)))
        if self.reply is not None:
            return self.reply
        if self.biased:
            return '{"choice": "image-1"}'
        first, second = (float(sum(im.getpixel((0, 0)))) for im in images)
        return '{"choice": "image-1"}' if first > second else "I pick Image 2."


def test_registered():
    for key in ("ScienceT2I_VLMJudgeLoader", "ScienceT2I_ScienceJudge", "ScienceT2I_VisualQuiz"):
        assert key in NODE_CLASS_MAPPINGS


def test_science_judge_asks_both_orders_and_reports_position_bias():
    node = ScienceJudgeNode()
    out = getattr(node, node.FUNCTION)(judge=GreenJudge(), image_a=solid(0.2),
                                       image_b=solid(0.8), prompt="an unripe apple",
                                       both_orders=True)
    which, reason = out["result"]
    assert which == "B" and "Image 2" in reason
    judge = GreenJudge(biased=True)
    which, _ = node.judge(judge, solid(0.2), solid(0.8), "an unripe apple", True)["result"]
    assert which == "tie" and len(judge.calls) == 2            # image-1 both times: no signal
    assert "Prompt: an unripe apple" in judge.calls[0]
    which, _ = node.judge(GreenJudge(biased=True), solid(0.2), solid(0.8), "p", False)["result"]
    assert which == "A"
    which, reason = node.judge(GreenJudge(reply="They are both nice."), solid(0.2), solid(0.8),
                               "p", True)["result"]
    assert which == "unparseable" and "both nice" in reason
    # a batch against one image: one verdict per pair
    which, _ = node.judge(GreenJudge(), solid(0.5, 3), solid(0.1), "p", False)["result"]
    assert which.splitlines() == ["A", "A", "A"]
    with pytest.raises(ScienceT2IError, match="image_a has 2 images and image_b 3"):
        node.judge(GreenJudge(), solid(0.5, 2), solid(0.1, 3), "p", False)
    with pytest.raises(ScienceT2IError, match="prompt is empty"):
        node.judge(GreenJudge(), solid(0.5), solid(0.1), "  ", False)
    with pytest.raises(ScienceT2IError, match="outside 0..1|0..255"):
        node.judge(GreenJudge(), solid(255.0), solid(0.1), "p", False)


def test_visual_quiz_with_choices_and_free_answers():
    node = VisualQuizNode()
    judge = GreenJudge(reply="The skin is green, so the fruit is unripe.\nAnswer: A")
    answer, correct, reply = getattr(node, node.FUNCTION)(
        judge=judge, image=solid(0.3), question="What colour is the skin?",
        choices="A. green\nB. red", correct_answer="A")["result"]
    assert (answer, correct) == ("A", True) and "Options:\nA. green\nB. red" in judge.calls[0]
    answer, correct, _ = node.ask(GreenJudge(reply="Answer: 12 N"), solid(0.3), "Tension?",
                                  "", "12")["result"]
    assert answer == "12 N" and correct is True
    answer, correct, _ = node.ask(GreenJudge(reply="No idea."), solid(0.3), "Which?",
                                  "green\nred", "B")["result"]
    assert answer == "unparseable" and correct is False
    with pytest.raises(ScienceT2IError, match="question is empty"):
        node.ask(judge, solid(0.3), "")


def test_choice_lines():
    assert parse_choice_lines("A. 12 N\nB) 15 N\n(C) 20 N") == {"A": "12 N", "B": "15 N",
                                                               "C": "20 N"}
    assert parse_choice_lines("green\nred") == {"A": "green", "B": "red"}
    with pytest.raises(ScienceT2IError, match="given twice"):
        parse_choice_lines("A. x\nA. y")


def test_loader_lists_model_folders_and_builds_backends(comfy, monkeypatch):
    from tiny_llm import build_tiny_llm
    (comfy.models_dir / "vlm" / "Qwen2.5-VL-3B-Instruct").mkdir(parents=True)
    (comfy.models_dir / "vlm" / "Qwen2.5-VL-3B-Instruct" / "config.json").write_text("{}")
    build_tiny_llm(comfy.models_dir / "LLM" / "tiny")
    node = VLMJudgeLoaderNode()
    choices = node.INPUT_TYPES()["required"]["local_model"][0]
    assert choices == ["Qwen2.5-VL-3B-Instruct", "LLM/tiny"]
    (backend,) = node.load("local", "LLM/tiny", "", "", "OPENAI_API_KEY", 60.0)
    assert isinstance(backend, LocalBackend)
    assert backend.name == "local:tiny"
    assert isinstance(backend.generate(["Say something."], max_new_tokens=3), str)
    (remote,) = node.load("openai", choices[0], "gpt-4o", "http://127.0.0.1:9/v1", "MY_KEY",
                          5.0)
    assert isinstance(remote, OpenAIBackend) and remote.name.startswith("openai:gpt-4o")
    with pytest.raises(ScienceT2IError, match="needs remote_model"):
        node.load("openai", choices[0], " ", "http://127.0.0.1:9/v1", "K", 5.0)
    with pytest.raises(ScienceT2IError, match="unknown judge backend"):
        node.load("ftp", choices[0], "", "", "", 5.0)


def test_cli_names_find_text_models_in_the_llm_folder(models_dir):
    from science_t2i.nodes.lmm import backend_from_spec
    from tiny_llm import build_tiny_llm
    build_tiny_llm(models_dir / "LLM" / "coder")
    for spec in ("local:coder", "local:LLM/coder"):
        backend = backend_from_spec(spec)
        assert backend.name == "local:coder"
        assert isinstance(backend.generate(["Plan a figure."], max_new_tokens=2), str)
    with pytest.raises(ScienceT2IError, match="not a folder in"):
        backend_from_spec("local:LLM/missing")
