"""The Science-T2I benchmark's rubric judge: the reply reader and the score rule against
scores written out by hand for a fixed set of replies, the aggregation against an independent
computation, the prompt, and the Science Rubric Judge node."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.judges.science_rubric import (RUBRIC_JUDGE_PROMPT, aggregate,
                                                     judge_rubric, parse_rubric, rubric_prompt)

# reply -> the record's score by the rule (overall if given, else reality), or None (failure)
REPLIES = [
    ('{"description": "a green apple", "scene score": 3, "reality score": 2}', 2.0),
    ('Sure! Here is my grading:\n```json\n{"description": "red apple", "scene score": 3,'
     ' "reality score": 0}\n```\nHope this helps.', 0.0),
    ('{"evaluation": {"scene_score": "3", "reality_score": "1/3"}, "description": "x"}', 1.0),
    ('{"description": "d", "scene score": 2, "reality score": 1, "overall score": 2.5}', 2.5),
    ('{"Scene Score": 1, "Reality Score": {"score": 3, "reason": "steam"}}', 3.0),
    ('<think>the scene has a kettle... reality score 3?</think>{"scene score": 3, '
     '"reality score": 2}', 2.0),
    ("Scene score: 2\nReality score: 1\n(the apple looks ripe)", 1.0),
    ('{"description": "no apple at all", "scene score": 0}', None),          # missing reality
    ('{"description": "d", "scene score": 3, "reality score": 7}', None),   # out of range
    ('{"description": "d", "scene score": 3, "reality score": "high"}', None),
    ("I cannot grade this image.", None),
    ("", None),
]


@pytest.mark.parametrize("reply,expected", REPLIES)
def test_the_score_rule_on_fixed_replies(reply, expected):
    parsed = parse_rubric(reply)
    if expected is None:
        assert not parsed.ok and parsed.reason and parsed.text == reply
    else:
        assert parsed.ok, parsed.reason
        assert parsed.value.score == expected
        assert parsed.value.score_100 == pytest.approx(expected / 3 * 100)


def test_the_fields_beside_the_score():
    v = parse_rubric(REPLIES[3][0]).value
    assert (v.description, v.scene, v.reality, v.overall) == ("d", 2.0, 1.0, 2.5)
    v = parse_rubric(REPLIES[0][0]).value
    assert (v.description, v.scene, v.reality, v.overall) == ("a green apple", 3.0, 2.0, None)


def test_aggregation_against_an_independent_computation():
    rows = []
    for i, (reply, _) in enumerate(REPLIES * 2):
        parsed = parse_rubric(reply)
        rows.append({"id": f"r{i}", "score": parsed.value.score if parsed.ok else None,
                     "category": "physics" if i % 2 else "chemistry",
                     "law": ["ME", "RU", "EV"][i % 3]})
    report = aggregate(rows)
    # by hand: the mean of the parsed scores / 3 * 100, failures left out and counted
    kept = [r for r in rows if r["score"] is not None]
    assert report["records"] == len(rows) == 24
    assert report["failures"] == 24 - len(kept) == 10
    assert report["failed"] == [r["id"] for r in rows if r["score"] is None]
    assert report["score"] == pytest.approx(round(sum(r["score"] for r in kept)
                                                  / len(kept) / 3 * 100, 2))
    for law in ("ME", "RU", "EV"):
        mine = [r["score"] for r in kept if r["law"] == law]
        assert report["by_law"][law]["judged"] == len(mine)
        assert report["by_law"][law]["score"] == pytest.approx(round(
            sum(mine) / len(mine) / 3 * 100, 2))
    assert set(report["by_category"]) == {"physics", "chemistry"}
    assert aggregate([])["score"] is None


def test_the_prompt_and_a_template_of_ones_own(tmp_path):
    text = rubric_prompt("an unripe apple", "an apple", "the apple is green")
    assert "an unripe apple" in text and "the apple is green" in text
    assert '"reality score"' in text and "{prompt}" not in RUBRIC_JUDGE_PROMPT.format(
        prompt="", scene="", reality="")
    mine = rubric_prompt("p", "s", "r", template="Prompt {prompt}; scene {scene}; real {reality}")
    assert mine == "Prompt p; scene s; real r"
    with pytest.raises(ScienceT2IError, match=r"lacks \{reality\}"):
        rubric_prompt("p", "s", "r", template="{prompt} {scene}")
    with pytest.raises(ScienceT2IError, match="needs the scene criteria"):
        rubric_prompt("p", "  ", "r")


class _Judge:
    """An LMM backend answering from a script (what the node and judge_rubric send)."""

    def __init__(self, replies):
        self.replies, self.asked = list(replies), []

    def generate(self, parts, *, system=None, max_new_tokens=512):
        self.asked.append(parts)
        return self.replies.pop(0)


def test_judge_rubric_and_the_node():
    from PIL import Image
    from science_t2i.nodes.judges.node_classes import ScienceRubricJudgeNode
    judge = _Judge([REPLIES[0][0]])
    parsed = judge_rubric(judge, Image.new("RGB", (8, 8)), "an unripe apple", "an apple",
                          "green")
    assert parsed.ok and parsed.value.score == 2.0
    image, question = judge.asked[0]
    assert isinstance(image, Image.Image) and "an unripe apple" in question

    node = ScienceRubricJudgeNode()
    two = torch.rand(2, 16, 16, 3)
    out = node.judge(_Judge([REPLIES[0][0], REPLIES[4][0]]), two, "p", "s", "r")
    score, scene, description = out["result"]
    assert score == pytest.approx((2 / 3 * 100 + 100) / 2)
    assert scene.splitlines() == ["met (3/3)", "met (1/3)"]
    assert "science score" in out["ui"]["text"][0]
    with pytest.raises(ScienceT2IError, match="could not be read"):
        node.judge(_Judge(["no idea"]), two[:1], "p", "s", "r")


# ----------------------------------------------------------------------------- a whole run

def _colour_run(root, colours):
    """RUN/{ip,ep,sp}/<record>_0.png, each a flat colour (the scripted judge reads it)."""
    from PIL import Image
    for kind, per_record in colours.items():
        (root / kind).mkdir(parents=True)
        for index, rgb in enumerate(per_record):
            Image.new("RGB", (16, 16), rgb).save(root / kind / f"{index}_0.png")


class _ColourJudge:
    """Answers by the image's colour: a reply per colour, or an LMMError for ``fail``."""

    def __init__(self, replies, fail=()):
        import threading
        self.name, self.replies, self.fail = "scripted", replies, set(fail)
        self.calls, self._lock = [], threading.Lock()

    def generate(self, parts, *, system=None, max_new_tokens=512):
        from science_t2i.nodes.lmm import LMMError
        rgb = parts[0].getpixel((0, 0))
        with self._lock:
            self.calls.append(rgb)
        if rgb in self.fail:
            raise LMMError("the endpoint timed out", transient=True)
        return self.replies[rgb]


