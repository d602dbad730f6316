"""Verified synthetic data: the filter keeps exactly the images whose inverse quiz passes
(counted here from the script, not from the code), near-duplicates and given-away answers
go, and the export loads with ``datasets`` (folder and parquet) in trl's conversational
image+text format with provenance; ImgCoder as the generator keeps each figure's code."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.eval.judge_cache import JudgeCache
from science_t2i.training.eval.scigen.data import load_scigen_records
from science_t2i.training.synth import (VerifyOptions, dataset_rows, draw_records,
                                        export_dataset, synth_report, verify_images)

COLOURS = {"A": (220, 30, 30), "B": (30, 200, 30), "C": (30, 30, 220)}   # red, green, blue
GOLD = {"p0": "A", "p1": "B", "p2": "C", "p3": "A", "p4": "B", "p5": "A"}  # the disc's colour
DRAWN = {"p0": "A", "p1": "B", "p2": "A", "p3": "A", "p5": "C"}           # p4: no image


def write_records(path, gold=GOLD):
    rows = [{"id": rid, "question": f"Draw one disc, problem {rid}.", "source": "scigen",
             "image_type": "Optics" if i % 2 else "Mechanics",
             "subject": "Physics" if i < 3 else "Chemistry",
             "quizzes": [{"question": "What colour is the disc?",
                          "options": {"A": "red", "B": "green", "C": "blue"},
                          "correct_option": letter},
                         {"question": "How many discs are there?",
                          "options": {"A": "one", "B": "two"}, "correct_option": "A"}]}
            for i, (rid, letter) in enumerate(gold.items())]
    path.write_text(json.dumps(rows))
    return path


def disc(letter, noise=0):
    y, x = np.mgrid[0:64, 0:64]
    arr = np.full((64, 64, 3), 245, np.uint8)
    arr[(x - 32) ** 2 + (y - 32) ** 2 < 20 ** 2] = COLOURS[letter]
    if noise:
        arr[0, 0] = (240, 240, 240)          # a one-pixel change: a near-duplicate
    return Image.fromarray(arr)


class DiscJudge:
    """Answers the colour question by the disc's centre pixel, the count question "A"."""
    name = "scripted:disc"

    def __init__(self):
        self.calls, self._lock = 0, threading.Lock()

    def generate(self, parts, *, system=None, max_new_tokens=512):
        image, text = parts
        with self._lock:
            self.calls += 1
        if "colour" in text:
            rgb = image.convert("RGB").getpixel((32, 32))
            letter = min(COLOURS, key=lambda k: sum(abs(a - b) for a, b in zip(COLOURS[k], rgb)))
            return f"The disc is this colour. Answer: {letter}"
        return "Answer: A"


@pytest.fixture
def bench(tmp_path):
    records = load_scigen_records(write_records(tmp_path / "records.json"))
    folder = tmp_path / "gen"
    folder.mkdir()
    for rid, letter in DRAWN.items():
        disc(letter, noise=rid == "p3").save(folder / f"{rid}.png")
    return records, folder


def _expected(min_quiz, dedup):
    """By hand from the tables: both questions right needs the drawn colour to be the gold
    one (the count question is always right); with deduplication, a disc of a colour
    already kept is a duplicate (p3 differs from p0 by one pixel)."""
    kept = []
    for rid in GOLD:
        if rid not in DRAWN:
            continue
        right = 1 + (DRAWN[rid] == GOLD[rid])
        twin = dedup >= 0 and any(DRAWN[k] == DRAWN[rid] for k in kept)
        if right / 2 >= min_quiz and not twin:
            kept.append(rid)
    return kept


@pytest.mark.parametrize("min_quiz,dedup", [(1.0, 4), (0.5, 4), (0.5, -1)])
def test_the_filter_keeps_exactly_the_images_whose_quiz_passes(bench, tmp_path, min_quiz, dedup):
    records, folder = bench
    drawn = draw_records(records, tmp_path / "out" / "images", "folder", folder)
    verdicts = verify_images(records, drawn, DiscJudge(), JudgeCache(None),
                             VerifyOptions(min_quiz=min_quiz, dedup_distance=dedup, workers=3))
    assert [v.id for v in verdicts if v.kept] == _expected(min_quiz, dedup)
    why = {v.id: v.reason for v in verdicts}
    assert why["p4"].startswith("not generated")
    if min_quiz == 1.0:
        assert why["p2"] == "inverse quiz: 1 of 2 answered right"
    if dedup >= 0:
        assert why["p3"] == "a near-duplicate of p0's image"


