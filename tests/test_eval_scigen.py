"""eval-scigen: records in SciGenBench's layouts, R_inv, the judge averages and the report
on scripted judge replies (numbers worked out by hand below), resuming from the cache, and
records or images that are wrong."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lmm import LMMError
from science_t2i.training.cli import main
from science_t2i.training.eval.judge_cache import JudgeCache
from science_t2i.training.eval.scigen.data import load_scigen_records, split_inline_options
from science_t2i.training.eval.scigen.judging import judge_image_set
from science_t2i.training.eval.scigen.summary import summarise, summarise_groups

RUBRIC_R1 = ("Reasoning: fine.\n```json\n{\"Correctness_Fidelity\": 2, \"Layout_Precision\": 2,"
             " \"Readability_Occlusion\": 1, \"Scientific_Plausibility\": 1, "
             "\"Expressiveness_Richness\": 0}\n```")
RUBRIC_R3 = ('{"Correctness_Fidelity": 1, "Layout_Precision": 1, "Readability_Occlusion": 1, '
             '"Scientific_Plausibility": 1, "Expressiveness_Richness": 1}')
# replies by (record id, kind, quiz number); r5's calls fail like a server that stays down
REPLIES = {
    ("r1", "quiz", 0): "The curve peaks at x = 2.\nAnswer: B",      # right (gold B)
    ("r1", "quiz", 1): "I think it is A.",                          # wrong (gold C)
    ("r1", "rubric", 0): RUBRIC_R1,
    ("r2", "quiz", 0): "I cannot tell from this picture.",          # unparseable -> wrong
    ("r2", "rubric", 0): "Looks good overall!",                     # unparseable -> zeros
    ("r3", "quiz", 0): "The tension balances the weight.\nAnswer: 12 N",  # right (gold 12 N)
    ("r3", "rubric", 0): RUBRIC_R3,
}
COLOURS = {"r1": 10, "r2": 50, "r3": 90, "r4": 130, "r5": 170}


class ScriptedJudge:
    """Answers from REPLIES, telling the record by the red value of its solid image."""
    name = "scripted:v1"

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple] = []
        self.fail = fail

    def generate(self, parts, *, system=None, max_new_tokens=512):
        image = next(p for p in parts if isinstance(p, Image.Image))
        rid = {v: k for k, v in COLOURS.items()}[image.getpixel((0, 0))[0]]
        text = " ".join(p for p in parts if isinstance(p, str))
        kind = "rubric" if "Rate it from 0" in text else "quiz"
        number = 1 if "second question" in text else 0
        self.calls.append((rid, kind, number))
        if rid in self.fail:
            raise LMMError("scripted: server down")
        return REPLIES[(rid, kind, number)]


def _options(letters="ABCD"):
    return {k: f"option {k}" for k in letters}


RECORDS = [
    {"id": "r1", "question": "Plot y = -(x-2)^2.", "image_type": "Plot", "subject": "Math",
     "quizzes": [{"question": "Where is the peak?", "options": _options(),
                  "correct_option": "B"},
                 {"question": "The second question: the sign?", "options": _options(),
                  "correct_option": "C"}]},
    {"id": "r2", "original_question": "A ray hits a mirror.", "image_type": "Plot",
     "subject": "Physics",
     "multimodal_question": "What is the angle?\nA. 30°\nB. 45°\nC. 60°", "answer": "A"},
    {"id": "r3", "original_question": "A 12 N weight hangs on a rope.", "image_type": "Circuit",
     "subject": "Physics", "multimodal_question": "What is the tension?", "answer": "12 N"},
    {"id": "r4", "original_question": "A battery and a resistor.", "image_type": "Circuit",
     "subject": "Physics", "multimodal_question": "Which?\nA. x\nB. y\nC. z\nD. w",
     "answer": "D"},
    {"id": "r5", "original_question": "A capacitor.", "image_type": "Circuit",
     "subject": "Physics", "multimodal_question": "Which?\nA. x\nB. y", "answer": "B"},
]


@pytest.fixture
def bench(tmp_path):
    data = tmp_path / "scigen.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    images = tmp_path / "gen"
    images.mkdir()
    for rid, red in COLOURS.items():
        if rid != "r4":  # r4's image is missing
            Image.new("RGB", (32, 24), (red, 0, 0)).save(images / f"{rid}.png")
    return data, images


def _rows(data, images, backend, cache=None):
    records = load_scigen_records(data)
    rows = judge_image_set(records, images, backend, cache if cache is not None else JudgeCache(None),
                           metrics=["quiz", "judge"])
    return records, rows


def test_inline_options_are_split_from_the_question():
    stem, options = split_inline_options("What is it?\nOptions:\nA. 30°\n(B) 45°\nC) 60°")
    assert stem == "What is it?"
    assert options == {"A": "30°", "B": "45°", "C": "60°"}
    assert split_inline_options("A ball rolls.") == ("A ball rolls.", {})


def test_r_inv_judge_means_and_groups_equal_the_hand_computation(bench):
    data, images = bench
    records, rows = _rows(data, images, ScriptedJudge(fail={"r5"}))
    quizzes = {r.id: len(r.quizzes) for r in records}.__getitem__
    s = summarise(rows, missing="fail", quizzes_of=quizzes)
    # quizzes counted: r1 2, r2 1, r3 1, r4 1 (missing image: wrong); r5 left out (judge down)
    # right: r1 q0 and r3 -> 2 / 5
    assert s["r_inv"] == pytest.approx(2 / 5)
    assert s["perfect_image_rate"] == pytest.approx(1 / 4)      # only r3 of r1..r4
    # r1 (2,2,1,1,0), r2 unparseable (0s), r3 (1,1,1,1,1), r4 missing (0s)
    assert s["judge"] == pytest.approx({
        "Correctness_Fidelity": 3 / 4, "Layout_Precision": 3 / 4,
        "Readability_Occlusion": 2 / 4, "Scientific_Plausibility": 2 / 4,
        "Expressiveness_Richness": 1 / 4})
    assert s["judge_mean"] == pytest.approx(11 / 20)
    assert (s["missing"], s["judge_error"], s["quiz_unparsed"], s["rubric_unparsed"]) == \
        (1, 1, 1, 1)
    skip = summarise(rows, missing="skip", quizzes_of=quizzes)
    assert skip["r_inv"] == pytest.approx(2 / 4)
    assert skip["perfect_image_rate"] == pytest.approx(1 / 3)
    assert skip["judge"]["Correctness_Fidelity"] == pytest.approx(3 / 3)
    groups = summarise_groups(rows, "image_type", missing="fail", quizzes_of=quizzes)
    assert groups["Plot"]["r_inv"] == pytest.approx(1 / 3)       # r1: 1 of 2, r2: 0 of 1
    assert groups["Circuit"]["r_inv"] == pytest.approx(1 / 2)    # r3 right, r4 missing
    assert groups["Circuit"]["judge_error"] == 1
    unparsed_quiz = rows[1]["quiz"][0]
    assert unparsed_quiz["correct"] is False and unparsed_quiz["reply"].startswith("I cannot")
    assert rows[1]["rubric_unparsed"]["reply"] == "Looks good overall!"
    assert "server down" in rows[4]["error"]


def test_cache_resumes_and_only_failed_calls_are_asked_again(bench, tmp_path):
    data, images = bench
    cache_file = tmp_path / "out" / "judge_cache.jsonl"
    first = ScriptedJudge(fail={"r5"})
    _rows(data, images, first, JudgeCache(cache_file))
    assert len(first.calls) == 2 + 1 + 1 + 1 + 1 + 1 + 1      # r1 3, r2 2, r3 2, r5 1 (fails)
    # a crash mid-write leaves half a line: skipped, not fatal
    with open(cache_file, "a") as f:
        f.write('{"key": "abc", "rep')
    REPLIES[("r5", "quiz", 0)] = "Answer: B"
    REPLIES[("r5", "rubric", 0)] = RUBRIC_R3
    try:
        second = ScriptedJudge()
        records, rows = _rows(data, images, second, JudgeCache(cache_file))
    finally:
        del REPLIES[("r5", "quiz", 0)], REPLIES[("r5", "rubric", 0)]
    assert second.calls == [("r5", "quiz", 0), ("r5", "rubric", 0)]
    s = summarise(rows, missing="fail", quizzes_of={r.id: len(r.quizzes) for r in records}
                  .__getitem__)
    assert s["r_inv"] == pytest.approx(3 / 6) and s["judge_error"] == 0
    # a regenerated image is a new question
    Image.new("RGB", (32, 24), (COLOURS["r3"], 1, 0)).save(images / "r3.png")
    third = ScriptedJudge()
    _rows(data, images, third, JudgeCache(cache_file))
    assert third.calls == [("r3", "quiz", 0), ("r3", "rubric", 0)]


def test_cli_writes_tables_and_json(bench, tmp_path, monkeypatch, capsys):
    data, images = bench
    import science_t2i.nodes.lmm as jb
    judge = ScriptedJudge(fail={"r5"})
    monkeypatch.setattr(jb, "backend_from_spec", lambda spec, **kw: judge)
    out = tmp_path / "report"
    code = main(["eval-scigen", "--records", str(data), "--images", f"coder={images}",
                 "--judge", "local:whatever", "--metrics", "quiz,judge", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| R_inv (%) | 40.0 |" in text
    assert "| C&F (0-2) | 0.75 |" in text
    assert "ask only those" in text                       # r5 failed: re-run advice
    report = json.loads((out / "scigen_eval.json").read_text())
    overall = report["sets"]["coder"]["overall"]
    assert overall["quizzes"] == 5 and overall["quizzes_correct"] == 2
    assert {u["id"] for u in report["sets"]["coder"]["unparseable"]} == {"r2"}
    assert [f["id"] for f in report["sets"]["coder"]["failures"]] == ["r4", "r5"]
    assert (out / "scigen_eval.md").is_file()
    assert (out / "judge_cache.jsonl").is_file()


@pytest.mark.parametrize("record, message", [
    ({"id": "x", "image_type": "Plot"}, "record x has no problem text"),
    ({"id": "x", "question": "q", "quizzes": []}, "'quizzes' must be a non-empty list"),
    ({"id": "x", "question": "q", "quizzes": [{"question": "?", "options": _options()}]},
     "record x field 'quizzes'[0] has no 'correct_option'"),
    ({"id": "x", "question": "q", "quizzes": [{"question": "?", "options": _options(),
                                               "correct_option": "E"}]},
     "the answer 'E' is not one of the options"),
    ({"id": "x", "original_question": "q"}, "field 'answer' is missing"),
    ({"id": "a/b", "question": "q", "answer": "1"}, "cannot name an image file"),
    ({"id": "x", "question": "q", "answer": "1", "real_image": "nope.png"},
     "record 0 field 'real_image'[0]: image file not found"),
])
def test_malformed_records_name_the_record_and_field(tmp_path, record, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(record) + "\n")
    with pytest.raises(ScienceT2IError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_scigen_records(data)


def test_corrupt_image_counts_as_a_failure_not_a_crash(bench):
    data, images = bench
    (images / "r2.png").write_bytes(b"not a png")
    records, rows = _rows(data, images, ScriptedJudge(fail={"r5"}))
    assert rows[1]["status"] == "missing" and "cannot decode" in rows[1]["error"]


def test_duplicate_ids_are_refused(tmp_path):
    data = tmp_path / "dup.json"
    data.write_text(json.dumps([RECORDS[2], RECORDS[2]]))
    with pytest.raises(ScienceT2IError, match="share the id 'r3'"):
        load_scigen_records(data)


def test_standard_metrics_on_records_with_a_real_image(tmp_path, capsys):
    """PSNR / SSIM / CLIP land in the report for the records that have a real image only,
    equal to the metric functions on the same pair; FID is off (--no-fid) and says so."""
    from science_t2i.training.eval.scigen.metrics import StandardMetrics, pixel_metrics
    from tiny_clip import build_tiny_clip
    clip = build_tiny_clip(tmp_path / "clip")
    real = tmp_path / "real.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(real)
    rows = [{"id": "s1", "question": "A red block.", "answer": "1", "real_image": str(real)},
            {"id": "s2", "question": "A blue block.", "answer": "2"}]
    data = tmp_path / "seephys.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    gen = tmp_path / "gen"
    gen.mkdir()
    generated = Image.new("RGB", (32, 24), (180, 40, 30))
    generated.save(gen / "s1.png")
    generated.save(gen / "s2.png")
    out = tmp_path / "out"
    assert main(["eval-scigen", "--records", str(data), "--images", str(gen), "--metrics",
                 "standard", "--clip-model", str(clip), "--no-fid", "--out", str(out)]) == 0
    report = json.loads((out / "scigen_eval.json").read_text())["sets"]["gen"]
    expected = pixel_metrics(generated, Image.open(real))
    s1, s2 = report["records"]
    assert s1["psnr"] == pytest.approx(expected.psnr) and s1["ssim"] == pytest.approx(
        expected.ssim)
    assert "psnr" not in s2 and "clip" not in s2
    clip_alone = StandardMetrics(clip_model=str(clip), fid=False).clip_score(
        generated, "A red block.")
    assert s1["clip"] == pytest.approx(clip_alone, rel=1e-5)
    assert report["standard"]["pairs"] == 1 and report["standard"]["fid"] is None
    assert "| PSNR | " + f"{expected.psnr:.2f}" in capsys.readouterr().out


def test_real_images_from_a_folder_and_excluded_ids(tmp_path):
    """SciGenBench keeps SeePhys' real figures beside the records (seephys_images/<id>.png)
    and its hard mode leaves listed ids out."""
    from science_t2i.training.eval.scigen.metrics import pixel_metrics
    from tiny_clip import build_tiny_clip
    clip = build_tiny_clip(tmp_path / "clip")
    real_dir, gen = tmp_path / "seephys_images", tmp_path / "gen"
    real_dir.mkdir()
    gen.mkdir()
    rows = [{"id": str(i), "question": f"figure {i}", "answer": "1", "source": "seephys"}
            for i in (1, 2, 3)]
    data = tmp_path / "scigenbench.json"
    data.write_text(json.dumps(rows))
    for i in (1, 2, 3):
        Image.new("RGB", (24, 24), (60 * i, 10, 10)).save(real_dir / f"{i}.png")
        Image.new("RGB", (24, 24), (60 * i + 5, 10, 10)).save(gen / f"{i}.png")
    (tmp_path / "perfect.txt").write_text("2\n")
    out = tmp_path / "out"
    assert main(["eval-scigen", "--records", str(data), "--source", "seephys", "--images",
                 str(gen), "--real-images", str(real_dir), "--exclude-ids",
                 str(tmp_path / "perfect.txt"), "--metrics", "standard", "--clip-model",
                 str(clip), "--no-fid", "--out", str(out)]) == 0
    report = json.loads((out / "scigen_eval.json").read_text())
    assert report["records"] == 2
    s = report["sets"]["gen"]
    assert [r["id"] for r in s["records"]] == ["1", "3"]
    expected = pixel_metrics(Image.open(gen / "3.png"), Image.open(real_dir / "3.png"))
    assert s["records"][1]["psnr"] == pytest.approx(expected.psnr)


def test_hub_layout_with_the_generated_images_inside_the_records(tmp_path, monkeypatch):
    """J017athan/SciGenBench: one config per model, rows of image (that model's output),
    original_question, answer, image_type, multimodal_question, no id (the row index)."""
    import science_t2i.nodes.lmm as jb
    from datasets import Dataset
    from datasets import Image as HFImage
    images = [Image.new("RGB", (20, 20), (COLOURS[r], 0, 0)) for r in ("r1", "r2")]
    ds = Dataset.from_dict({
        "image": images, "original_question": ["Plot a parabola.", "A ray hits a mirror."],
        "answer": ["B", "12 N"], "image_type": ["Plot", "Optics"],
        "multimodal_question": ["Which curve?\nA. line\nB. parabola", "Tension?"],
    }).cast_column("image", HFImage())
    ds.save_to_disk(str(tmp_path / "nanobanana-pro"))

    class Judge:
        name = "scripted:hub"

        def generate(self, parts, **kw):
            red = next(p for p in parts if not isinstance(p, str)).getpixel((0, 0))[0]
            text = " ".join(p for p in parts if isinstance(p, str))
            if "Rate it from 0" in text:
                return RUBRIC_R3
            return "Answer: B" if red == COLOURS["r1"] else "Answer: 15 N"

    monkeypatch.setattr(jb, "backend_from_spec", lambda spec, **kw: Judge())
    out = tmp_path / "out"
    assert main(["eval-scigen", "--records", str(tmp_path / "nanobanana-pro"),
                 "--generated-column", "image", "--judge", "local:j", "--metrics",
                 "quiz,judge", "--out", str(out)]) == 0
    report = json.loads((out / "scigen_eval.json").read_text())
    [(name, s)] = report["sets"].items()
    assert name == "nanobanana-pro"
    assert [r["id"] for r in s["records"]] == ["0", "1"]
    assert s["overall"]["r_inv"] == pytest.approx(1 / 2) and s["overall"]["missing"] == 0
    assert s["by_image_type"]["Optics"]["r_inv"] == 0.0
    assert main(["eval-scigen", "--records", str(tmp_path / "nanobanana-pro"),
                 "--judge", "x"]) == 2                        # neither --images nor a column