def _records(tmp_path, rubric=True):
    from science_t2i.training.core.datasets import load_records, write_jsonl_dataset
    rows = [{"implicit_prompt": ["an unripe apple"], "category": "biology", "law": "RI",
             **({"scene_scoring": ["an apple", "one fruit"],
                 "real_scoring": "the apple is green"} if rubric else {})},
            {"implicit_prompt": ["butter on a hot pan"], "category": "physics", "law": "ME",
             **({"scene_scoring": "butter and a pan", "real_scoring": "melting"}
                if rubric else {})}]
    write_jsonl_dataset(rows, tmp_path / "ds")
    return load_records(tmp_path / "ds", None, require=("implicit_prompt",))


def _reply(reality, overall=None):
    extra = f', "overall score": {overall}' if overall is not None else ""
    return f'{{"description": "d", "scene score": 3, "reality score": {reality}{extra}}}'


def test_a_run_judged_resumed_with_failures_counted(tmp_path):
    from science_t2i.training.eval.judge_cache import JudgeCache
    from science_t2i.training.eval.rubric_runs import judge_run
    records = _records(tmp_path)
    assert records[0].scene_scoring == "an apple\none fruit"
    colours = {"ip": [(10, 0, 0), (20, 0, 0)], "ep": [(30, 0, 0), (40, 0, 0)],
               "sp": [(50, 0, 0), (60, 0, 0)]}
    _colour_run(tmp_path / "run", colours)
    replies = {(10, 0, 0): _reply(1), (20, 0, 0): "no idea", (30, 0, 0): _reply(3),
               (40, 0, 0): _reply(1, overall=2.5), (50, 0, 0): _reply(0),
               (60, 0, 0): _reply(0)}
    cache = tmp_path / "cache.jsonl"
    judge = _ColourJudge(replies, fail={(60, 0, 0)})
    result = judge_run(tmp_path / "run", records, judge, cache=JudgeCache(cache),
                       concurrency=3)
    k = result["kinds"]
    # by hand: implicit has one readable reply (1/3), explicit 3 and 2.5, superficial 0
    assert k["implicit"]["score"] == pytest.approx(round(100 / 3, 2))
    assert k["implicit"]["failures"] == 1 and k["implicit"]["judged"] == 1
    assert k["explicit"]["score"] == pytest.approx(round((3 + 2.5) / 2 / 3 * 100, 2))
    assert k["superficial"]["score"] == 0 and k["superficial"]["failures"] == 1
    assert result["gap"] == pytest.approx(k["explicit"]["score"] - k["implicit"]["score"])
    assert k["explicit"]["by_law"]["ME"]["score"] == pytest.approx(round(2.5 / 3 * 100, 2))
    assert sorted(f["id"] for f in result["failures"]) == ["ip/1_0.png", "sp/1_0.png"]
    assert len(judge.calls) == 6

    # a re-run asks only what did not arrive (the timed-out call); the rest is cached
    again = _ColourJudge(replies)
    result2 = judge_run(tmp_path / "run", records, again, cache=JudgeCache(cache))
    assert again.calls == [(60, 0, 0)]
    assert result2["kinds"]["superficial"]["judged"] == 2
    assert [f["id"] for f in result2["failures"]] == ["ip/1_0.png"]   # unreadable stays so