def test_export_loads_with_datasets_in_trls_format_with_provenance(bench, tmp_path):
    from datasets import load_dataset, load_from_disk
    records, folder = bench
    out = tmp_path / "out"
    drawn = draw_records(records, out / "images", "folder", folder)
    judge = DiscJudge()
    cache = JudgeCache(out / "judge_cache.jsonl")
    verdicts = verify_images(records, drawn, judge, cache, VerifyOptions())
    rows = dataset_rows(records, drawn, verdicts, judge.name)
    export_dataset(rows, out)
    ds = load_from_disk(str(out / "dataset"))
    kept = _expected(1.0, True)
    assert len(ds) == 2 * len(kept) == 4                       # one row per question
    row = ds[0]
    user, assistant = row["messages"]
    assert user["role"] == "user" and [c["type"] for c in user["content"]] == ["image", "text"]
    assert user["content"][1]["text"].startswith("What colour is the disc?\nA. red\nB. green")
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": "A. red"}]}
    assert row["images"][0].size == (64, 64)
    assert (row["record_id"], row["generator"], row["judge"]) == ("p0", "folder:gen", judge.name)
    assert (row["quiz_right"], row["quiz_total"], row["judge_answer"]) == (2, 2, "A")
    parquet = load_dataset("parquet", data_files=str(out / "parquet" / "*.parquet"),
                           split="train")
    assert parquet["id"] == ds["id"] == ["p0#0", "p0#1", "p1#0", "p1#1"]
    report = synth_report(records, verdicts, drawn, rows)
    assert (report["generated"], report["kept"], report["rows"]) == (5, 2, 4)
    assert report["by_subject"]["Physics"] == {"records": 3, "generated": 3, "kept": 2}
    assert report["drop_reasons"]["inverse quiz: k of n answered right"] == 2

    # an export with no rows removes the earlier one rather than leave its rows behind
    assert export_dataset([], out) == {} and not (out / "dataset").exists()
    assert not (out / "parquet").exists()

    # resumed: every reply comes from the cache, nothing is asked again
    again = DiscJudge()
    verify_images(records, drawn, again, JudgeCache(out / "judge_cache.jsonl"), VerifyOptions())
    assert again.calls == 0 and judge.calls == 10


def test_imgcoder_figures_keep_their_code_and_given_away_answers_are_left_out(tmp_path):
    """ImgCoder draws both problems; the first figure writes "red" as a label, the answer
    of its colour question: that question is left out, the count question stays."""
    from test_imgcoder import GOOD, ScriptedCoder
    from science_t2i.training.generate.imgcoder import run_imgcoder
    records = load_scigen_records(write_records(tmp_path / "r.json", {"p0": "A", "p1": "B"}))
    labelled = GOOD.replace('ax.set_xlabel("x (m)")', 'ax.set_title("Red")')
    coder = ScriptedCoder(["## Plan\n- a disc", labelled, "## Plan\n- a disc", GOOD])
    out = tmp_path / "out"
    drawn = draw_records(records, out / "images", "imgcoder",
                         lambda problems, folder: run_imgcoder(problems, coder, folder, width=64,
                                                               height=64, dpi=32, repairs=0),
                         name="scripted")
    assert all(d.path is not None and "ax.plot" in d.code for d in drawn.values())

    class SaysA:
        name = "scripted:a"

        def generate(self, parts, **kw):
            return "A"

    verdicts = verify_images(records, drawn, SaysA(), JudgeCache(None), VerifyOptions())
    v0, v1 = verdicts
    assert v0.kept and v0.leaked == {0: "red"} and not v1.kept       # p1's colour is B
    rows = dataset_rows(records, drawn, verdicts, "scripted:a")
    assert [r["id"] for r in rows] == ["p0#1"]
    assert 'ax.set_title("Red")' in rows[0]["code"] and rows[0]["generator"] == "imgcoder:scripted"


def test_bad_options_are_refused():
    for bad in (VerifyOptions(min_quiz=0), VerifyOptions(min_judge=3), VerifyOptions(workers=0)):
        with pytest.raises(ScienceT2IError):
            bad.check()


def test_flux_and_comfyui_sources_draw_each_problem_once_with_its_seed(tmp_path):
    """The text-to-image sources: a tiny FLUX pipeline and a (stub) ComfyUI server draw the
    problem text with a seed per record; a re-run draws nothing again."""
    from fake_comfy import FakeComfy, image_value
    from science_t2i.training.comfy.client import ComfyClient, load_api_workflow
    from science_t2i.training.core.seeds import seed_for
    from science_t2i.training.generate.comfy_runs import draw_comfy_images, workflow_slots
    from science_t2i.training.generate.flux_runs import draw_images, settings_for
    from science_t2i.training.synth.sources import SYNTH_PURPOSE
    from tiny_flux import build_tiny_flux_pipeline
    records = load_scigen_records(write_records(tmp_path / "r.json", {"p0": "A", "p1": "B"}))
    pipe = build_tiny_flux_pipeline(tmp_path / "flux")
    settings = settings_for("pack", steps=2, resolution=32)
    calls = []

    def flux(jobs):
        calls.append(len(jobs))
        draw_images(pipe, jobs, settings)

    drawn = draw_records(records, tmp_path / "f", "flux", flux, seed=7, name="tiny")
    assert [d.seed for d in drawn.values()] == [seed_for(7, SYNTH_PURPOSE, i) for i in (0, 1)]
    assert all(Image.open(d.path).size == (32, 32) for d in drawn.values())
    assert draw_records(records, tmp_path / "f", "flux", flux, seed=7)["p1"].generator == "flux:"
    assert calls == [2]                                        # the re-run drew nothing

    graph = load_api_workflow(__import__("pathlib").Path(__file__).resolve().parents[1]
                              / "workflows" / "api" / "bench_generate.json")
    slots = workflow_slots(graph)
    with FakeComfy() as server:
        client = ComfyClient([server.url], poll_interval=0.01)
        drawn = draw_records(records, tmp_path / "c", "comfyui",
                             lambda jobs: draw_comfy_images(client, graph, slots, jobs, 24),
                             seed=7, name="bench_generate.json")
    for r in records:
        grey = np.asarray(Image.open(drawn[r.id].path).convert("L"))
        assert grey.shape == (24, 24)
        assert grey[0, 0] / 255 == pytest.approx(image_value(r.text, drawn[r.id].seed), abs=1e-6)


