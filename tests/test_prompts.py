"""Scientific prompt tools: task detection, subjects, rewrites and triples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from science_t2i.nodes import prompts
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.prompts import (build_triple, detect_task, extract_subject, get_task,
                                       load_knowledge)
from science_t2i.nodes.prompts import node_classes as prompt_nodes
from science_t2i.nodes.prompts.rewrite import implicit_to_explicit

ROLLOUT = Path("/work/shared/data/science_t2i_rollout_prompts.json")
KNOWLEDGE = Path(prompts.__file__).with_name("knowledge") / "tasks.json"
PAPER_TASKS = {"IM", "FR", "SC", "BU", "DI", "AB", "RU", "SO", "LR", "WR", "LI", "EL", "ME",
               "GR", "EV", "RI"}
SUBJECT_ORIENTED = {"IM", "FR", "SC", "BU", "DI", "AB"}


def _same_subject(a: str, b: str) -> bool:
    """Case- and plural-insensitive comparison, word by word."""
    def norm(s):
        out = []
        for w in s.lower().split():
            if w.endswith("ies") and len(w) > 4:
                w = w[:-3] + "y"
            elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
                w = w[:-1]
            out.append(w)
        return out
    return norm(a) == norm(b)


def _rollout():
    if ROLLOUT.is_file():
        return json.loads(ROLLOUT.read_text())
    # CI copy of the data shipped with the tests
    return json.loads((Path(__file__).parent / "data" / ROLLOUT.name).read_text())


def test_knowledge_covers_the_16_tasks():
    tasks = load_knowledge().tasks
    assert set(tasks) == PAPER_TASKS
    assert {c for c, t in tasks.items() if t.orientation == "subject"} == SUBJECT_ORIENTED
    for t in tasks.values():
        assert t.discipline in ("physics", "chemistry", "biology")
        assert t.principle and t.visual_consequence and t.cues
        assert len(t.examples) >= 2
        for key in ("implicit", "explicit", "superficial"):
            assert key in t.templates
        # every example of the knowledge file is read back as its own task and subject
        for ex in t.examples:
            assert detect_task(ex["implicit"]).code == t.code, ex
            assert _same_subject(extract_subject(ex["implicit"], t.code), ex["subject"]), ex


def test_knowledge_holds_no_rollout_prompts():
    """The rules must generalise: no prompt or prompt-specific object of the data file."""
    raw = json.loads(KNOWLEDGE.read_text())
    for task in raw["tasks"]:
        task.pop("examples")  # examples may reuse the paper's own (e.g. "butter stick")
    text = json.dumps(raw).lower()
    data = _rollout()
    leaked = [r["prompt"] for r in data if r["prompt"].lower().rstrip(".")[:40] in text]
    assert leaked == []
    objects = {r["object"].lower() for r in data} - {"glass", "flower", "plant", "flame"}
    # multi-word objects are specific enough to count as memorised entries
    assert [o for o in objects if " " in o and f'"{o}"' in text] == []


def test_rollout_prompts_tasks_and_subjects():
    data = _rollout()
    assert len(data) == 312
    agree, tasks = 0, {}
    for r in data:
        d = detect_task(r["prompt"])
        tasks[d.code] = tasks.get(d.code, 0) + 1
        agree += _same_subject(extract_subject(r["prompt"], d.code), r["object"])
    share_task = sum(n for c, n in tasks.items() if c in PAPER_TASKS) / len(data)
    share_subject = agree / len(data)
    print(f"\nrollout prompts: {share_task:.1%} assigned one of the 16 tasks, subject agrees "
          f"with 'object' for {share_subject:.1%} ({agree}/{len(data)}); per task {tasks}")
    assert share_task == 1.0
    assert share_subject >= 0.85
    # the data file holds every task; a detector collapsing onto a few tasks would fail here
    assert set(tasks) == PAPER_TASKS


# Prompts written for these tests (not from the data file), with the expected task and subject.
UNSEEN = [
    ("An unripe mango on a kitchen table.", "RI", "mango"),
    ("A steel bicycle left in the rain for years.", "RU", "steel bicycle"),
    ("A mirror in a very humid bathroom.", "LI", "mirror"),
    ("A drop of red wine falls on a white tablecloth.", "AB", "red stain"),
    ("A drop of ink touches a coffee filter.", "AB", "ink stain"),
    ("A rarely watered sunflower in a pot.", "WR", "flower"),
    ("A birch tree in autumn.", "SC", "plant"),
    ("A glass of water and olive oil.", "IM", "glass"),
    ("A scoop of vanilla ice cream on a hot stove.", "ME", "vanilla ice cream"),
    ("An aquarium full of water holding a cork.", "BU", "glass"),
    ("A smartphone without power, in a living room.", "EL", "smartphone"),
    ("A kettle of water heated to 300 degrees Celsius.", "EV", "kettle"),
    ("A bowl of soup in a freezer.", "SO", "bowl"),
    ("A pinch of sodium chloride powder ignites on a table.", "FR", "flame"),
    ("A few drops of green dye dropped into a beaker of water.", "DI", "beaker"),
    ("A houseplant kept in a windowless closet for a month.", "LR", "flower"),
    ("A feather in zero gravity.", "GR", "feather"),
    ("A bronze bell that has been exposed to air for centuries.", "RU", "bronze bell"),
    ("A drop of black coffee spilled on a cotton shirt.", "AB", "black stain"),
    ("A wooden block dropped into a tank of water.", "BU", "glass"),
    ("A bottle of milk left outside during an arctic night.", "SO", "bottle"),
    ("A beaker containing water and mercury.", "IM", "beaker"),
    ("A television with no electricity in the living room.", "EL", "television"),
    ("Unripe strawberries in a basket.", "RI", "strawberry"),
]


@pytest.mark.parametrize("prompt,task,subject", UNSEEN)
def test_unseen_prompts_generalise(prompt, task, subject):
    d = detect_task(prompt)
    assert d.code == task, (prompt, d.scores)
    assert 0.3 < d.confidence <= 1.0 and d.cues
    assert _same_subject(extract_subject(prompt), subject)


def test_detection_confidence_follows_the_documented_formula():
    import math
    d = detect_task("A pillow in a space without gravity and zero gravity.")
    best = d.scores["GR"]
    second = max([v for c, v in d.scores.items() if c != "GR"], default=0.0)
    assert best == pytest.approx(3.0 + 2.5)  # both GR cue patterns matched
    expected = (1 - math.exp(-best / 1.5)) * best / (best + second)
    assert d.confidence == pytest.approx(expected, abs=1e-4)
    assert "without gravity" in d.cues and "zero gravity" in d.cues


@pytest.mark.parametrize("prompt", ["A red apple on a table.", "A cat sleeping on a sofa.",
                                    "An old iron gate.", "portrait of a woman, oil painting"])
def test_prompt_without_scientific_cue_is_none(prompt):
    d = detect_task(prompt)
    assert d.code == "none" and d.confidence == 0.0
    r = implicit_to_explicit(prompt)
    assert r.task == "none" and r.explicit == r.superficial == " ".join(prompt.split())
    code, name, conf, subject = prompt_nodes.PromptTaskDetectNode().detect(prompt)
    assert (code, conf) == ("none", 0.0) and subject


def test_grammatical_subject_rules():
    assert extract_subject("A cat sleeping on a sofa.") == "cat"
    assert extract_subject("A metal watering can in a humid room.") == "metal watering can"
    assert extract_subject("Depicting a piece of butter in the desert.") == "butter"
    assert extract_subject("In a steamy, room-temperature bathroom, a ceramic tile appears.",
                           "LI") == "ceramic tile"


def test_rewrites_state_the_visible_outcome():
    r = implicit_to_explicit("A copper kettle exposed to oxygen for decades.")
    assert r.task == "RU" and r.subject == "copper kettle"
    assert "patina" in r.explicit and "copper kettle" in r.explicit
    assert "shiny" in r.superficial and r.explicit != r.superficial
    r = implicit_to_explicit("An iron anchor exposed to oxygen for decades.")
    assert "rust" in r.explicit
    r = implicit_to_explicit("A little sodium carbonate powder burning on a surface.")
    assert r.task == "FR" and "yellow" in r.explicit and "yellow" not in r.superficial
    r = implicit_to_explicit("An oak tree in autumn, in a park.")
    assert "red" in r.explicit and "green" in r.superficial and r.explicit.endswith(
        "in a park.")
    r = implicit_to_explicit("A transparent tank filled with water holding a steel spoon.")
    assert r.subject == "glass" and "bottom" in r.explicit and "floating" in r.superficial
    r = implicit_to_explicit("A transparent tank filled with water holding a wooden spoon.")
    assert "floating" in r.explicit and "bottom" in r.superficial
    r = implicit_to_explicit("Unripe strawberries in a basket.")
    assert r.explicit.startswith("Hard strawberries")  # no "a" before a plural
    r = implicit_to_explicit("A ripe banana on a plate.")
    assert r.subject == "banana" and "ripened" in r.explicit and "green" in r.superficial
    # a given task overrides detection
    assert implicit_to_explicit("A rose in a garden.", task="WR").task == "WR"


@pytest.mark.parametrize("task,subject,region", [
    ("GR", "pillow", "pillow"), ("SO", "carafe", "carafe"), ("ME", "butter stick", "butter stick"),
    ("AB", "blue ink", "blue stain"), ("BU", "apple", "glass"), ("DI", "orange dye", "glass"),
    ("EL", "laptop", "laptop"), ("EV", "pot", "pot"), ("LI", "mirror", "mirror"),
    ("RU", "iron hammer", "iron hammer"), ("IM", "milk", "glass"), ("FR", "copper", "flame"),
    ("LR", "lily", "flower"), ("WR", "rose", "flower"), ("SC", "maple tree", "plant"),
    ("RI", "tomato", "tomato")])
def test_built_triples_read_back_as_their_task(task, subject, region):
    scene = "in a bedroom"
    t = build_triple(task, subject, scene)
    for p in (t.implicit, t.explicit, t.superficial):
        assert p.endswith("in a bedroom.")
        # the subject, or for absorption the colour of its stain, is named
        assert subject.split()[-1] in p.lower() or subject.split()[0] in p.lower()
    assert subject in t.implicit
    assert len({t.implicit, t.explicit, t.superficial}) == 3
    # the implicit prompt the builder writes is detected as its task, with the right region
    assert detect_task(t.implicit).code == task
    assert _same_subject(extract_subject(t.implicit), region)
    plain = build_triple(task, subject)
    assert "bedroom" not in plain.implicit


def test_bad_inputs():
    with pytest.raises(ScienceT2IError, match="prompt is empty"):
        detect_task("   ")
    with pytest.raises(ScienceT2IError, match="prompt is empty"):
        implicit_to_explicit("")
    with pytest.raises(ScienceT2IError, match=r"unknown task 'XX'.*'AB'"):
        get_task("XX")
    with pytest.raises(ScienceT2IError, match="unknown task"):
        build_triple("XX", "apple")
    with pytest.raises(ScienceT2IError, match="subject is empty"):
        build_triple("RI", " ")
    assert get_task("ripeness").code == "RI" and get_task("ri").code == "RI"


def test_nodes_registered_and_callable():
    from science_t2i.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    for name, display in [("ScienceT2I_PromptBuilder", "Science Prompt Builder"),
                          ("ScienceT2I_ImplicitToExplicit", "Implicit to Explicit"),
                          ("ScienceT2I_PromptTaskDetect", "Prompt Task Detect")]:
        cls = NODE_CLASS_MAPPINGS[name]
        assert NODE_DISPLAY_NAME_MAPPINGS[name] == display
        assert cls.CATEGORY == "Science-T2I/Prompts"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert "required" in cls.INPUT_TYPES()
    assert set(prompt_nodes.PromptBuilderNode.INPUT_TYPES()["required"]["task"][0]) == \
        PAPER_TASKS
    ip, ep, sp = prompt_nodes.PromptBuilderNode().build("RI", "banana", "on the street")
    assert "unripe" in ip.lower() and "green" in ep and "on the street" in sp
    ep, sp, task, subject = prompt_nodes.ImplicitToExplicitNode().rewrite(
        "A rarely watered rose.", "auto", "rules")
    assert (task, subject) == ("WR", "flower") and "wilted" in ep
    code, name, conf, subject = prompt_nodes.PromptTaskDetectNode().detect(
        "A drop of blue ink touches a napkin.")
    assert (code, name, subject) == ("AB", "absorption", "blue stain") and 0 < conf <= 1