def test_the_judge_needs_the_rubric_fields(tmp_path):
    """No record with both fields: refused. A record without them: its images are counted
    failures, the others judged."""
    from dataclasses import replace

    from science_t2i.training.eval.rubric_runs import judge_run
    records = _records(tmp_path, rubric=False)
    _colour_run(tmp_path / "run", {"ip": [(1, 1, 1), (4, 4, 4)], "ep": [(2, 2, 2)],
                                   "sp": [(3, 3, 3)]})
    with pytest.raises(ScienceT2IError, match="lack scene_scoring and real_scoring, the "
                                              "rubric fields.*SciScore only"):
        judge_run(tmp_path / "run", records, _ColourJudge({}))
    records = _records(tmp_path / "with", rubric=True)
    records[1] = replace(records[1], real_scoring="")
    judge = _ColourJudge({c: _reply(2) for c in ((1, 1, 1), (2, 2, 2), (3, 3, 3))})
    result = judge_run(tmp_path / "run", records, judge)
    assert [f["id"] for f in result["failures"]] == ["ip/1_0.png"]
    assert "record 1 has no scene_scoring/real_scoring" in result["failures"][0]["error"]
    assert (4, 4, 4) not in judge.calls and result["kinds"]["implicit"]["judged"] == 1


def test_eval_t2i_with_the_rubric_judge_through_the_cli(tmp_path, capsys):
    """SciScore and a local judge (a tiny random Qwen2-VL: its replies are unreadable, so
    every image is a counted failure, and the report still comes out); and a dataset without
    the rubric fields: the judge stage is skipped saying why, SciScore still scores."""
    import json
    from science_t2i.training.cli import main
    from tiny_clip import build_tiny_clip
    from tiny_vlm import build_tiny_qwen2_vl
    models = tmp_path / "models"
    build_tiny_clip(models / "sciscore" / "tiny", image_size=32, seed=3)
    vlm = build_tiny_qwen2_vl(models / "vlm" / "tiny-qwen2-vl")
    _records(tmp_path)
    _colour_run(tmp_path / "run", {k: [(i * 40, 9, 9), (i * 40 + 20, 9, 9)]
                                   for i, k in enumerate(("ip", "ep", "sp"))})
    prompt = tmp_path / "judge_prompt.txt"
    prompt.write_text("Prompt: {prompt}\nScene: {scene}\nReal: {reality}\nJSON please.")
    out = tmp_path / "out"
    rc = main(["--models-dir", str(models), "eval-t2i", str(tmp_path / "run"), "--dataset",
               str(tmp_path / "ds"), "--model", "tiny", "--out", str(out), "--device", "cpu",
               "--judge", f"local:{vlm}", "--judge-prompt", str(prompt), "--concurrency", "1"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "t2i_eval.json").read_text())
    rubric = data["rubric"]
    judged = sum(k["judged"] for k in rubric["kinds"].values())
    assert judged + len(rubric["failures"]) == 6
    assert "Rubric judge" in (out / "t2i_eval.md").read_text()
    assert len((out / "rubric_cache.jsonl").read_text().splitlines()) == 6

    bad = tmp_path / "plain"
    _records(bad, rubric=False)
    rc = main(["--models-dir", str(models), "eval-t2i", str(tmp_path / "run"), "--dataset",
               str(bad / "ds"), "--model", "tiny", "--out", str(tmp_path / "o2"),
               "--judge", f"local:{vlm}", "--device", "cpu"])
    assert rc == 0       # the judge stage says what is missing; SciScore still scores
    data = json.loads((tmp_path / "o2" / "t2i_eval.json").read_text())
    assert "rubric" not in data and "lack scene_scoring and real_scoring" in data["rubric_skipped"]
    assert "rubric judge not run" in (tmp_path / "o2" / "t2i_eval.md").read_text()
    assert data["runs"]["run"]["overall"]["ip"] is not None


