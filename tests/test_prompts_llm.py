"""The optional local-LLM rewrite backend: loading from models/LLM, validation, fallback."""
from __future__ import annotations

import logging

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lmm import local as local_models
from science_t2i.nodes.prompts import llm as prompt_llm
from science_t2i.nodes.prompts import node_classes as prompt_nodes
from science_t2i.nodes.prompts import rewrite_rules
from science_t2i.nodes.prompts.rewrite import implicit_to_explicit
from tiny_llm import WORDS, build_tiny_llm


@pytest.fixture(autouse=True)
def _fresh_cache():
    local_models._cache.clear()
    yield
    local_models._cache.clear()


def test_garbage_output_falls_back_to_rules(models_dir, caplog, monkeypatch):
    build_tiny_llm(models_dir / "LLM" / "tiny-garbage")
    monkeypatch.setattr(prompt_llm, "MAX_NEW_TOKENS", 12)  # enough to show it is garbage
    prompt = "An unripe tomato on a table."
    with caplog.at_level(logging.INFO, logger="science_t2i"):
        r = implicit_to_explicit(prompt, backend="tiny-garbage")
    rules = rewrite_rules(prompt)
    assert (r.explicit, r.superficial, r.task, r.subject) == (
        rules.explicit, rules.superficial, rules.task, rules.subject)
    assert r.backend == "rules"
    # the model really ran, twice, and its answers were rejected
    assert sum("gave no usable" in m for m in caplog.messages) == 2


def test_valid_llm_sentence_is_used(models_dir, monkeypatch):
    build_tiny_llm(models_dir / "LLM" / "tiny-words", words=WORDS)
    loaded = prompt_llm.rewriter("tiny-words").load()  # the pack's one local loader
    model, tok = loaded.model, loaded.processor
    answers = {"explicit": "a hard green tomato with firm skin",
               "superficial": "a red ripe tomato on a table"}
    calls = []

    def fake_generate(input_ids, attention_mask=None, **kwargs):
        # explicit is asked first, then superficial (a random word-level model cannot be
        # trained to answer here; real generation is exercised by the garbage test)
        kind = "explicit" if not calls else "superficial"
        calls.append((tok.decode(input_ids[0]), kwargs))
        new = tok(answers[kind], return_tensors="pt")["input_ids"]
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    r = implicit_to_explicit("An unripe tomato.", backend="tiny-words")
    assert r.explicit == "A hard green tomato with firm skin."
    assert r.superficial == "A red ripe tomato on a table."
    assert r.backend == "tiny-words" and r.task == "RI" and r.subject == "tomato"
    assert len(calls) == 2 and calls[0][1]["do_sample"] is False
    # the prompt reaches the model, under a different fixed instruction for each kind
    assert "unripe" in calls[0][0] and calls[0][0] != calls[1][0]


def test_missing_llm_directory_is_a_clear_error(models_dir):
    with pytest.raises(ScienceT2IError, match=r"LLM 'nope' not found.*config\.json.*rules"):
        implicit_to_explicit("An unripe tomato.", backend="nope")
    # a prompt without a scientific cue never needs the LLM
    assert implicit_to_explicit("A cat.", backend="nope").task == "none"


def test_llm_listed_as_node_backend(models_dir):
    build_tiny_llm(models_dir / "LLM" / "tiny-garbage")
    choices = prompt_nodes.ImplicitToExplicitNode.INPUT_TYPES()["required"]["backend"][0]
    assert choices == ["rules", "tiny-garbage"]


@pytest.mark.parametrize("text,subject,expected", [
    ("A green tomato with firm skin.", "tomato", "A green tomato with firm skin."),
    ("Explicit prompt: a green tomato on a table\nmore text", "tomato",
     "A green tomato on a table."),
    ('"a wilted rose with brown petals"', "rose", "A wilted rose with brown petals."),
    ("A green tomato. It is unripe.", "tomato", None),       # two sentences
    ("tomato", "tomato", None),                             # too short
    ("A green banana on a table.", "tomato", None),         # subject missing
    ("@1 @2 @3 @4 tomato", "tomato", None),                # mostly symbols
    ("", "tomato", None),
    ("Green tomatoes hanging on the vine.", "tomato", "Green tomatoes hanging on the vine."),
])
def test_validate_sentence(text, subject, expected):
    assert prompt_llm.validate_sentence(text, subject) == expected


def test_node_inside_comfyui_uses_model_management(comfy, monkeypatch):
    build_tiny_llm(comfy.models_dir / "LLM" / "tiny-garbage")
    monkeypatch.setattr(prompt_llm, "MAX_NEW_TOKENS", 4)
    node = prompt_nodes.ImplicitToExplicitNode
    assert "tiny-garbage" in node.INPUT_TYPES()["required"]["backend"][0]
    ep, sp, task, subject = node().rewrite("A powerless laptop.", "auto", "tiny-garbage")
    assert (task, subject) == ("EL", "laptop") and "switched off" in ep
    # ComfyUI was asked to load the LLM (a ModelPatcher) before each generation
    assert len(comfy.loaded) == 2
    assert type(comfy.loaded[0]).__name__ == "ModelPatcher"
