"""The paper's LMM baseline: both image orders, the reference's accuracy rule (eval_lmm.py,
written out below), strict and robust reading of replies, and eval-reward's judge column."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from science_t2i.nodes.judges.protocols import strict_pair_choice
from science_t2i.nodes.lmm import LMMError
from science_t2i.training.cli import main
from science_t2i.training.core.datasets import load_records, write_jsonl_dataset
from science_t2i.training.eval.judge_cache import JudgeCache
from science_t2i.training.eval.judge_pairs import judge_pair_accuracy


def _solid(r):
    return Image.new("RGB", (8, 8), (r, 0, 0))


class RedFirstJudge:
    """Replies chosen per call by the red values of the two images (explicit images are
    given red values below); ``replies`` maps (red of image-1, red of image-2) -> text."""
    name = "scripted:pairs"

    def __init__(self, replies):
        self.replies = replies
        self.calls = 0

    def generate(self, parts, *, system=None, max_new_tokens=512):
        reds = tuple(p.getpixel((0, 0))[0] for p in parts if isinstance(p, Image.Image))
        self.calls += 1
        reply = self.replies[reds]
        if isinstance(reply, Exception):
            raise reply
        return reply


# (task, category, explicit red, superficial red)
SPEC = [("RI", "biology", 200, 100), ("RI", "biology", 201, 101), ("EL", "physics", 202, 102),
        ("EL", "physics", 203, 103)]
REPLIES = {
    # record 0: right in both orders
    (200, 100): '{"choice": "image-1"}', (100, 200): '{"choice": "image-2"}',
    # record 1: always says image-1 (position bias): right forward, wrong reversed
    (201, 101): '{"choice": "image-1"}', (101, 201): '{"choice": "image-1"}',
    # record 2: right forward in prose (robust reads it, strict does not); reversed wrong
    (202, 102): "Image-1 shows the outcome. Answer: image-1", (102, 202): '{"choice": "image-1"}',
    # record 3: unparseable forward; right reversed
    (203, 103): "Both images are equally good.", (103, 203): '{"choice":"image-2"}',
}


def reference_accuracy(replies, spec, key):
    """eval_lmm.py: per order, correct when the JSON choice names the explicit image; the
    final accuracy per group is the mean of the two orders' accuracies."""
    acc = {}
    for reverse in (False, True):
        tally = {}
        for task, cat, e, s in spec:
            group = task if key == "task" else cat
            text = replies[(s, e) if reverse else (e, s)]
            try:
                choice = json.loads(text).get("choice", "")
            except json.JSONDecodeError:
                choice = text
            ok = (not reverse and choice == "image-1") or (reverse and choice == "image-2")
            t = tally.setdefault(group, [0, 0])
            t[0] += ok
            t[1] += 1
        for g, (c, n) in tally.items():
            acc.setdefault(g, []).append(c / n)
    return {g: sum(v) / 2 for g, v in acc.items()}


@pytest.fixture
def records(tmp_path):
    rows = [{"implicit_prompt": f"prompt {i}", "explicit_image": _solid(e),
             "superficial_image": _solid(s), "category": c, "law": t}
            for i, (t, c, e, s) in enumerate(SPEC)]
    write_jsonl_dataset(rows, tmp_path / "ds")
    return load_records(tmp_path / "ds")


def test_strict_rule_equals_the_reference_computation(records):
    table = judge_pair_accuracy(records, RedFirstJudge(REPLIES), strict=True)
    ref_task = reference_accuracy(REPLIES, SPEC, "task")
    assert {t: v["accuracy"] for t, v in table["by_task"].items()} == pytest.approx(ref_task)
    # by hand: forward right = r0, r1 -> 2/4; reversed right = r0, r3 -> 2/4
    assert table["overall"]["accuracy"] == pytest.approx(0.5)
    assert table["overall"]["consistent"] == pytest.approx(1 / 4)        # r0 only
    assert reference_accuracy(REPLIES, SPEC, "category")["physics"] == \
        pytest.approx(table["by_category"]["physics"]["accuracy"])


def test_robust_reading_counts_prose_and_reports_unparseable(records):
    table = judge_pair_accuracy(records, RedFirstJudge(REPLIES))
    # robust: record 2 forward now right -> forward 3/4, reversed 2/4
    assert table["overall"]["forward_accuracy"] == pytest.approx(3 / 4)
    assert table["overall"]["accuracy"] == pytest.approx(5 / 8)
    assert table["by_task"]["EL"]["accuracy"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    [bad] = table["unparseable"]
    assert bad["index"] == 3 and bad["order"] == "forward"
    assert bad["reply"] == "Both images are equally good."


def test_failed_calls_are_listed_and_asked_again_from_the_cache(records, tmp_path):
    replies = dict(REPLIES)
    replies[(101, 201)] = LMMError("timed out after 3 tries")
    cache = JudgeCache(tmp_path / "c.jsonl")
    first = RedFirstJudge(replies)
    table = judge_pair_accuracy(records, first, cache=cache)
    assert [f["index"] for f in table["failures"]] == [1]
    assert table["overall"]["total"] == 3
    second = RedFirstJudge(REPLIES)
    table = judge_pair_accuracy(records, second, cache=JudgeCache(tmp_path / "c.jsonl"))
    assert second.calls == 1 and table["overall"]["total"] == 4    # only the failed order


def test_strict_reader_matches_eval_lmm():
    assert strict_pair_choice('{"choice": "image-2"}').value == 2
    assert strict_pair_choice(' {"choice": "image-1"}\n').value == 1
    for text in ('```json\n{"choice": "image-1"}\n```', "image-1", '{"choice": "Image-1"}',
                 '{"answer": "image-1"}', "[1]"):
        parsed = strict_pair_choice(text)
        assert parsed.value is None and parsed.reason and parsed.text == text


def test_eval_reward_prints_the_judge_beside_sciscore(records, tmp_path, monkeypatch, capsys):
    import science_t2i.nodes.lmm as jb
    judge = RedFirstJudge(REPLIES)
    monkeypatch.setattr(jb, "backend_from_spec", lambda spec, **kw: judge)
    out = tmp_path / "out"
    code = main(["eval-reward", "--dataset", str(tmp_path / "ds"), "--judge", "local:tiny",
                 "--judge-only", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| all | 62.5 (4) |" in text
    assert "right in both orders 25.0%" in text and "1 unparseable" in text
    data = json.loads((out / "reward_accuracy.json").read_text())
    assert data["models"]["judge local:tiny"]["overall"]["accuracy"] == pytest.approx(5 / 8)