# ----------------------------------------------------------------------------- in a graph

def test_bench_records_and_score_nodes(tmp_path, monkeypatch):
    """Science Bench Records gives the prompts (one per record) of the pack's sample or a
    file in ComfyUI's input folder; Science Bench Score judges every drawn image by its
    record's rubric: the score out of 100 is the mean of the readable replies' scores / 3,
    an unreadable reply is a counted failure, and per-task scores are given."""
    import json
    from science_t2i.nodes import _comfy
    from science_t2i.nodes.judges.node_classes import (ScienceBenchRecordsNode,
                                                       ScienceBenchScoreNode)
    prompts, records = ScienceBenchRecordsNode().load("", "explicit", 1, 3)
    sample = [json.loads(line) for line in (
        __import__("pathlib").Path(_comfy.__file__).parent / "judges" / "bench_sample.jsonl"
    ).read_text().splitlines()]
    assert prompts == [r["explicit_prompt"] for r in sample[1:4]]
    assert [r.law for r in records] == [r["law"] for r in sample[1:4]]

    replies = [REPLIES[0][0], REPLIES[3][0], "no idea", REPLIES[4][0]]   # 2, 2.5, -, 3
    images = [torch.rand(2, 8, 8, 3), torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)]
    judge = _Judge(replies)
    out = ScienceBenchScoreNode().score([judge], images, records)
    score, report = out["result"]
    assert score == pytest.approx((2 + 2.5 + 3) / 3 / 3 * 100, abs=0.005)   # 2 decimals
    assert "3 judged, 1 failed" in report and "failed (" in report
    # the first record's two images are judged by its own rubric
    assert all(records[0].reality in q for _, q in judge.asked[:2])
    assert records[2].reality in judge.asked[3][1]
    assert f"{records[0].law} {(2 + 2.5) / 2 / 3 * 100:.1f}" in report

    with pytest.raises(ScienceT2IError, match="2 image batches for 3 records"):
        ScienceBenchScoreNode().score([_Judge([])], images[:2], records)

    monkeypatch.chdir(tmp_path)         # outside ComfyUI the input folder is the current one
    (tmp_path / "trainset.jsonl").write_text(json.dumps({"implicit_prompt": "x"}) + "\n")
    with pytest.raises(ScienceT2IError, match="record 0 of trainset.jsonl has no "
                                              "scene_scoring, real_scoring"):
        ScienceBenchRecordsNode().load("trainset.jsonl", "implicit", 0, 4)
    with pytest.raises(ScienceT2IError, match="not found"):
        ScienceBenchRecordsNode().load("missing.jsonl", "implicit", 0, 4)