def test_synth_data_command_refuses_bad_input_before_any_work(tmp_path, capsys):
    from science_t2i.training.cli import main
    records = write_records(tmp_path / "r.json")
    base = ["synth-data", "--records", str(records), "--judge", "openai:m", "--base-url",
            "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o")]
    assert main(base) == 2 and "give one image source" in capsys.readouterr().err
    assert main(base + ["--images", str(tmp_path), "--flux", "x"]) == 2
    assert "give one image source" in capsys.readouterr().err
    assert main(base + ["--images", str(tmp_path), "--min-quiz", "0"]) == 2
    assert "--min-quiz is a share" in capsys.readouterr().err
    assert main(base + ["--images", str(tmp_path), "--sciscore", "tiny"]) == 2
    assert "go together" in capsys.readouterr().err
    (tmp_path / "plain.json").write_text(json.dumps([{"id": "a", "question": "q"}]))
    assert main(["synth-data", "--records", str(tmp_path / "plain.json"), "--images",
                 str(tmp_path), "--judge", "openai:m", "--out", str(tmp_path / "o")]) == 2
    assert "has no quiz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_judge_rubric_floor_uses_the_mean_of_the_five_scores(bench, tmp_path):
    """--min-judge: the judge also rates each image 0-2 on SciGenBench's five dimensions;
    images whose mean is below the floor go (means by hand: p0 1.6, p1 1.2)."""
    from science_t2i.nodes.judges import SCORE_KEYS
    records, folder = bench
    ratings = {"A": [2, 2, 1, 2, 1], "B": [1, 1, 1, 2, 1]}       # red discs, green discs

    class RatingJudge(DiscJudge):
        def generate(self, parts, **kw):
            if SCORE_KEYS[0] in parts[1]:
                rgb = parts[0].convert("RGB").getpixel((32, 32))
                letter = "A" if rgb[0] > rgb[1] else "B"
                return json.dumps(dict(zip(SCORE_KEYS, ratings[letter])))
            return super().generate(parts, **kw)

    drawn = draw_records(records, tmp_path / "o", "folder", folder)
    for floor, kept in ((1.5, ["p0"]), (1.2, ["p0", "p1"])):
        verdicts = verify_images(records, drawn, RatingJudge(), JudgeCache(None),
                                 VerifyOptions(min_judge=floor))
        assert [v.id for v in verdicts if v.kept] == kept
    p1 = next(v for v in verdicts if v.id == "p1")
    assert p1.scores == dict(zip(SCORE_KEYS, ratings["B"]))
    verdicts = verify_images(records, drawn, RatingJudge(), JudgeCache(None),
                             VerifyOptions(min_judge=1.5))
    assert next(v for v in verdicts if v.id == "p1").reason == "judge score 1.20 below 1.5"


def test_sciscore_floor(bench, tmp_path, models_dir):
    """--min-sciscore: each image scored against its problem text; the floor set between the
    scores keeps exactly the images at or above it."""
    from science_t2i.nodes.sciscore import load_sciscore
    from tiny_clip import build_tiny_clip
    records, folder = bench
    build_tiny_clip(models_dir / "sciscore" / "tiny", image_size=32, seed=3)
    scorer = load_sciscore("tiny", device="cpu")
    drawn = draw_records(records, tmp_path / "o", "folder", folder)
    made = [r for r in records if drawn[r.id].path is not None]
    from science_t2i.nodes.core import from_pil
    scores = [float(scorer.score(from_pil(Image.open(drawn[r.id].path).convert("RGB")),
                                 [r.text])[0]) for r in made]      # one at a time
    passing = [r.id for r in made if _expected(0.5, -1).count(r.id)]
    floor = sorted(s for r, s in zip(made, scores) if r.id in passing)[1]
    expected = [r.id for r, s in zip(made, scores) if r.id in passing and s >= floor]
    verdicts = verify_images(records, drawn, DiscJudge(), JudgeCache(None),
                             VerifyOptions(min_quiz=0.5, dedup_distance=-1, min_sciscore=floor),
                             sciscore=scorer)
    assert [v.id for v in verdicts if v.kept] == expected and 0 < len(expected) < len(passing)
    assert all(v.sciscore == pytest.approx(s) for v, s in
               zip([v for v in verdicts if v.id in passing], [s for r, s in zip(made, scores)
                                                              if r.id in passing]))
